// ncml: exact retrieval evaluation (deep-metric-learning conventions, docs/retrieval.md).
//
//   nc::RetrievalReport r = nc::evaluate_retrieval(embeddings, labels);     // leave-one-out
//   nc::RetrievalReport s = nc::evaluate_retrieval(queries, qlabels, gallery, glabels,
//                                                  {{1, 10, 20, 30}});      // query vs gallery
//
// For every query: Recall@K (1 if any of the K nearest shares the query's label), Precision@K,
// R-Precision and MAP@R with R = the number of gallery items sharing the label (the query
// itself excluded), and the reciprocal rank of the first such item; averaged over queries
// and, per class, over the queries of each class. Ranking: similarity descending, ties by
// gallery index ascending; leave-one-out removes the query's own row by index. Queries whose
// label has no other gallery item ("lone queries") are excluded from every average and
// counted.
//
// Method: the metrics need only the ranks of each query's positives, so no top-K list is
// kept (detail/knn/rank_count.hpp). A pre-pass scores the same-class pairs; the main pass
// runs the blocked engine of nc::knn over all pairs (for leave-one-out each pair of tiles
// once) and counts, per positive, the negatives ranked before it, as long as that rank can
// still matter. Memory: O(sum over queries of R) plus what nc::knn needs besides its result;
// independent of K. Results are identical for any thread count and tile size.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "../core/check.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../detail/knn/engine.hpp"
#include "../detail/knn/rank_count.hpp"
#include "../knn.hpp"

namespace nc {

struct RetrievalOptions {
  /// The K of Recall@K and Precision@K (each >= 1 and at most the gallery size).
  std::vector<int> ks = {1, 2, 4, 8};
  Similarity similarity = Similarity::cosine;
  /// Also report every metric per class (the class_* vectors below).
  bool per_class = false;
  /// Threads (0: all available). Results do not depend on it.
  int threads = 0;
  /// Rows per query and gallery tile (0: automatic); results do not depend on them.
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

struct RetrievalReport {
  std::vector<int> ks;
  /// Averages over the evaluated queries; entry i belongs to ks[i].
  std::vector<double> recall_at_k, precision_at_k;
  double map_at_r = std::nan(""), r_precision = std::nan(""), mrr = std::nan("");
  /// Queries averaged over, and lone queries (no other gallery item of their class) excluded.
  int64_t num_queries = 0, num_lone_queries = 0;

  /// The average over classes of the per-class averages (classes with at least one evaluated
  /// query), for imbalanced data.
  std::vector<double> class_avg_recall_at_k, class_avg_precision_at_k;
  double class_avg_map_at_r = std::nan(""), class_avg_r_precision = std::nan(""),
         class_avg_mrr = std::nan("");
  int64_t num_classes_evaluated = 0;

  /// Per class (index = label), filled when RetrievalOptions::per_class is set; NaN for a
  /// class without evaluated queries. class_recall_at_k and class_precision_at_k: [C, ks].
  std::vector<int64_t> class_num_queries, class_num_lone_queries;
  MatrixD class_recall_at_k, class_precision_at_k;
  Eigen::VectorXd class_map_at_r, class_r_precision, class_mrr;
};

namespace detail::knn {

/// Metrics of one query from the ranks of its first positives (ascending; positives not
/// listed have rank >= max(max K, R)).
struct QueryMetrics {
  std::vector<double> recall, precision;
  double map_at_r = 0, r_precision = 0, mrr = 0;
};

inline void query_metrics(const std::vector<int64_t>& ranks, int64_t r, const std::vector<int>& ks,
                          QueryMetrics& out) {
  const std::size_t nk = ks.size();
  out.recall.assign(nk, 0.0);
  out.precision.assign(nk, 0.0);
  const int64_t first = ranks[0];
  for (std::size_t i = 0; i < nk; ++i) {
    out.recall[i] = first < ks[i] ? 1.0 : 0.0;
    const int64_t hits = std::lower_bound(ranks.begin(), ranks.end(), int64_t(ks[i])) - ranks.begin();
    out.precision[i] = static_cast<double>(hits) / ks[i];
  }
  int64_t in_r = 0;
  double ap = 0;
  for (std::size_t j = 0; j < ranks.size() && ranks[j] < r; ++j) {
    ++in_r;
    ap += static_cast<double>(j + 1) / static_cast<double>(ranks[j] + 1);
  }
  out.r_precision = static_cast<double>(in_r) / static_cast<double>(r);
  out.map_at_r = ap / static_cast<double>(r);
  out.mrr = 1.0 / static_cast<double>(first + 1);
}

/// Running sums of the per-query metrics and the report made from them: one implementation of
/// the averaging for the CPU, sharded (MPI) and GPU evaluators, which add the queries in the
/// same (query) order and so give bitwise equal reports.
struct MetricSums {
  std::size_t nk = 0;
  Index C = 0;
  std::vector<double> sum_recall, sum_prec;
  double sum_map = 0, sum_rp = 0, sum_mrr = 0;
  MatrixD c_recall, c_prec;
  Eigen::VectorXd c_map, c_rp, c_mrr;
  std::vector<int64_t> c_n, c_lone;
  int64_t num_queries = 0, num_lone = 0;

