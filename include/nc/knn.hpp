// ncml: exact blocked k-nearest-neighbour search on the CPU.
//
//   nc::KnnResult r = nc::knn(queries, gallery, k);                 // [Q, D], [G, D] -> [Q, k]
//   nc::KnnResult s = nc::knn(x, x, k, {nc::Similarity::cosine, true}); // leave-one-out
//
// Ranking: score descending, ties by gallery index ascending, so results are deterministic.
// Scores are float32: rows are rounded to float (after L2 normalization in double for
// cosine) and multiplied by Eigen's float GEMM kernel, in tiles; the score of a pair is
// bitwise the same whatever the tile sizes or the thread count (see detail/knn/gemm.hpp), so
// results are identical for every setting. exclude_self removes gallery row i from the
// ranking of query i by index (never "the first neighbour"), so exact duplicates of a query
// stay in its list. When queries and gallery are the same rows in memory, each pair of
// tiles is computed once and feeds both sides (half the products).
//
// Memory: O(Q * k) for the result and the per-query candidate buffers (2k entries of 8
// bytes), one packed float copy of each input, and one or two tiles of scores per thread;
// never the Q x G score matrix. See docs/retrieval.md.
//
// Threads: OpenMP when the program is compiled with it (`threads`, 0 = all). The progress
// callback, if set, is called on the calling thread with the fraction of tiles done.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include "core/check.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/types.hpp"
#include "detail/knn/engine.hpp"
#include "detail/knn/topk.hpp"

namespace nc {

/// Similarity used for ranking (higher is nearer).
enum class Similarity {
  cosine,          ///< dot product of L2-normalized rows (zero rows stay zero: score 0)
  inner_product,   ///< plain dot product
  neg_squared_l2,  ///< -||q - g||^2, formed as -max(||q||^2 + ||g||^2 - 2 q.g, 0)
};

inline const char* to_string(Similarity s) {
  switch (s) {
    case Similarity::cosine: return "cosine";
    case Similarity::inner_product: return "inner_product";
    case Similarity::neg_squared_l2: return "neg_squared_l2";
  }
  return "unknown";
}

struct KnnOptions {
  Similarity similarity = Similarity::cosine;
  /// Remove gallery row i from the ranking of query i (queries and gallery must have the
  /// same number of rows: the same set, leave-one-out).
  bool exclude_self = false;
  /// Threads (0: all available). Results do not depend on it.
  int threads = 0;
  /// Rows per query tile and per gallery tile (0: automatic). Rounded up to a multiple of
  /// the GEMM kernel's panel height (48 floats with AVX-512). Results do not depend on them.
  Index query_tile = 0;
  Index gallery_tile = 0;
  /// Called on the calling thread with the fraction of work done, in [0, 1].
  std::function<void(double)> progress;
  /// Bytes of packed float copies of the rows kept for the whole call (0: automatic, 256 MiB).
  /// A side (queries, gallery) that does not fit is converted and packed tile by tile inside
  /// each task instead: memory is then the inputs plus O(threads x tile x D) besides the
  /// results, for some more time. Results do not depend on it.
  std::size_t pack_budget_bytes = 0;
};

/// Neighbours of each query, best first: indices into the gallery and their scores [Q, k].
struct KnnResult {
  Matrix<int64_t> indices;
  MatrixF scores;
};

namespace detail::knn {

/// Automatic tile size (rows); each task computes a tile of this many rows and columns.
constexpr Index kAutoTile = 384;

inline void check_engine_options(int threads, Index query_tile, Index gallery_tile) {
  NC_EXPECTS(threads >= 0, "threads must be >= 0 (0: all available), got " << threads);
  NC_EXPECTS(query_tile >= 0, "query_tile must be >= 0 (0: automatic), got " << query_tile);
  NC_EXPECTS(gallery_tile >= 0, "gallery_tile must be >= 0 (0: automatic), got " << gallery_tile);
}

inline void check_similarity(Similarity s) {
  NC_EXPECTS(s == Similarity::cosine || s == Similarity::inner_product ||
                 s == Similarity::neg_squared_l2,
             "similarity has an invalid value " << static_cast<int>(s));
}

/// The largest Euclidean row norm (in double).
template <class T>
double max_row_norm(const ConstRowsRef<T>& x) {
  double m = 0;
  for (Index i = 0; i < x.rows(); ++i) m = std::max(m, x.row(i).template cast<double>().norm());
  return m;
}

/// Scores are computed in float: for inner_product and neg_squared_l2 they (and every
/// partial sum) are bounded by |q||g| and (|q| + |g|)^2, which must stay well inside the
/// float range, else the ranking would be of Inf/NaN values. Cosine normalizes first.
template <class TQ, class TG>
void check_score_range(Similarity s, const ConstRowsRef<TQ>& q, const ConstRowsRef<TG>& g, const char* qname,
                       const char* gname) {
  if (s == Similarity::cosine) return;
  const double qn = max_row_norm(q), gn = max_row_norm(g);
  const double bound = s == Similarity::inner_product ? qn * gn : (qn + gn) * (qn + gn);
  NC_EXPECTS(bound <= 0.25 * double(std::numeric_limits<float>::max()),
             (s == Similarity::inner_product ? "inner_product" : "neg_squared_l2")
                 << " scores would overflow float: the largest row norms are " << qn << " (" << qname << ") and "
                 << gn << " (" << gname << "); scale the features down (cosine does not depend on scale)");
}

/// True when both arguments view the same rows in memory (then one symmetric pass serves).
template <class TA, class TB>
bool same_rows(const ConstRowsRef<TA>& a, const ConstRowsRef<TB>& b) {
  return std::is_same<TA, TB>::value &&
         static_cast<const void*>(a.data()) == static_cast<const void*>(b.data()) &&
         a.rows() == b.rows() && a.cols() == b.cols() && a.outerStride() == b.outerStride();
}

inline EngineOptions engine_options(Similarity sim, bool exclude_self, int threads, Index query_tile,
                             Index gallery_tile, Index padded_q, Index padded_g,
                             const std::function<void(double)>* progress) {
  EngineOptions e;
  e.threads = threads;
  e.row_tile = resolve_tile(query_tile, padded_q, kAutoTile);
  e.col_tile = resolve_tile(gallery_tile, padded_g, kAutoTile);
  e.neg_squared_l2 = sim == Similarity::neg_squared_l2;
  e.exclude_self = exclude_self;
  e.progress = progress;
  return e;
}

template <class P, class TQ, class TG>
KnnResult knn_impl(const ConstRowsRef<TQ>& q, const ConstRowsRef<TG>& g, Index k,
                   const KnnOptions& o) {
  const bool normalize = o.similarity == Similarity::cosine;
  const bool l2 = o.similarity == Similarity::neg_squared_l2;
  const bool symmetric = same_rows(q, g);
  Operand qop = make_operand(RowSource(q, normalize), symmetric, true, l2, false), gop;
  if (!symmetric) gop = make_operand(RowSource(g, normalize), true, false, l2, false);
  choose_packing(qop, symmetric ? nullptr : &gop, o.pack_budget_bytes);
  // Symmetric tiles are square: the query tile size (or the gallery one if only it is set).
  const Index tile = o.query_tile > 0 ? o.query_tile : o.gallery_tile;
  const EngineOptions e = engine_options(
      o.similarity, o.exclude_self, o.threads, symmetric ? tile : o.query_tile,
      o.gallery_tile, qop.padded_rows, symmetric ? qop.padded_rows : gop.padded_rows,
      &o.progress);
  TopK<P> top(q.rows(), k);
  run(qop, symmetric ? nullptr : &gop, top, e);

  KnnResult r;
  r.indices.resize(q.rows(), k);
  r.scores.resize(q.rows(), k);
  const int threads = resolve_threads(o.threads);
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<typename P::Key> scratch;
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
    for (Index i = 0; i < q.rows(); ++i)
      top.finish(i, r.scores.row(i).data(), r.indices.row(i).data(), scratch);
  }
  (void)threads;
  if (o.progress) o.progress(1.0);
  return r;
}

}  // namespace detail::knn

