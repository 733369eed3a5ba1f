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
#include <cstddef>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../../core/parallel.hpp"
#include "../../core/types.hpp"
#include "gemm.hpp"
#include "scan.hpp"

namespace nc::detail::knn {

/// Rows of one side (queries or gallery) as the products read them: converted to float and,
/// for cosine, L2-normalized in double (a row of zeros stays zero). A view of the caller's
/// rows (float or double, any outer stride); it prepares rows on demand.
class RowSource {
 public:
  RowSource() = default;
  template <class T>
  RowSource(const ConstRowsRef<T>& x, bool normalize)
      : rows_(x.rows()), dim_(x.cols()), stride_(x.outerStride()), normalize_(normalize) {
    if constexpr (std::is_same<T, float>::value)
      f_ = x.data();
    else
      d_ = x.data();
  }

  Index rows() const { return rows_; }
  Index dim() const { return dim_; }
  Index padded_rows() const { return round_up(rows_, kRowAlign); }

  /// Prepared row i (i < rows()) into out[0, dim).
  void row(Index i, float* out) const {
    if (f_)
      prepare(f_ + i * stride_, out);
    else
      prepare(d_ + i * stride_, out);
  }

  /// Prepared rows [r0, r0 + m) into `out` (m x dim, row-major); rows past rows() are zero.
  void rows_into(Index r0, Index m, float* out) const {
    for (Index i = 0; i < m; ++i) {
      if (r0 + i < rows_)
        row(r0 + i, out + i * dim_);
      else
        std::fill_n(out + i * dim_, dim_, 0.0f);
    }
  }

 private:
  template <class T>
  void prepare(const T* x, float* out) const {
    const Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>> r(x, dim_);
    Eigen::Map<Eigen::RowVectorXf> o(out, dim_);
    if (normalize_) {
      const Eigen::RowVectorXd v = r.template cast<double>();
      const double norm = v.norm();
      if (norm > 0)
        o = (v / norm).template cast<float>();
      else
        o.setZero();
    } else {
      o = r.template cast<float>();
    }
  }