  MetricSums(std::size_t nk_, Index C_)
      : nk(nk_), C(C_), sum_recall(nk_, 0.0), sum_prec(nk_, 0.0),
        c_recall(MatrixD::Zero(C_, Index(nk_))), c_prec(MatrixD::Zero(C_, Index(nk_))),
        c_map(Eigen::VectorXd::Zero(C_)), c_rp(Eigen::VectorXd::Zero(C_)), c_mrr(Eigen::VectorXd::Zero(C_)),
        c_n(std::size_t(C_), 0), c_lone(std::size_t(C_), 0) {}

  void lone(int64_t c) {
    ++num_lone;
    ++c_lone[c];
  }
  /// One evaluated query of class c: recall and precision at each K, then MAP@R,
  /// R-Precision and MRR.
  void add(int64_t c, const double* recall, const double* prec, double map, double rp, double mrr) {
    ++num_queries;
    ++c_n[c];
    for (std::size_t k = 0; k < nk; ++k) {
      sum_recall[k] += recall[k];
      sum_prec[k] += prec[k];
      c_recall(c, static_cast<Index>(k)) += recall[k];
      c_prec(c, static_cast<Index>(k)) += prec[k];
    }
    sum_map += map;
    sum_rp += rp;
    sum_mrr += mrr;
    c_map[c] += map;
    c_rp[c] += rp;
    c_mrr[c] += mrr;
  }
  void add(int64_t c, const QueryMetrics& qm) {
    add(c, qm.recall.data(), qm.precision.data(), qm.map_at_r, qm.r_precision, qm.mrr);
  }

