// ncml: the blocked similarity engine behind nc::knn and nc::evaluate_retrieval.
//
// Queries and gallery are cut into tiles; a task computes one tile of scores (never more:
// memory is O(tile) per thread on top of what the sink keeps), filters each query's run of
// scores against the query's threshold and hands the entries that pass to the sink. For one
// set against itself (leave-one-out) the score matrix is symmetric: only tiles (I, J) with
// I <= J are computed and each off-diagonal tile feeds both its columns' queries and, through
// a transposed copy, its rows' queries, which halves the products.
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

/// Runs the engine over `queries` and `gallery` (nullptr: the queries against themselves,
/// symmetric tiles; the operand must then be packed both ways; otherwise the gallery is
/// packed as left operand and the queries as right operand). A tile holds gallery rows x
/// query columns, so each query's scores are contiguous runs. The sink provides
/// `const float* thresholds()` (one per query) and `void accept(Index query, Index gallery,
/// float score)`; accept is called, while the query's tile lock is held, for entries whose
/// score is >= the query's threshold as it stands when the entry is scanned.
template <class Sink>
void run(const Operand& queries, const Operand* gallery, Sink& sink, const EngineOptions& opt) {
  const bool symmetric = gallery == nullptr;
  const Operand& q = queries;
  const Operand& g = symmetric ? queries : *gallery;
  const Index qt = opt.row_tile, gt = symmetric ? opt.row_tile : opt.col_tile;
  const Index nq = (q.padded_rows + qt - 1) / qt, ng = (g.padded_rows + gt - 1) / gt;

  // (gallery tile, query tile) pairs. Symmetric: I <= J, where tile I is read as gallery
  // rows and J as query columns; off-diagonal tiles also serve queries of I, transposed.
  std::vector<std::pair<Index, Index>> tasks;
  if (symmetric) {
    tasks = symmetric_schedule(nq);
  } else {
    tasks.reserve(static_cast<std::size_t>(nq * ng));
    for (Index i = 0; i < ng; ++i)
      for (Index j = 0; j < nq; ++j) tasks.emplace_back(i, j);
  }
  const Index num_tasks = static_cast<Index>(tasks.size());
  std::unique_ptr<std::mutex[]> locks(new std::mutex[static_cast<std::size_t>(nq)]);
  std::atomic<Index> done{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_lock;
  const float* thr = sink.thresholds();
  constexpr float nan = std::numeric_limits<float>::quiet_NaN();

  struct Buffers {
    std::vector<float> tile, transposed;
  };
  auto task = [&](Index t, Buffers& buf, bool report) {
    const Index I = tasks[t].first, J = tasks[t].second;
    const Index g0 = I * gt, q0 = J * qt;
    const Index m = std::min(gt, g.padded_rows - g0), n = std::min(qt, q.padded_rows - q0);
    const Index mg = std::max<Index>(0, std::min(m, g.rows - g0));  // real gallery rows
    const Index nqr = std::max<Index>(0, std::min(n, q.rows - q0));  // real query columns
    float* c = buf.tile.data();
    tile_product(g.packed, g0, m, q.packed, q0, n, c, m);
    if (opt.neg_squared_l2) {
      const float* gn = g.sq_norms.data() + g0;
      for (Index b = 0; b < nqr; ++b) {
        const float qn = q.sq_norms[q0 + b];
        float* col = c + b * m;
        for (Index a = 0; a < mg; ++a) col[a] = l2_score(col[a], qn, gn[a]);
      }
    }
    if (opt.exclude_self) {
      for (Index i = std::max(g0, q0); i < std::min(g0 + mg, q0 + nqr); ++i)
        c[(i - g0) + (i - q0) * m] = nan;
    }
    const bool both = symmetric && I != J;
    if (both) transpose_tile(c, m, mg, nqr, buf.transposed.data(), n);
    {
      std::unique_lock<std::mutex> first(locks[symmetric ? I : J]);
      std::unique_lock<std::mutex> second;
      if (both) second = std::unique_lock<std::mutex>(locks[J]);
      for (Index b = 0; b < nqr; ++b) {
        const Index query = q0 + b;
        const float* col = c + b * m;
        scan_run(col, mg, thr[query], [&](Index a) { sink.accept(query, g0 + a, col[a]); });
      }
      if (both) {
        for (Index a = 0; a < mg; ++a) {
          const Index query = g0 + a;
          const float* row = buf.transposed.data() + a * n;
          scan_run(row, nqr, thr[query], [&](Index b) { sink.accept(query, q0 + b, row[b]); });
        }
      }
    }
    const Index finished = ++done;
    if (report && opt.progress && *opt.progress)
      (*opt.progress)(static_cast<double>(finished) / static_cast<double>(num_tasks));
  };

  auto guarded = [&](auto&& body) {
    if (failed.load(std::memory_order_relaxed)) return;
    try {
      body();
    } catch (...) {
      std::lock_guard<std::mutex> guard(error_lock);
      if (!error) error = std::current_exception();
      failed = true;
    }
  };
  auto allocate = [&](Buffers& buf) {
    buf.tile.resize(static_cast<std::size_t>(qt * gt));
    if (symmetric) buf.transposed.resize(static_cast<std::size_t>(qt * gt));
  };

  const int threads = resolve_threads(opt.threads);
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
  {
    Buffers buf;
    guarded([&] { allocate(buf); });
    const bool report = omp_get_thread_num() == 0;
#pragma omp for schedule(dynamic, 1)
    for (Index t = 0; t < num_tasks; ++t) guarded([&] { task(t, buf, report); });
  }
#else
  (void)threads;
  Buffers buf;
  guarded([&] { allocate(buf); });
  for (Index t = 0; t < num_tasks; ++t) guarded([&] { task(t, buf, true); });
#endif
  if (error) std::rethrow_exception(error);
}

}  // namespace nc::detail::knn