  const float* f_ = nullptr;
  const double* d_ = nullptr;
  Index rows_ = 0, dim_ = 0, stride_ = 0;
  bool normalize_ = false;
};

/// Float rows of `x` in a padded row-major matrix (rows prepared as by RowSource).
template <class T>
MatrixF padded_rows(const ConstRowsRef<T>& x, bool normalize) {
  const RowSource src(x, normalize);
  MatrixF out(src.padded_rows(), src.dim());
  src.rows_into(0, src.padded_rows(), out.data());
  return out;
}

/// Bytes of packed copies the engine keeps for a whole side when the caller leaves the
/// budget automatic: sides above it are prepared and packed tile by tile inside each task.
constexpr std::size_t kAutoPackBudget = std::size_t(256) << 20;

/// One side of the products, packed as left operand (gallery rows) and/or right operand
/// (query columns). Packed whole up front (`whole`), or else prepared and packed one tile at
/// a time by the task that needs it (memory O(tile) per thread instead of O(rows)); both
/// give the same packed values, so scores do not depend on the choice.
struct Operand {
  RowSource source;
  Index rows = 0;                ///< real rows
  Index padded_rows = 0;         ///< rows of the packed operand
  Index kc = 1;                  ///< slab depth
  bool as_lhs = false, as_rhs = false, with_norms = false;
  bool whole = true;
  PackedRows packed;             ///< whole only
  std::vector<float> sq_norms;   ///< squared norms (neg_squared_l2 only, whole only), padded_rows entries
  std::size_t packed_bytes() const {
    return static_cast<std::size_t>(padded_rows) * static_cast<std::size_t>(source.dim()) * sizeof(float) *
           ((as_lhs ? 1 : 0) + (as_rhs ? 1 : 0));
  }
};

/// Squared norms of m prepared rows (row-major, leading dimension d), in double, as float.
inline void squared_norms(const float* x, Index m, Index d, float* out) {
  for (Index i = 0; i < m; ++i)
    out[i] = static_cast<float>(
        Eigen::Map<const Eigen::RowVectorXf>(x + i * d, d).template cast<double>().squaredNorm());
}

/// Rows [r0, r0 + m) of `src` prepared and packed into `packed` from its row `at` on, with
/// their squared norms into norms[0, m) when `norms` is not null.
inline void pack_tile(const RowSource& src, Index r0, Index m, std::vector<float>& scratch,
                      PackedRows& packed, Index at, float* norms) {
  const Index d = src.dim();
  scratch.resize(static_cast<std::size_t>(m * d));
  src.rows_into(r0, m, scratch.data());
  packed.pack(scratch.data(), at, m);
  if (norms) squared_norms(scratch.data(), m, d, norms);
}

/// An operand for `src`; packed whole when `whole`, else described only (tile mode). Whole
/// packing prepares a chunk of rows at a time, so no full float copy is made on the way.
inline Operand make_operand(const RowSource& src, bool as_lhs, bool as_rhs, bool with_norms, bool whole) {
  Operand op;
  op.source = src;
  op.rows = src.rows();
  op.padded_rows = src.padded_rows();
  op.kc = depth_block(src.dim());
  op.as_lhs = as_lhs;
  op.as_rhs = as_rhs;
  op.with_norms = with_norms;
  op.whole = whole;
  if (!whole) return op;
  op.packed.allocate(op.padded_rows, src.dim(), op.kc, as_lhs, as_rhs);
  if (with_norms) op.sq_norms.resize(static_cast<std::size_t>(op.padded_rows));
  constexpr Index chunk = 64 * kRowAlign;
  std::vector<float> scratch;
  for (Index r0 = 0; r0 < op.padded_rows; r0 += chunk)
    pack_tile(src, r0, std::min(chunk, op.padded_rows - r0), scratch, op.packed, r0,
              with_norms ? op.sq_norms.data() + r0 : nullptr);
  return op;
}

/// An operand over prepared rows (from padded_rows), packed whole.
inline Operand make_operand(const MatrixF& rows, Index real_rows, bool as_lhs, bool as_rhs,
                            bool with_norms) {
  const ConstRowsRef<float> view(rows.topRows(real_rows));
  return make_operand(RowSource(view, false), as_lhs, as_rhs, with_norms, true);
}

/// Packs the sides whole while their packed bytes fit `budget` (0: kAutoPackBudget), the
/// smaller side first; the others are packed tile by tile. `gallery` may be null (one side
/// used both ways).
inline void choose_packing(Operand& queries, Operand* gallery, std::size_t budget) {
  if (budget == 0) budget = kAutoPackBudget;
  Operand* sides[2] = {&queries, gallery};
  if (gallery && gallery->packed_bytes() < queries.packed_bytes()) std::swap(sides[0], sides[1]);
  std::size_t used = 0;
  for (Operand* op : sides) {
    if (!op) continue;
    const bool whole = used + op->packed_bytes() <= budget;
    if (whole) used += op->packed_bytes();
    *op = make_operand(op->source, op->as_lhs, op->as_rhs, op->with_norms, whole);
  }
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

/// A thread's packed copy of one tile of a side packed tile by tile.
struct TileCache {
  Index row0 = -1, rows = 0;
  PackedRows packed;
  std::vector<float> sq_norms;
};

/// Where the packed rows [row0, row0 + m) of an operand are: in the whole packed operand, or
/// in the thread's tile cache (prepared and packed now unless it holds that tile already).
struct PackedView {
  const PackedRows* packed;
  Index row0;
  const float* sq_norms;  ///< m entries (neg_squared_l2), else null
};
inline PackedView packed_view(const Operand& op, Index row0, Index m, bool lhs, TileCache& cache,
                              std::vector<float>& scratch) {
  if (op.whole)
    return {&op.packed, row0, op.with_norms ? op.sq_norms.data() + row0 : nullptr};
  if (cache.row0 != row0 || cache.rows != m) {
    cache.row0 = -1;  // invalid until packed (an exception may leave it half written)
    cache.packed.allocate(m, op.source.dim(), op.kc, lhs, !lhs);
    if (op.with_norms) cache.sq_norms.resize(static_cast<std::size_t>(m));
    pack_tile(op.source, row0, m, scratch, cache.packed, 0, op.with_norms ? cache.sq_norms.data() : nullptr);
    cache.row0 = row0;
    cache.rows = m;
  }
  return {&cache.packed, 0, op.with_norms ? cache.sq_norms.data() : nullptr};
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
    if (q.whole) {
      tasks = symmetric_schedule(nq);
    } else {
      // Packed tile by tile: row by row, so that consecutive tasks share their left tile and
      // a thread packs one tile per task, not two.
      for (Index i = 0; i < nq; ++i)
        for (Index j = i; j < nq; ++j) tasks.emplace_back(i, j);
    }
  } else {
    // A side packed tile by tile is the outer loop (its tile is reused by consecutive tasks).
    tasks.reserve(static_cast<std::size_t>(nq * ng));
    const bool query_major = !q.whole && g.whole;
    for (Index a = 0; a < (query_major ? nq : ng); ++a)
      for (Index b = 0; b < (query_major ? ng : nq); ++b)
        tasks.emplace_back(query_major ? b : a, query_major ? a : b);
  }
  const Index num_tasks = static_cast<Index>(tasks.size());
  std::unique_ptr<std::mutex[]> locks(new std::mutex[static_cast<std::size_t>(nq)]);
  std::atomic<Index> done{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_lock;
  const float* thr = sink.thresholds();
  constexpr float nan = std::numeric_limits<float>::quiet_NaN();

  // Per thread: the tile buffers, and the gallery tile (left) and query tile (right) last
  // packed for a side that is packed tile by tile (reused while consecutive tasks share it).
  struct Buffers {
    std::vector<float> tile, transposed, scratch;
    TileCache lhs, rhs;
  };
  auto task = [&](Index t, Buffers& buf, bool report) {
    const Index I = tasks[t].first, J = tasks[t].second;
    const Index g0 = I * gt, q0 = J * qt;
    const Index m = std::min(gt, g.padded_rows - g0), n = std::min(qt, q.padded_rows - q0);
    const Index mg = std::max<Index>(0, std::min(m, g.rows - g0));  // real gallery rows
    const Index nqr = std::max<Index>(0, std::min(n, q.rows - q0));  // real query columns
    float* c = buf.tile.data();
    const PackedView gv = packed_view(g, g0, m, true, buf.lhs, buf.scratch);
    const PackedView qv = packed_view(q, q0, n, false, buf.rhs, buf.scratch);
    tile_product(*gv.packed, gv.row0, m, *qv.packed, qv.row0, n, c, m);
    if (opt.neg_squared_l2) {
      const float* gn = gv.sq_norms;
      for (Index b = 0; b < nqr; ++b) {
        const float qn = qv.sq_norms[b];
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