  /// The report, by the same operations in the same order as the single-process evaluator.
  RetrievalReport report(const std::vector<int>& ks, bool per_class) {
    const Index num_classes = C;
    RetrievalReport rep;
    rep.ks = ks;
    rep.num_queries = num_queries;
    rep.num_lone_queries = num_lone;
    const double nan = std::nan("");
    const double n = static_cast<double>(rep.num_queries);
    rep.recall_at_k.assign(nk, nan);
    rep.precision_at_k.assign(nk, nan);
    if (rep.num_queries > 0) {
      for (std::size_t k = 0; k < nk; ++k) {
        rep.recall_at_k[k] = sum_recall[k] / n;
        rep.precision_at_k[k] = sum_prec[k] / n;
      }
      rep.map_at_r = sum_map / n;
      rep.r_precision = sum_rp / n;
      rep.mrr = sum_mrr / n;
    }
    rep.class_avg_recall_at_k.assign(nk, 0.0);
    rep.class_avg_precision_at_k.assign(nk, 0.0);
    double avg_map = 0, avg_rp = 0, avg_mrr = 0;
    for (Index c = 0; c < num_classes; ++c) {
      if (c_n[c] == 0) {
        c_recall.row(c).setConstant(nan);
        c_prec.row(c).setConstant(nan);
        c_map[c] = c_rp[c] = c_mrr[c] = nan;
        continue;
      }
      const double cn = static_cast<double>(c_n[c]);
      c_recall.row(c) /= cn;
      c_prec.row(c) /= cn;
      c_map[c] /= cn;
      c_rp[c] /= cn;
      c_mrr[c] /= cn;
      ++rep.num_classes_evaluated;
      for (std::size_t k = 0; k < nk; ++k) {
        rep.class_avg_recall_at_k[k] += c_recall(c, static_cast<Index>(k));
        rep.class_avg_precision_at_k[k] += c_prec(c, static_cast<Index>(k));
      }
      avg_map += c_map[c];
      avg_rp += c_rp[c];
      avg_mrr += c_mrr[c];
    }
    const double nc_eval = static_cast<double>(rep.num_classes_evaluated);
    for (std::size_t k = 0; k < nk; ++k) {
      rep.class_avg_recall_at_k[k] = nc_eval > 0 ? rep.class_avg_recall_at_k[k] / nc_eval : nan;
      rep.class_avg_precision_at_k[k] = nc_eval > 0 ? rep.class_avg_precision_at_k[k] / nc_eval : nan;
    }
    rep.class_avg_map_at_r = nc_eval > 0 ? avg_map / nc_eval : nan;
    rep.class_avg_r_precision = nc_eval > 0 ? avg_rp / nc_eval : nan;
    rep.class_avg_mrr = nc_eval > 0 ? avg_mrr / nc_eval : nan;
    if (per_class) {
      rep.class_num_queries = std::move(c_n);
      rep.class_num_lone_queries = std::move(c_lone);
      rep.class_recall_at_k = std::move(c_recall);
      rep.class_precision_at_k = std::move(c_prec);
      rep.class_map_at_r = std::move(c_map);
      rep.class_r_precision = std::move(c_rp);
      rep.class_mrr = std::move(c_mrr);
    }
    return rep;
  }
};


template <class L>
std::vector<int64_t> labels_as_int64(LabelView<L> y) {
  std::vector<int64_t> out(static_cast<std::size_t>(y.size));
  for (Index i = 0; i < y.size; ++i) out[i] = static_cast<int64_t>(y[i]);
  return out;
}

/// Scores of every same-class (query, gallery) pair, computed by the kernel of the main
/// pass so they are bitwise equal to its scores, sorted best first per query. `self`: the
/// query set is the gallery (leave-one-out), pair (i, i) is skipped.
template <class P>
std::vector<typename P::Key> positive_lists(const RowSource& qs, const std::vector<int64_t>& ql,
                                            const RowSource& gs, const std::vector<int64_t>& gl,
                                            Index num_classes, bool self, bool l2, Index tile,
                                            int threads, std::vector<int64_t>& offsets) {
  const Index nq = static_cast<Index>(ql.size()), d = qs.dim();
  std::vector<std::vector<Index>> qrows(num_classes), grows(num_classes);
  for (Index i = 0; i < nq; ++i) qrows[ql[i]].push_back(i);
  for (Index j = 0; j < static_cast<Index>(gl.size()); ++j) grows[gl[j]].push_back(j);
  offsets.assign(static_cast<std::size_t>(nq) + 1, 0);
  for (Index i = 0; i < nq; ++i)
    offsets[i + 1] = offsets[i] + static_cast<int64_t>(grows[ql[i]].size()) - (self ? 1 : 0);
  std::vector<typename P::Key> pos(static_cast<std::size_t>(offsets[nq]));
  const Index kc = depth_block(d);

  auto one_class = [&](Index c) {
    const std::vector<Index>& qr = qrows[c];
    const std::vector<Index>& gr = grows[c];
    if (qr.empty() || gr.size() <= (self ? 1u : 0u)) return;
    const Index nqc = static_cast<Index>(qr.size()), ngc = static_cast<Index>(gr.size());
    MatrixF a = MatrixF::Zero(round_up(nqc, kRowAlign), d), b = MatrixF::Zero(round_up(ngc, kRowAlign), d);
    for (Index i = 0; i < nqc; ++i) qs.row(qr[i], a.row(i).data());
    for (Index j = 0; j < ngc; ++j) gs.row(gr[j], b.row(j).data());
    // Squared norms of the prepared rows, as the main pass computes them (neg_squared_l2).
    std::vector<float> an(l2 ? static_cast<std::size_t>(nqc) : 0), bn(l2 ? static_cast<std::size_t>(ngc) : 0);
    if (l2) {
      squared_norms(a.data(), nqc, d, an.data());
      squared_norms(b.data(), ngc, d, bn.data());
    }
    const PackedRows pa(a.data(), a.rows(), d, kc, true, false), pb(b.data(), b.rows(), d, kc, false, true);
    const Index rt = std::min(tile, a.rows()), ct = std::min(tile, b.rows());
    std::vector<float> buf(static_cast<std::size_t>(rt * ct));
    for (Index r0 = 0; r0 < a.rows(); r0 += rt) {
      const Index m = std::min(rt, a.rows() - r0), mrows = std::min(m, nqc - r0);
      for (Index c0 = 0; c0 < b.rows(); c0 += ct) {
        const Index n = std::min(ct, b.rows() - c0), ncols = std::min(n, ngc - c0);
        tile_product(pa, r0, m, pb, c0, n, buf.data(), m);
        for (Index x = 0; x < mrows; ++x) {
          const Index qi = qr[r0 + x];
          // Positives are filled in gallery order, skipping the query's own row, which is at
          // position r0 + x of the class's rows when the query set is the gallery.
          int64_t slot = offsets[qi] + c0 - ((self && r0 + x < c0) ? 1 : 0);
          for (Index y = 0; y < ncols; ++y) {
            const Index gj = gr[c0 + y];
            if (self && gj == qi) continue;
            float s = buf[x + y * m];
            if (l2) s = l2_score(s, an[static_cast<std::size_t>(r0 + x)], bn[static_cast<std::size_t>(c0 + y)]);
            pos[slot++] = P::make(s, gj);
          }
        }
      }
    }
    for (Index qi : qr)
      std::sort(pos.begin() + offsets[qi], pos.begin() + offsets[qi + 1], typename P::Better());
  };
  // Exceptions (allocation) must not leave the parallel region: keep the first, rethrow.
  std::exception_ptr error;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
#endif
  for (Index c = 0; c < num_classes; ++c) {
    try {
      one_class(c);
    } catch (...) {
#if defined(_OPENMP)
#pragma omp critical(ncml_positive_lists)
#endif
      if (!error) error = std::current_exception();
    }
  }
  (void)threads;
  if (error) std::rethrow_exception(error);
  return pos;
}

template <class P, class TQ, class TG>
RetrievalReport evaluate_impl(const ConstRowsRef<TQ>& q, const std::vector<int64_t>& ql,
                              const ConstRowsRef<TG>* g, const std::vector<int64_t>& gl,
                              Index num_classes, const RetrievalOptions& o) {
  const bool self = g == nullptr;
  const bool normalize = o.similarity == Similarity::cosine;
  const bool l2 = o.similarity == Similarity::neg_squared_l2;
  const int threads = resolve_threads(o.threads);
  const Index nq = q.rows();
  const int kmax = *std::max_element(o.ks.begin(), o.ks.end());

  std::vector<int64_t> offsets, limit(static_cast<std::size_t>(nq));
  std::vector<typename P::Key> positives;
  const RowSource qs(q, normalize), gs = self ? qs : RowSource(*g, normalize);
  {
    const Index tile = resolve_tile(o.query_tile, qs.padded_rows(), kAutoTile);
    positives = positive_lists<P>(qs, ql, gs, gl, num_classes, self, l2, tile, threads, offsets);
  }
  Operand qop = make_operand(qs, self, true, l2, false), gop;
  if (!self) gop = make_operand(gs, true, false, l2, false);
  choose_packing(qop, self ? nullptr : &gop, o.pack_budget_bytes);
  for (Index i = 0; i < nq; ++i) limit[i] = std::max<int64_t>(kmax, offsets[i + 1] - offsets[i]);

  const Index tile = o.query_tile > 0 ? o.query_tile : o.gallery_tile;
  const EngineOptions e =
      engine_options(o.similarity, self, o.threads, self ? tile : o.query_tile, o.gallery_tile,
                     qop.padded_rows, self ? qop.padded_rows : gop.padded_rows, &o.progress);
  RankCounter<P> counter(offsets, positives, limit, ql.data(), gl.data());
  run(qop, self ? nullptr : &gop, counter, e);

  // Per-query metrics, then averages in query order (deterministic).
  MetricSums sums(o.ks.size(), num_classes);
  std::vector<int64_t> ranks;
  QueryMetrics qm;
  for (Index i = 0; i < nq; ++i) {
    const int64_t r = offsets[i + 1] - offsets[i];
    const int64_t c = ql[i];
    if (r == 0) {
      sums.lone(c);
      continue;
    }
    counter.ranks(i, ranks);
    query_metrics(ranks, r, o.ks, qm);
    sums.add(c, qm);
  }
  RetrievalReport rep = sums.report(o.ks, o.per_class);
  if (o.progress) o.progress(1.0);
  return rep;
}

inline void check_ks(const std::vector<int>& ks, Index gallery, bool self) {
  NC_EXPECTS(!ks.empty(), "ks is empty: give at least one K for Recall@K");
  for (std::size_t i = 0; i < ks.size(); ++i) {
    NC_EXPECTS(ks[i] > 0, "ks[" << i << "] = " << ks[i] << " must be positive");
    NC_EXPECTS(ks[i] <= gallery,
               "ks[" << i << "] = K = " << ks[i] << " is larger than the gallery (" << gallery
                     << " rows" << (self ? " besides the query, leave-one-out" : "") << ")");
  }
}

}  // namespace detail::knn

/// Leave-one-out evaluation of `features` [N, D] (float or double, finite) with `labels`
/// [N] (int32 or int64, >= 0): every row is a query against all other rows.
template <class D, class Labels>
RetrievalReport evaluate_retrieval(const Eigen::MatrixBase<D>& features, const Labels& labels,
                                   const RetrievalOptions& options = {}) {
  using T = typename D::Scalar;
  static_assert(detail::is_supported_scalar<T>::value, "features must be float or double");
  const ConstRowsRef<T> x(features);
  const auto y = label_view(labels);
  detail::knn::check_similarity(options.similarity);
  detail::knn::check_engine_options(options.threads, options.query_tile, options.gallery_tile);
  detail::check_features(x, "features");
  const Index num_classes = detail::check_labels(y, x.rows(), -1, "labels");
  detail::knn::check_ks(options.ks, x.rows() - 1, true);
  detail::knn::check_score_range(options.similarity, x, x, "features", "features");
  const std::vector<int64_t> yl = detail::knn::labels_as_int64(y);
  if (x.rows() < static_cast<Index>(std::numeric_limits<uint32_t>::max()))
    return detail::knn::evaluate_impl<detail::knn::Packed32, T, T>(x, yl, nullptr, yl, num_classes, options);
  return detail::knn::evaluate_impl<detail::knn::Wide, T, T>(x, yl, nullptr, yl, num_classes, options);
}

/// Query-vs-gallery evaluation: `queries` [Q, D] with `query_labels` [Q] against `gallery`
/// [G, D] with `gallery_labels` [G]. No row is removed (the sets are taken as disjoint).
template <class DQ, class LQ, class DG, class LG>
RetrievalReport evaluate_retrieval(const Eigen::MatrixBase<DQ>& queries, const LQ& query_labels,
                                   const Eigen::MatrixBase<DG>& gallery, const LG& gallery_labels,
                                   const RetrievalOptions& options = {}) {
  using TQ = typename DQ::Scalar;
  using TG = typename DG::Scalar;
  static_assert(detail::is_supported_scalar<TQ>::value, "queries must be float or double");
  static_assert(detail::is_supported_scalar<TG>::value, "gallery must be float or double");
  const ConstRowsRef<TQ> q(queries);
  const ConstRowsRef<TG> g(gallery);
  const auto yq = label_view(query_labels);
  const auto yg = label_view(gallery_labels);
  detail::knn::check_similarity(options.similarity);
  detail::knn::check_engine_options(options.threads, options.query_tile, options.gallery_tile);
  detail::check_features(q, "queries");
  detail::check_features(g, "gallery");
  NC_EXPECTS(g.cols() == q.cols(), "gallery has " << g.cols() << " columns but queries have "
                                                  << q.cols() << " (dimension mismatch)");
  const Index cq = detail::check_labels(yq, q.rows(), -1, "query_labels");
  const Index cg = detail::check_labels(yg, g.rows(), -1, "gallery_labels");
  detail::knn::check_ks(options.ks, g.rows(), false);
  detail::knn::check_score_range(options.similarity, q, g, "queries", "gallery");
  const std::vector<int64_t> lq = detail::knn::labels_as_int64(yq), lg = detail::knn::labels_as_int64(yg);
  const Index num_classes = std::max(cq, cg);
  if (g.rows() < static_cast<Index>(std::numeric_limits<uint32_t>::max()))
    return detail::knn::evaluate_impl<detail::knn::Packed32, TQ, TG>(q, lq, &g, lg, num_classes, options);
  return detail::knn::evaluate_impl<detail::knn::Wide, TQ, TG>(q, lq, &g, lg, num_classes, options);
}

}  // namespace nc
