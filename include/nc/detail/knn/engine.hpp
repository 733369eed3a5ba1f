// ncml: the blocked similarity engine behind nc::knn and nc::evaluate_retrieval.
//
// Queries and gallery are cut into tiles; a task computes one tile of scores (never more:
// memory is O(tile) per thread on top of what the sink keeps), filters it against the
// sink's per-query thresholds and hands the entries that pass to the sink. For one set
// against itself (leave-one-out) the score matrix is symmetric: only tiles (I, J) with I <= J
// are computed and each off-diagonal tile feeds both its rows' and its columns' queries,
// which halves the products.
//
// Threads: tasks are taken dynamically; a task computes its tile without locks, then holds
// the locks of the query tiles it feeds (lower tile first) while it filters. Tasks are
// ordered as the rounds of a round-robin tournament, so tasks running at the same time
// rarely share a query tile. Sinks make the final result independent of the order in which
// entries arrive (a top-k set under a total order, or counts), and scores do not depend on
// the tiling (gemm.hpp), so results are identical for any thread count and tile size.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../../core/parallel.hpp"
#include "../../core/types.hpp"
#include "gemm.hpp"
#include "scan.hpp"

namespace nc::detail::knn {

/// Rows of one side (queries or gallery) ready for tile products: converted to float,
/// L2-normalized for cosine, padded with zero rows to a multiple of kRowAlign and packed.
struct Operand {
  Index rows = 0;                ///< real rows
  Index padded_rows = 0;         ///< rows of the packed operand
  PackedRows packed;
  std::vector<float> sq_norms;   ///< squared norms (neg_squared_l2 only), padded_rows entries
};

/// Float rows of `x` in a padded row-major matrix: normalized in double (a row of zeros
/// stays zero) when `normalize`, else rounded to float.
template <class T>
MatrixF padded_rows(const ConstRowsRef<T>& x, bool normalize) {
  const Index n = x.rows(), d = x.cols();
  MatrixF out = MatrixF::Zero(round_up(n, kRowAlign), d);
  for (Index i = 0; i < n; ++i) {
    if (normalize) {
      const Eigen::VectorXd r = x.row(i).template cast<double>().transpose();
      const double norm = r.norm();
      if (norm > 0) out.row(i) = (r / norm).transpose().template cast<float>();
    } else {
      out.row(i) = x.row(i).template cast<float>();
    }
  }
  return out;
}

/// Packs prepared rows (from padded_rows) for use as left and/or right operand.
inline Operand make_operand(const MatrixF& rows, Index real_rows, bool as_lhs, bool as_rhs,
                            bool with_norms) {
  Operand op;
  op.rows = real_rows;
  op.padded_rows = rows.rows();
  op.packed = PackedRows(rows.data(), rows.rows(), rows.cols(), depth_block(rows.cols()), as_lhs,
                         as_rhs);
  if (with_norms) {
    op.sq_norms.resize(static_cast<std::size_t>(rows.rows()));
    for (Index i = 0; i < rows.rows(); ++i)
      op.sq_norms[i] = static_cast<float>(rows.row(i).template cast<double>().squaredNorm());
  }
  return op;
}

/// -||q - g||^2 from the dot product and the squared norms. 2 * dot is exact, so a fused
/// multiply-add gives the same value; the sum of the norms is commutative, so the score is
/// symmetric. Clamped at 0 against rounding below zero.
inline float l2_score(float dot, float q_sq_norm, float g_sq_norm) {
  return 0.0f - std::max((q_sq_norm + g_sq_norm) - 2.0f * dot, 0.0f);
}

struct EngineOptions {
  int threads = 0;
  Index row_tile = 0;  ///< query rows per tile (multiple of kRowAlign)
  Index col_tile = 0;  ///< gallery rows per tile (multiple of kRowAlign); = row_tile when symmetric
  bool neg_squared_l2 = false;
  bool exclude_self = false;  ///< never offer pair (i, i)
  const std::function<void(double)>* progress = nullptr;
};

/// Tile size in use for a requested size (0 = auto): rounded up to a multiple of kRowAlign
/// and to no more than the padded rows.
inline Index resolve_tile(Index requested, Index padded_rows, Index auto_size) {
  const Index t = round_up(requested > 0 ? requested : auto_size, kRowAlign);
  return std::min(t, padded_rows);
}

/// Pairs (I, J), I <= J, of `n` tiles: first the diagonal, then the rounds of a round-robin
/// tournament (circle method), in which no two pairs of a round share a tile.
inline std::vector<std::pair<Index, Index>> symmetric_schedule(Index n) {
  std::vector<std::pair<Index, Index>> tasks;
  tasks.reserve(static_cast<std::size_t>(n * (n + 1) / 2));
  for (Index i = 0; i < n; ++i) tasks.emplace_back(i, i);
  const Index m = n % 2 ? n + 1 : n;  // with a dummy player when n is odd
  for (Index r = 0; r + 1 < m; ++r) {
    for (Index i = 0; i < m / 2; ++i) {
      const Index a = (r + i) % (m - 1);
      const Index b = i == 0 ? m - 1 : (r + m - 1 - i) % (m - 1);
      if (a < n && b < n) tasks.emplace_back(std::min(a, b), std::max(a, b));
    }
  }
  return tasks;
}

/// Runs the engine. `cols == nullptr`: one set against itself (rows must be packed as both
/// operands), symmetric tiles. The sink provides `const float* thresholds()` (one per query)
/// and `void accept(Index query, Index gallery, float score)`, called only while the query's
/// tile lock is held, for entries with score >= the threshold read at filter time.
template <class Sink>
void run(const Operand& rows, const Operand* cols, Sink& sink, const EngineOptions& opt) {
  const bool symmetric = cols == nullptr;
  const Operand& g = symmetric ? rows : *cols;
  const Index rt = opt.row_tile, ct = symmetric ? opt.row_tile : opt.col_tile;
  const Index nr = (rows.padded_rows + rt - 1) / rt, nc = (g.padded_rows + ct - 1) / ct;

  std::vector<std::pair<Index, Index>> tasks;
  if (symmetric) {
    tasks = symmetric_schedule(nr);
  } else {
    tasks.reserve(static_cast<std::size_t>(nr * nc));
    for (Index j = 0; j < nc; ++j)
      for (Index i = 0; i < nr; ++i) tasks.emplace_back(i, j);
  }
  const Index num_tasks = static_cast<Index>(tasks.size());
  std::unique_ptr<std::mutex[]> locks(new std::mutex[static_cast<std::size_t>(nr)]);
  std::atomic<Index> done{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_lock;
  const float* thr = sink.thresholds();
  constexpr float nan = std::numeric_limits<float>::quiet_NaN();

  auto task = [&](Index t, std::vector<float>& tile, bool report) {
    const Index I = tasks[t].first, J = tasks[t].second;
    const Index r0 = I * rt, c0 = J * ct;
    const Index m = std::min(rt, rows.padded_rows - r0), n = std::min(ct, g.padded_rows - c0);
    const Index mrows = std::max<Index>(0, std::min(m, rows.rows - r0));
    const Index ncols = std::max<Index>(0, std::min(n, g.rows - c0));
    float* c = tile.data();
    tile_product(rows.packed, r0, m, g.packed, c0, n, c, m);
    if (opt.neg_squared_l2) {
      const float* qn = rows.sq_norms.data() + r0;
      for (Index b = 0; b < ncols; ++b) {
        const float gn = g.sq_norms[c0 + b];
        float* col = c + b * m;
        for (Index a = 0; a < mrows; ++a) col[a] = l2_score(col[a], qn[a], gn);
      }
    }
    if (opt.exclude_self) {
      for (Index i = std::max(r0, c0); i < std::min(r0 + mrows, c0 + ncols); ++i)
        c[(i - r0) + (i - c0) * m] = nan;
    }
    const bool both = symmetric && I != J;
    {
      std::unique_lock<std::mutex> first(locks[I]);
      std::unique_lock<std::mutex> second;
      if (both) second = std::unique_lock<std::mutex>(locks[J]);
      for (Index b = 0; b < ncols; ++b) {
        const float* col = c + b * m;
        const Index gb = c0 + b;
        scan_column(
            col, thr + r0, mrows, both, both ? thr[gb] : 0.0f,
            [&](Index a) { sink.accept(r0 + a, gb, col[a]); },
            [&](Index a) { sink.accept(gb, r0 + a, col[a]); });
      }
    }
    const Index finished = ++done;
    if (report && opt.progress && *opt.progress)
      (*opt.progress)(static_cast<double>(finished) / static_cast<double>(num_tasks));
  };

  auto guarded = [&](Index t, std::vector<float>& tile, bool report) {
    if (failed.load(std::memory_order_relaxed)) return;
    try {
      task(t, tile, report);
    } catch (...) {
      std::lock_guard<std::mutex> guard(error_lock);
      if (!error) error = std::current_exception();
      failed = true;
    }
  };

  const int threads = resolve_threads(opt.threads);
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> tile;
    try {
      tile.resize(static_cast<std::size_t>(rt * ct));
    } catch (...) {
      std::lock_guard<std::mutex> guard(error_lock);
      if (!error) error = std::current_exception();
      failed = true;
    }
    const bool report = omp_get_thread_num() == 0;
#pragma omp for schedule(dynamic, 1)
    for (Index t = 0; t < num_tasks; ++t)
      if (!tile.empty()) guarded(t, tile, report);
  }
#else
  (void)threads;
  std::vector<float> tile(static_cast<std::size_t>(rt * ct));
  for (Index t = 0; t < num_tasks; ++t) guarded(t, tile, true);
#endif
  if (error) std::rethrow_exception(error);
}

}  // namespace nc::detail::knn