/// The k nearest gallery rows of every query row under `options.similarity`.
/// queries [Q, D] and gallery [G, D]: any Eigen dense expressions, float or double, finite.
/// Returns indices [Q, k] (int64, into the gallery) and scores [Q, k] (float), sorted by score
/// descending, ties by gallery index ascending. Throws nc::error for empty or non-finite
/// input (naming the row), a dimension mismatch, k <= 0 or k larger than the gallery (minus
/// the query itself with exclude_self), or invalid options.
template <class DQ, class DG>
KnnResult knn(const Eigen::MatrixBase<DQ>& queries, const Eigen::MatrixBase<DG>& gallery, Index k,
              const KnnOptions& options = {}) {
  using TQ = typename DQ::Scalar;
  using TG = typename DG::Scalar;
  static_assert(detail::is_supported_scalar<TQ>::value, "queries must be float or double");
  static_assert(detail::is_supported_scalar<TG>::value, "gallery must be float or double");
  const ConstRowsRef<TQ> q(queries);
  const ConstRowsRef<TG> g(gallery);
  detail::knn::check_similarity(options.similarity);
  detail::knn::check_engine_options(options.threads, options.query_tile, options.gallery_tile);
  detail::check_features(q, "queries");
  detail::check_features(g, "gallery");
  NC_EXPECTS(g.cols() == q.cols(), "gallery has " << g.cols() << " columns but queries have "
                                                  << q.cols() << " (dimension mismatch)");
  NC_EXPECTS(k > 0, "k must be positive, got k = " << k);
  detail::knn::check_score_range(options.similarity, q, g, "queries", "gallery");
  if (options.exclude_self)
    NC_EXPECTS(q.rows() == g.rows(), "exclude_self needs queries and gallery of the same rows, got "
                                         << q.rows() << " queries and " << g.rows()
                                         << " gallery rows");
  const Index available = g.rows() - (options.exclude_self ? 1 : 0);
  NC_EXPECTS(k <= available, "k = " << k << " is larger than the gallery (" << available
                                    << " rows" << (options.exclude_self ? " besides the query" : "")
                                    << ")");
  if (g.rows() < static_cast<Index>(std::numeric_limits<uint32_t>::max()))
    return detail::knn::knn_impl<detail::knn::Packed32>(q, g, k, options);
  return detail::knn::knn_impl<detail::knn::Wide>(q, g, k, options);
}

}  // namespace nc
