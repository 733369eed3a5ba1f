// ncml: Neural Collapse metrics NC1-NC4, CDNV and the covariance traces.
//
// Every metric is computed from one ClassStats (counts, class means, per-class squared
// deviations and, for NC1, the pooled within-class scatter), in double precision. The
// definitions are those of docs/metrics.md; in short, with M~ the C' x D matrix of centred
// class means mu_c - mu_G over the C' classes that have samples:
//
//   NC1      (1/C') tr(Sigma_W Sigma_B^+)  (Papyan, Han, Donoho 2020)
//   CDNV     mean over pairs c < c' of (Var_c + Var_c') / (2 ||mu_c - mu_c'||^2)  (Galanti et al.)
//   NC2      simplex-ETF error of M~ M~^T, equinorm, equiangularity, max-angle
//   NC3      self-duality ||W/||W|| - M~/||M~|| ||_F and the ETF error of W M~^T
//   NC4      rate of samples where the classifier and the nearest class mean disagree
//
//   nc::ClassStats stats = nc::class_stats(features, labels);          // [N, D], [N]
//   double v = nc::nc1(stats);                                          // projected path
//   nc::NCReport r = nc::nc_metrics(stats, &W);                         // W [C, D]
//   double mismatch = nc::nc4(features, labels, stats, W);
//
// The projected NC1 path never forms or inverts a D x D matrix: with the thin SVD
// M~^T = U S V^T truncated to the r singular values above the rank tolerance,
// NC1 = sum_k (u_k^T Sigma_W u_k) / s_k^2, O(C' D min(C', D)) for the SVD plus O(D^2 r) from
// the stored Sigma_W, or O(N D r) from the data when the statistics were gathered without
// the scatter (nc1(features, labels, stats)). The exact path eigen-decomposes Sigma_B (O(D^3)).
//
// Classes without samples take no part in class-level metrics (they are counted in the
// report); fewer than two classes with samples, non-finite statistics, a head of the wrong
// shape and class means that all coincide throw nc::error. Results do not depend on the
// thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/SVD>

#include "../core/check.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../stats.hpp"

namespace nc {

struct NC1Options {
  enum class Path {
    projected,  ///< thin SVD of the centred means; no D x D inverse (default)
    exact       ///< eigendecomposition of Sigma_B, eigenvalues below the tolerance dropped
  };
  Path path = Path::projected;
  /// Singular values of M~ (the C' x D centred class means) at or below this are treated as
  /// zero; the exact path applies it to sqrt(C' lambda) for the eigenvalues lambda of Sigma_B.
  /// -1: max(C', D) * eps * s_max for the projected path, and eigenvalues at or below
  /// max(C', D) * eps * lambda_max for the exact path (the resolution of each decomposition).
  double rank_tol = -1;
  /// mu_G = the unweighted average of the class means instead of the sample-weighted mean.
  bool unweighted_global_mean = false;
  /// Threads for the pass over the data in nc1(features, labels, stats) (0: all available).
  int threads = 0;
};

/// NC1 with the numerical rank it used.
struct NC1Result {
  double value = std::numeric_limits<double>::quiet_NaN();
  /// Number of singular directions of M~ (eigen-directions of Sigma_B) kept.
  Index rank = 0;
  /// Classes with at least one sample (C').
  Index num_classes_used = 0;
  /// The threshold applied, in units of the singular values of M~.
  double tolerance = 0;
  NC1Options::Path path = NC1Options::Path::projected;
};

struct NCOptions {
  NC1Options::Path nc1_path = NC1Options::Path::projected;
  /// See NC1Options::rank_tol.
  double rank_tol = -1;
  /// mu_G = the unweighted average of the class means, for every metric of the report.
  bool unweighted_global_mean = false;
};

/// All NC metrics of one set of statistics. Fields that cannot be computed from what was
/// given are NaN: nc3_* without a head, nc1 for statistics without the within-class scatter.
struct NCReport {
  static constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  double nc1 = nan;                 ///< (1/C') tr(Sigma_W Sigma_B^+)
  double trace_sw = nan;            ///< tr(Sigma_W)
  double trace_sb = nan;            ///< tr(Sigma_B)
  double trace_ratio = nan;         ///< tr(Sigma_W) / tr(Sigma_B)
  double cdnv = nan;                ///< class-distance normalized variance, mean over pairs
  double nc2_etf_error = nan;       ///< || G/||G||_F - (I - 11^T/C')/sqrt(C'-1) ||_F, G = M~ M~^T
  double nc2_equinorm = nan;        ///< std / mean of ||mu_c - mu_G|| (population std)
  double nc2_equiangularity = nan;  ///< std over pairs of cos(mu_c - mu_G, mu_c' - mu_G)
  double nc2_max_angle = nan;       ///< mean over pairs of |cos + 1/(C'-1)|
  double nc3_self_duality = nan;    ///< || W/||W||_F - M~/||M~||_F ||_F
  double nc3_etf_error = nan;       ///< ETF error of W M~^T
  Index rank = 0;                   ///< numerical rank of M~ used by NC1
  Index num_classes_used = 0;       ///< C': classes with at least one sample
  Index num_empty_classes = 0;      ///< C - C'
  int64_t num_samples = 0;          ///< N
};

struct NC4Options {
  enum class Rule {
    euclidean,  ///< classifier argmax_c (w_c . h + b_c) vs argmin_c ||h - mu_c||
    cosine      ///< classifier argmax_c (w_c/||w_c|| . h/||h|| + b_c) vs argmax_c cos(h, mu_c)
  };
  Rule rule = Rule::euclidean;
  /// Average the per-class mismatch rates (classes by the given labels) instead of counting
  /// every sample once (for imbalanced data).
  bool per_class_average = false;
  /// Threads over blocks of samples (0: all available). Results do not depend on it.
  int threads = 0;
};

namespace detail {

/// Rows of samples per product in the data passes (NC1 from data, NC4): up to 512, fewer
/// when a row of the block's buffers is wide, so that a buffer stays near 2^21 entries; and
/// blocks per parallel task (buffers are allocated once per task). Block boundaries depend
/// on the sizes only, never on the thread count, and so do the results.
constexpr Index kNCTask = 8;
inline Index block_rows(Index width) {
  return std::max<Index>(16, std::min<Index>(512, (Index(1) << 21) / std::max<Index>(1, width)));
}

/// The classes with samples, their means centred at mu_G, and mu_G.
struct CentredMeans {
  std::vector<Index> classes;  // [C'] class ids with n_c > 0
  MatrixD mt;                  // [C', D] mu_c - mu_G
  Eigen::VectorXd global;      // [D] mu_G
  double means_norm = 0;       // ||[mu_c]||_F over the C' classes, before centring
};

inline void check_stats_finite(const ClassStats& s) {
  for (Index c = 0; c < s.num_classes(); ++c) {
    if (s.counts()[c] == 0) continue;
    for (Index j = 0; j < s.dim(); ++j)
      NC_EXPECTS(std::isfinite(s.means()(c, j)),
                 "stats: class " << c << " has a non-finite mean " << s.means()(c, j)
                                 << " in column " << j);
    NC_EXPECTS(std::isfinite(s.class_sq_deviations()[c]),
               "stats: class " << c << " has a non-finite sum of squared deviations "
                               << s.class_sq_deviations()[c]);
  }
}

inline CentredMeans centred_means(const ClassStats& s, bool unweighted) {
  NC_EXPECTS(s.total_count() > 0, "stats hold no samples");
  const Index used = s.num_nonempty_classes();
  if (used < 2) {
    std::vector<Index> nonempty;
    for (Index c = 0; c < s.num_classes(); ++c)
      if (s.counts()[c] > 0) nonempty.push_back(c);
    NC_FAIL("NC metrics need at least 2 classes with samples, got "
            << used << " (class " << join_indices(nonempty) << ") of " << s.num_classes());
  }
  check_stats_finite(s);
  CentredMeans cm;
  cm.global = unweighted ? s.mean_of_class_means() : s.global_mean();
  cm.mt.resize(used, s.dim());
  for (Index c = 0; c < s.num_classes(); ++c) {
    if (s.counts()[c] == 0) continue;
    cm.mt.row(Index(cm.classes.size())) = s.means().row(c) - cm.global.transpose();
    cm.classes.push_back(c);
    cm.means_norm += s.means().row(c).squaredNorm();
  }
  cm.means_norm = std::sqrt(cm.means_norm);
  return cm;
}

/// A = U_r S_r^-1 [D, r] from the thin SVD M~^T = U S V^T, so that NC1 = tr(A^T Sigma_W A).
struct Projection {
  MatrixD a;
  Index rank = 0;
  double tolerance = 0;
};

/// The default tolerance scales with the larger of s_max and ||[mu_c]||_F: M~ is computed
/// from the uncentred means, so its entries carry rounding errors of order eps * |mu_c|, and
/// with a large common offset the singular value that centring removes (zero in exact
/// arithmetic) sits at that level, far above eps * s_max.
inline Projection projection(const CentredMeans& cm, double rank_tol) {
  const MatrixD& mt = cm.mt;
  const Index k = mt.rows(), d = mt.cols();
  Eigen::BDCSVD<MatrixD> svd(mt, Eigen::ComputeThinV);
  const Eigen::VectorXd& s = svd.singularValues();
  const double s_max = s.size() ? s[0] : 0.0;
  NC_EXPECTS(s_max > 0, "all " << k << " class means coincide: Sigma_B = 0 and NC1 is undefined");
  Projection p;
  p.tolerance = rank_tol >= 0 ? rank_tol
                              : double(std::max(k, d)) * std::numeric_limits<double>::epsilon() *
                                    std::max(s_max, cm.means_norm);
  while (p.rank < s.size() && s[p.rank] > p.tolerance) ++p.rank;
  if (p.rank == 0 && rank_tol >= 0)
    NC_FAIL("rank_tol = " << rank_tol << " is at or above the largest singular value " << s_max
                          << " of the centred class means");
  NC_EXPECTS(p.rank > 0,
             "all " << k << " class means coincide up to rounding (largest singular value " << s_max
                    << " of the centred means, tolerance " << p.tolerance << "): NC1 is undefined");
  p.a = svd.matrixV().leftCols(p.rank) * s.head(p.rank).cwiseInverse().asDiagonal();
  return p;
}

/// The within-class scatter S_W = N Sigma_W [D, D] of statistics gathered with it, checked
/// finite (used in place, without forming Sigma_W).
inline const MatrixD& checked_within_scatter(const ClassStats& s) {
  const MatrixD& sw = s.within_scatter();
  NC_EXPECTS(sw.allFinite(), "stats: the within-class scatter has non-finite entries");
  return sw;
}

// sw is the scatter S_W; n the sample count (Sigma_W = S_W / n).
inline NC1Result nc1_exact(const MatrixD& sw, double n, const MatrixD& mt, double rank_tol) {
  const Index k = mt.rows(), d = mt.cols();
  MatrixD sb = MatrixD::Zero(d, d);
  sb.selfadjointView<Eigen::Lower>().rankUpdate(mt.transpose(), 1.0 / double(k));
  Eigen::SelfAdjointEigenSolver<MatrixD> es(sb);  // reads the lower triangle
  NC_EXPECTS(es.info() == Eigen::Success, "the eigensolver for Sigma_B did not converge");
  const Eigen::VectorXd& lambda = es.eigenvalues();  // ascending
  const double l_max = lambda[d - 1];
  NC_EXPECTS(l_max > 0, "all " << k << " class means coincide: Sigma_B = 0 and NC1 is undefined");
  const double l_tol =
      rank_tol >= 0 ? rank_tol * rank_tol / double(k)
                    : double(std::max(k, d)) * std::numeric_limits<double>::epsilon() * l_max;
  NC1Result r;
  r.path = NC1Options::Path::exact;
  r.num_classes_used = k;
  r.tolerance = std::sqrt(double(k) * l_tol);
  while (r.rank < d && lambda[d - 1 - r.rank] > l_tol) ++r.rank;
  if (r.rank == 0 && rank_tol >= 0)
    NC_FAIL("rank_tol = " << rank_tol << " is at or above the largest singular value "
                          << std::sqrt(double(k) * l_max) << " of the centred class means");
  NC_EXPECTS(r.rank > 0, "all " << k << " class means coincide up to rounding (largest eigenvalue "
                                << l_max << " of Sigma_B, tolerance " << l_tol
                                << "): NC1 is undefined");
  const MatrixD v = es.eigenvectors().rightCols(r.rank);
  const MatrixD swv = sw * v;
  double acc = 0;
  for (Index j = 0; j < r.rank; ++j) acc += v.col(j).dot(swv.col(j)) / lambda[d - r.rank + j];
  r.value = acc / (double(k) * n);
  return r;
}

inline NC1Result nc1_from_stats(const CentredMeans& cm, const ClassStats& stats,
                                const NC1Options& o) {
  const MatrixD& sw = checked_within_scatter(stats);
  const double n = double(stats.total_count());
  if (o.path == NC1Options::Path::exact) return nc1_exact(sw, n, cm.mt, o.rank_tol);
  const Projection p = projection(cm, o.rank_tol);
  const MatrixD swa = sw * p.a;
  NC1Result r;
  r.value = (p.a.array() * swa.array()).sum() / n;
  r.rank = p.rank;
  r.num_classes_used = cm.mt.rows();
  r.tolerance = p.tolerance;
  return r;
}

/// || A/||A||_F - (I - 11^T/K)/sqrt(K-1) ||_F for a K x K matrix A (NaN when A = 0).
inline double etf_error(const MatrixD& a) {
  const Index k = a.rows();
  const double n = a.norm();
  const double off = -1.0 / (double(k) * std::sqrt(double(k - 1)));
  const double diag = 1.0 / std::sqrt(double(k - 1)) + off;
  double acc = 0;
  for (Index i = 0; i < k; ++i)
    for (Index j = 0; j < k; ++j) {
      const double e = a(i, j) / n - (i == j ? diag : off);
      acc += e * e;
    }
  return std::sqrt(acc);
}

/// The C' x C' Gram matrix of the centred means and everything derived from it (CDNV, NC2).
inline void class_pair_metrics(const ClassStats& stats, const CentredMeans& cm, NCReport& r) {
  const MatrixD& mt = cm.mt;
  const Index k = mt.rows();
  MatrixD g = MatrixD::Zero(k, k);
  g.selfadjointView<Eigen::Lower>().rankUpdate(mt);
  g = MatrixD(g.selfadjointView<Eigen::Lower>());

  Eigen::VectorXd var(k), norm(k);
  for (Index i = 0; i < k; ++i) {
    const Index c = cm.classes[i];
    var[i] = stats.class_sq_deviations()[c] / double(stats.counts()[c]);
    norm[i] = std::sqrt(g(i, i));
  }

  // Pairs c < c'. ||mu_c - mu_c'||^2 from the Gram entries unless cancellation would cost
  // more than ~4 digits, then directly from the two rows.
  const double pairs = double(k) * double(k - 1) / 2;
  double cdnv = 0, cos_sum = 0, angle = 0;
  const double ideal = -1.0 / double(k - 1);
  for (Index i = 0; i < k; ++i) {
    for (Index j = i + 1; j < k; ++j) {
      const double both = g(i, i) + g(j, j);
      double d2 = both - 2 * g(i, j);
      if (d2 < 1e-4 * both) d2 = (mt.row(i) - mt.row(j)).squaredNorm();
      cdnv += (var[i] + var[j]) / (2 * d2);
      const double cs = g(i, j) / (norm[i] * norm[j]);
      cos_sum += cs;
      angle += std::abs(cs - ideal);
    }
  }
  const double cos_mean = cos_sum / pairs;
  double cos_dev = 0;
  for (Index i = 0; i < k; ++i)
    for (Index j = i + 1; j < k; ++j) {
      const double e = g(i, j) / (norm[i] * norm[j]) - cos_mean;
      cos_dev += e * e;
    }

  const double norm_mean = norm.mean();
  r.cdnv = cdnv / pairs;
  r.nc2_etf_error = etf_error(g);
  r.nc2_equinorm = std::sqrt((norm.array() - norm_mean).square().mean()) / norm_mean;
  r.nc2_equiangularity = std::sqrt(cos_dev / pairs);
  r.nc2_max_angle = angle / pairs;
  r.trace_sb = g.trace() / double(k);
}

inline NCReport nc_report(const ClassStats& stats, const MatrixD* w, const NCOptions& o) {
  const CentredMeans cm = centred_means(stats, o.unweighted_global_mean);
  const Index k = cm.mt.rows();
  MatrixD w_used;
  if (w) {
    NC_EXPECTS(w->rows() == stats.num_classes() && w->cols() == stats.dim(),
               "W is " << w->rows() << " x " << w->cols() << ", expected num_classes x dim = "
                       << stats.num_classes() << " x " << stats.dim());
    check_features(*w, "W");
    w_used.resize(k, stats.dim());
    for (Index i = 0; i < k; ++i) w_used.row(i) = w->row(cm.classes[i]);
    NC_EXPECTS(w_used.norm() > 0, "W is zero on every class with samples");
  }

  NCReport r;
  r.num_classes_used = k;
  r.num_empty_classes = stats.num_classes() - k;
  r.num_samples = stats.total_count();
  r.trace_sw = stats.class_sq_deviations().sum() / double(stats.total_count());
  class_pair_metrics(stats, cm, r);
  r.trace_ratio = r.trace_sw / r.trace_sb;

  NC1Options o1;
  o1.path = o.nc1_path;
  o1.rank_tol = o.rank_tol;
  o1.unweighted_global_mean = o.unweighted_global_mean;
  if (stats.has_scatter()) {
    const NC1Result n1 = nc1_from_stats(cm, stats, o1);
    r.nc1 = n1.value;
    r.rank = n1.rank;
  } else {
    r.rank = projection(cm, o.rank_tol).rank;
  }

  if (w) {
    const double mn = cm.mt.norm();
    r.nc3_self_duality = (w_used / w_used.norm() - cm.mt / mn).norm();
    r.nc3_etf_error = etf_error(w_used * cm.mt.transpose());
  }
  return r;
}

/// Index of the largest entry of row i (the first one on ties).
template <class M>
Index row_argmax(const M& s, Index i) {
  Index best = 0;
  double v = s(i, 0);
  for (Index j = 1; j < s.cols(); ++j)
    if (s(i, j) > v) {
      v = s(i, j);
      best = j;
    }
  return best;
}

template <class T, class L>
double nc4_impl(const ConstRowsRef<T>& x, LabelView<L> y, const ClassStats& stats, const MatrixD& w,
                const Eigen::VectorXd* bias, const NC4Options& o) {
  const CentredMeans cm = centred_means(stats, false);
  const Index n = x.rows(), d = x.cols(), k = cm.mt.rows(), C = w.rows();
  const bool cosine = o.rule == NC4Options::Rule::cosine;
  const Index num_labels = stats.num_classes();

  // NCC scores are h . a_c + e_c, maximized: Euclidean a_c = mu_c - mu_G on h - mu_G with
  // e_c = -||a_c||^2 / 2 (centred, so no large offsets cancel); cosine a_c = mu_c / ||mu_c||.
  MatrixD ncc_t(d, k);
  Eigen::RowVectorXd ncc_e = Eigen::RowVectorXd::Zero(k);
  for (Index i = 0; i < k; ++i) {
    if (cosine) {
      const Eigen::VectorXd mu = stats.means().row(cm.classes[i]).transpose();
      const double nm = mu.norm();
      ncc_t.col(i) = nm > 0 ? Eigen::VectorXd(mu / nm) : Eigen::VectorXd(Eigen::VectorXd::Zero(d));
    } else {
      ncc_t.col(i) = cm.mt.row(i).transpose();
      ncc_e[i] = -0.5 * cm.mt.row(i).squaredNorm();
    }
  }
  MatrixD w_t = w.transpose();
  if (cosine)
    for (Index c = 0; c < C; ++c) {
      const double nw = w_t.col(c).norm();
      if (nw > 0) w_t.col(c) /= nw;
    }
  const Eigen::RowVectorXd b =
      bias ? Eigen::RowVectorXd(bias->transpose()) : Eigen::RowVectorXd::Zero(C);

  // Blocks of rows in fixed positions, grouped into tasks that share buffers; every row's
  // verdict is written to its own slot and counted serially afterwards.
  std::vector<char> miss(n, 0);
  const Index rows = block_rows(std::max(d, C));
  const Index blocks = (n + rows - 1) / rows, tasks = (blocks + kNCTask - 1) / kNCTask;
  parallel_for(tasks, o.threads, [&](Index task) {
    MatrixD h(rows, d), logits(rows, C), ncc(rows, k);
    for (Index blk = task * kNCTask; blk < std::min(blocks, (task + 1) * kNCTask); ++blk) {
      const Index r0 = blk * rows, m = std::min(rows, n - r0);
      auto hb = h.topRows(m);
      auto lb = logits.topRows(m);
      auto nb = ncc.topRows(m);
      hb = x.middleRows(r0, m).template cast<double>();
      if (cosine) {
        nb.noalias() = hb * ncc_t;
        for (Index i = 0; i < m; ++i) {
          const double nh = hb.row(i).norm();
          if (nh > 0) hb.row(i) /= nh;
        }
        lb.noalias() = hb * w_t;
      } else {
        lb.noalias() = hb * w_t;
        hb.rowwise() -= cm.global.transpose();
        nb.noalias() = hb * ncc_t;
        nb.rowwise() += ncc_e;
      }
      lb.rowwise() += b;
      for (Index i = 0; i < m; ++i)
        miss[r0 + i] = row_argmax(lb, i) != cm.classes[row_argmax(nb, i)];
    }
  });
  std::vector<int64_t> miss_c(num_labels, 0), seen_c(num_labels, 0);
  for (Index i = 0; i < n; ++i) {
    const Index label = static_cast<Index>(y[i]);
    ++seen_c[label];
    miss_c[label] += miss[i];
  }
  if (!o.per_class_average) {
    int64_t total = 0;
    for (auto v : miss_c) total += v;
    return double(total) / double(n);
  }
  double acc = 0;
  Index classes = 0;
  for (Index c = 0; c < num_labels; ++c)
    if (seen_c[c] > 0) {
      acc += double(miss_c[c]) / double(seen_c[c]);
      ++classes;
    }
  return acc / double(classes);
}

/// sum_i ||(x_i - mu_{y_i}) A||^2 with rows centred in double, rounded to U, projected in U and
/// each block's squared norm summed in double; blocks are combined in order.
template <class U, class T, class L>
double nc1_blocks(const ConstRowsRef<T>& x, LabelView<L> y, const MatrixD& mu, const Projection& p, int threads) {
  const Index n = x.rows(), d = x.cols();
  const Matrix<U> a = p.a.template cast<U>();
  const Index rows = block_rows(d);
  const Index blocks = (n + rows - 1) / rows, tasks = (blocks + kNCTask - 1) / kNCTask;
  std::vector<double> part(blocks, 0.0);
  parallel_for(tasks, threads, [&](Index task) {
    Matrix<U> xc(rows, d), z(rows, p.rank);
    for (Index blk = task * kNCTask; blk < std::min(blocks, (task + 1) * kNCTask); ++blk) {
      const Index r0 = blk * rows, m = std::min(rows, n - r0);
      for (Index i = 0; i < m; ++i)
        xc.row(i) = (x.row(r0 + i).template cast<double>() - mu.row(static_cast<Index>(y[r0 + i])))
                        .template cast<U>();
      z.topRows(m).noalias() = xc.topRows(m) * a;
      part[blk] = z.topRows(m).template cast<double>().squaredNorm();
    }
  });
  double acc = 0;
  for (double v : part) acc += v;
  return acc;
}

template <class T, class L>
NC1Result nc1_data_pass(const ConstRowsRef<T>& x, LabelView<L> y, const ClassStats& stats,
                        const NC1Options& o) {
  const Index n = x.rows(), C = stats.num_classes();
  VectorI64 counts = VectorI64::Zero(C);
  for (Index i = 0; i < n; ++i) ++counts[static_cast<Index>(y[i])];
  for (Index c = 0; c < C; ++c)
    NC_EXPECTS(counts[c] == stats.counts()[c],
               "labels hold " << counts[c] << " samples of class " << c << " but stats hold "
                              << stats.counts()[c]
                              << ": pass the data the statistics were built from");
  const CentredMeans cm = centred_means(stats, o.unweighted_global_mean);
  const Projection p = projection(cm, o.rank_tol);
  // Float products are safe while |z| <= |x - mu| |a| stays far inside the float range; data
  // of extreme scale (|x - mu| or 1/|x - mu| beyond about 1e15) take the same pass in double.
  const double a_norm = p.a.norm();
  const double dev_norm = std::sqrt(stats.class_sq_deviations().maxCoeff());
  const bool wide = std::is_same<T, float>::value && !(a_norm <= 1e15 && dev_norm <= 1e15);
  const double acc = wide ? nc1_blocks<double>(x, y, stats.means(), p, o.threads)
                          : nc1_blocks<T>(x, y, stats.means(), p, o.threads);
  NC1Result r;
  r.value = acc / double(n);
  r.rank = p.rank;
  r.num_classes_used = cm.mt.rows();
  r.tolerance = p.tolerance;
  return r;
}

}  // namespace detail

/// NC1 and the rank used, from statistics gathered with the within-class scatter
/// (StatsOptions::within_scatter, the default).
inline NC1Result nc1_detailed(const ClassStats& stats, NC1Options options = {}) {
  const detail::CentredMeans cm = detail::centred_means(stats, options.unweighted_global_mean);
  return detail::nc1_from_stats(cm, stats, options);
}

/// NC1 = (1/C') tr(Sigma_W Sigma_B^+) over the C' classes with samples.
inline double nc1(const ClassStats& stats, NC1Options options = {}) {
  return nc1_detailed(stats, options).value;
}

/// Projected NC1 in one pass over `features` [N, D] with `labels` [N], the data `stats` was
/// built from (checked through the per-class counts); `stats` needs no within-class scatter,
/// so with StatsOptions{false} the whole computation is O(N D r) instead of O(N D^2). The
/// projection runs in the feature precision (float features: 1e-9 to 1e-7 relative, double:
/// about 1e-13), the sums in double.
template <class D, class Labels>
NC1Result nc1_detailed(const Eigen::MatrixBase<D>& features, const Labels& labels,
                       const ClassStats& stats, NC1Options options = {}) {
  using T = typename D::Scalar;
  static_assert(detail::is_supported_scalar<T>::value, "features must be float or double");
  NC_EXPECTS(options.path == NC1Options::Path::projected,
             "NC1 from the data uses the projected path; the exact path needs the stored "
             "within-class scatter: call nc1(stats, options)");
  const auto y = label_view(labels);
  NC_EXPECTS(features.cols() == stats.dim(),
             "features has " << features.cols() << " columns, expected dim = " << stats.dim());
  const ConstRowsRef<T> x(features);
  detail::check_features(x, "features");
  detail::check_labels(y, x.rows(), stats.num_classes(), "labels");
  return detail::nc1_data_pass<T>(x, y, stats, options);
}

template <class D, class Labels>
double nc1(const Eigen::MatrixBase<D>& features, const Labels& labels, const ClassStats& stats,
           NC1Options options = {}) {
  return nc1_detailed(features, labels, stats, options).value;
}

/// Every NC metric of `stats`, NC3 against the head `W` [C, D] (float or double, any Eigen
/// expression; rows of classes without samples are ignored).
template <class D>
NCReport nc_metrics(const ClassStats& stats, const Eigen::MatrixBase<D>& W,
                    NCOptions options = {}) {
  static_assert(detail::is_supported_scalar<typename D::Scalar>::value,
                "W must be float or double");
  const MatrixD w = W.template cast<double>();
  return detail::nc_report(stats, &w, options);
}

/// Every NC metric of `stats` except NC3 (no head).
inline NCReport nc_metrics(const ClassStats& stats, NCOptions options = {}) {
  return detail::nc_report(stats, nullptr, options);
}
inline NCReport nc_metrics(const ClassStats& stats, std::nullptr_t, NCOptions options = {}) {
  return detail::nc_report(stats, nullptr, options);
}
/// NC3 against *W when W is not null.
inline NCReport nc_metrics(const ClassStats& stats, const MatrixF* W, NCOptions options = {}) {
  return W ? nc_metrics(stats, *W, options) : nc_metrics(stats, options);
}
inline NCReport nc_metrics(const ClassStats& stats, const MatrixD* W, NCOptions options = {}) {
  return W ? nc_metrics(stats, *W, options) : nc_metrics(stats, options);
}

/// NC4: the fraction of `features` [N, D] (float or double) on which the classifier W [C, D]
/// with `bias` [C] and the nearest-class-mean rule over the classes with samples in `stats`
/// disagree. Labels [N] in [0, C) group the samples for NC4Options::per_class_average only;
/// `features` may be other data than the statistics were built from (e.g. test features
/// against training means). Scores are computed in double in blocked products; ties go to the
/// lower class index.
template <class DX, class Labels, class DW, class DB>
double nc4(const Eigen::MatrixBase<DX>& features, const Labels& labels, const ClassStats& stats,
           const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DB>& bias,
           NC4Options options = {}) {
  using T = typename DX::Scalar;
  static_assert(detail::is_supported_scalar<T>::value, "features must be float or double");
  static_assert(detail::is_supported_scalar<typename DW::Scalar>::value,
                "W must be float or double");
  const auto y = label_view(labels);
  NC_EXPECTS(features.cols() == stats.dim(),
             "features has " << features.cols() << " columns, expected dim = " << stats.dim());
  NC_EXPECTS(W.rows() == stats.num_classes() && W.cols() == stats.dim(),
             "W is " << W.rows() << " x " << W.cols() << ", expected num_classes x dim = "
                     << stats.num_classes() << " x " << stats.dim());
  NC_EXPECTS(
      bias.size() == stats.num_classes() || bias.size() == 0,
      "bias has " << bias.size() << " entries, expected num_classes = " << stats.num_classes());
  const ConstRowsRef<T> x(features);
  detail::check_features(x, "features");
  detail::check_labels(y, x.rows(), stats.num_classes(), "labels");
  const MatrixD w = W.template cast<double>();
  detail::check_features(w, "W");
  const Eigen::VectorXd b = bias.template cast<double>();
  for (Index c = 0; c < b.size(); ++c)
    NC_EXPECTS(std::isfinite(b[c]), "bias has a non-finite value " << b[c] << " for class " << c);
  return detail::nc4_impl<T>(x, y, stats, w, b.size() ? &b : nullptr, options);
}

/// NC4 without a bias.
template <class DX, class Labels, class DW>
double nc4(const Eigen::MatrixBase<DX>& features, const Labels& labels, const ClassStats& stats,
           const Eigen::MatrixBase<DW>& W, NC4Options options = {}) {
  return nc4(features, labels, stats, W, Eigen::VectorXd(), options);
}

}  // namespace nc
