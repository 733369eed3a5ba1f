// ncml: streaming, mergeable per-class statistics.
//
// ClassStats holds, for C classes in D dimensions: sample counts (int64), class means,
// each class's sum of squared deviations from its mean (for CDNV), and the pooled
// within-class scatter S_W = sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, all in double.
// Batches are combined with Chan et al.'s pairwise update, so no E[xx^T] - mu mu^T
// cancellation ever happens, and `merge` of two disjoint streams equals one pass over both
// up to rounding.
//
//   nc::ClassStats stats(num_classes, dim);
//   for (auto& batch : loader) stats.add(batch.features, batch.labels);   // [n, D], [n]
//   nc::MatrixD mu = stats.means();                                       // [C, D]
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "core/check.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/types.hpp"

namespace nc {

struct StatsOptions {
  /// Accumulate the pooled within-class scatter S_W (D x D). Costs O(N D^2) and D^2 doubles;
  /// turn off when only counts, means and per-class variances are needed.
  bool within_scatter = true;
  /// Threads for the scatter accumulation (0: all available). Results do not depend on it.
  int threads = 0;
};

namespace detail {
/// Rows are centred and multiplied in chunks of this many rows; each chunk's scatter is
/// formed in the feature precision and added to the double accumulator in chunk order.
constexpr Index kScatterChunk = 1024;
/// Column panel width of the blocked lower-triangle scatter products.
constexpr Index kPanel = 128;
/// add() processes at most this many rows at a time (bounds the per-block accumulators).
constexpr Index kAddBlock = 1 << 13;
/// The lower block triangle of rows^T rows [D, D] into `out` (column panels of kPanel; the
/// blocks above the diagonal blocks are left as they were): about half the products of a
/// full GEMM. Diagonal blocks come out full and symmetric.
template <class R, class T>
void gram_lower(const R& rows, Matrix<T>& out) {
  const Index d = rows.cols();
  for (Index j0 = 0; j0 < d; j0 += kPanel) {
    const Index w = std::min(kPanel, d - j0);
    out.block(j0, j0, d - j0, w).noalias() = rows.rightCols(d - j0).transpose() * rows.middleCols(j0, w);
  }
}

/// acc += part on the lower block triangle written by gram_lower.
template <class T>
void add_lower(MatrixD& acc, const Matrix<T>& part) {
  const Index d = acc.cols();
  for (Index j0 = 0; j0 < d; j0 += kPanel) {
    const Index w = std::min(kPanel, d - j0);
    acc.block(j0, j0, d - j0, w) += part.block(j0, j0, d - j0, w).template cast<double>();
  }
}

/// Copies the lower block triangle to the upper one, making `acc` symmetric.
inline void mirror_lower(MatrixD& acc) {
  const Index d = acc.cols();
  for (Index j0 = 0; j0 < d; j0 += kPanel) {
    const Index w = std::min(kPanel, d - j0);
    acc.block(j0, j0 + w, w, d - j0 - w) = acc.block(j0 + w, j0, d - j0 - w, w).transpose();
  }
}

}  // namespace detail

class ClassStats {
 public:
  /// Statistics for `num_classes` classes of `dim`-dimensional features.
  ClassStats(Index num_classes, Index dim, StatsOptions options = {})
      : options_(options), counts_(VectorI64::Zero(num_classes)) {
    NC_EXPECTS(num_classes > 0, "num_classes must be positive, got " << num_classes);
    NC_EXPECTS(dim > 0, "dim must be positive, got " << dim);
    means_ = MatrixD::Zero(num_classes, dim);
    sq_dev_ = Eigen::VectorXd::Zero(num_classes);
    if (options_.within_scatter) scatter_ = MatrixD::Zero(dim, dim);
  }

  /// Adds one batch: `features` [n, D] (float or double, any Eigen expression), `labels` [n]
  /// with values in [0, C). Validates the whole batch first; on error nothing changes.
  template <class D, class Labels>
  void add(const Eigen::MatrixBase<D>& features, const Labels& labels) {
    using T = typename D::Scalar;
    static_assert(detail::is_supported_scalar<T>::value, "features must be float or double");
    const auto y = label_view(labels);
    NC_EXPECTS(features.cols() == dim(),
               "features has " << features.cols() << " columns, expected dim = " << dim());
    const ConstRowsRef<T> x(features);
    detail::check_features(x, "features");
    detail::check_labels(y, x.rows(), num_classes(), "labels");
    for (Index r0 = 0; r0 < x.rows(); r0 += detail::kAddBlock) {
      const Index n = std::min(detail::kAddBlock, x.rows() - r0);
      add_block<T>(x.middleRows(r0, n), y.data + r0);
    }
  }

  /// Combines `other` (statistics of a disjoint set of samples) into this one.
  void merge(const ClassStats& other) {
    NC_EXPECTS(other.num_classes() == num_classes(),
               "merge: num_classes differ (" << num_classes() << " vs " << other.num_classes() << ")");
    NC_EXPECTS(other.dim() == dim(), "merge: dim differs (" << dim() << " vs " << other.dim() << ")");
    NC_EXPECTS(other.options_.within_scatter == options_.within_scatter,
               "merge: one side accumulates the within-class scatter and the other does not");
    std::vector<Index> classes(num_classes());
    for (Index c = 0; c < num_classes(); ++c) classes[c] = c;
    combine(classes, other.counts_, other.means_, other.sq_dev_, other.has_scatter() ? &other.scatter_ : nullptr);
  }

  /// Rebuilds statistics from their parts (as returned by the accessors): counts [C],
  /// means [C, D], per-class squared deviations [C], and, when options.within_scatter, the
  /// pooled scatter [D, D]. Used to move statistics between processes or to disk.
  static ClassStats from_parts(const VectorI64& counts, const MatrixD& means, const Eigen::VectorXd& sq_deviations,
                               const MatrixD& scatter = MatrixD(), StatsOptions options = {}) {
    const Index C = counts.size(), d = means.cols();
    NC_EXPECTS(means.rows() == C, "means has " << means.rows() << " rows, expected one per class (" << C << ")");
    NC_EXPECTS(sq_deviations.size() == C,
               "sq_deviations has " << sq_deviations.size() << " entries, expected " << C);
    ClassStats s(C, d, options);
    for (Index c = 0; c < C; ++c) {
      NC_EXPECTS(counts[c] >= 0, "counts has a negative count " << counts[c] << " for class " << c);
      NC_EXPECTS(counts[c] > 0 || (means.row(c).squaredNorm() == 0 && sq_deviations[c] == 0),
                 "class " << c << " has no samples but a nonzero mean or deviation");
      NC_EXPECTS(std::isfinite(sq_deviations[c]) && sq_deviations[c] >= 0,
                 "sq_deviations has an invalid value " << sq_deviations[c] << " for class " << c);
    }
    detail::check_features(means, "means");
    if (options.within_scatter) {
      NC_EXPECTS(scatter.rows() == d && scatter.cols() == d,
                 "scatter is " << scatter.rows() << " x " << scatter.cols() << ", expected " << d << " x " << d);
      detail::check_features(scatter, "scatter");
      s.scatter_ = scatter;
    }
    s.counts_ = counts;
    s.means_ = means;
    s.sq_dev_ = sq_deviations;
    return s;
  }

  Index num_classes() const { return counts_.size(); }
  Index dim() const { return means_.cols(); }
  Index total_count() const { return counts_.sum(); }
  bool has_scatter() const { return options_.within_scatter; }
  /// Number of classes with at least one sample.
  Index num_nonempty_classes() const { return (counts_.array() > 0).count(); }
  const StatsOptions& options() const { return options_; }

  /// Samples per class [C].
  const VectorI64& counts() const { return counts_; }
  /// Class means [C, D]; rows of classes without samples are zero (see counts()).
  const MatrixD& means() const { return means_; }
  /// Per-class sum of squared deviations from the class mean, sum_{i in c} ||h_i - mu_c||^2 [C].
  const Eigen::VectorXd& class_sq_deviations() const { return sq_dev_; }
  /// Per-class variance Var_c = sq_dev_c / n_c [C] (NaN for empty classes).
  Eigen::VectorXd class_variances() const {
    Eigen::VectorXd v(num_classes());
    for (Index c = 0; c < num_classes(); ++c)
      v[c] = counts_[c] > 0 ? sq_dev_[c] / double(counts_[c]) : std::nan("");
    return v;
  }

  /// Sample-weighted global mean (1/N) sum_i h_i [D].
  Eigen::VectorXd global_mean() const {
    require_samples("global_mean");
    Eigen::VectorXd g = Eigen::VectorXd::Zero(dim());
    for (Index c = 0; c < num_classes(); ++c)
      if (counts_[c] > 0) g += double(counts_[c]) * means_.row(c).transpose();
    return g / double(total_count());
  }
  /// Unweighted average of the means of the non-empty classes [D].
  Eigen::VectorXd mean_of_class_means() const {
    require_samples("mean_of_class_means");
    Eigen::VectorXd g = Eigen::VectorXd::Zero(dim());
    for (Index c = 0; c < num_classes(); ++c)
      if (counts_[c] > 0) g += means_.row(c).transpose();
    return g / double(num_nonempty_classes());
  }

  /// Pooled within-class scatter sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T [D, D] (not normalized).
  const MatrixD& within_scatter() const {
    NC_EXPECTS(has_scatter(), "within_scatter: these statistics were built with "
                              "StatsOptions::within_scatter = false");
    return scatter_;
  }
  /// Sigma_W = S_W / N [D, D].
  MatrixD within_covariance() const {
    const MatrixD& s = within_scatter();
    require_samples("within_covariance");
    return s / double(total_count());
  }
  /// Sigma_B = (1/C') sum_c (mu_c - mu_G)(mu_c - mu_G)^T over the C' non-empty classes,
  /// mu_G the sample-weighted global mean [D, D].
  MatrixD between_covariance() const {
    const Eigen::VectorXd g = global_mean();
    MatrixD m(num_nonempty_classes(), dim());
    Index r = 0;
    for (Index c = 0; c < num_classes(); ++c)
      if (counts_[c] > 0) m.row(r++) = means_.row(c) - g.transpose();
    MatrixD sb;
    detail::eigen_serial([&] { sb.noalias() = m.transpose() * m / double(m.rows()); });
    return sb;
  }

 private:
  void require_samples(const char* what) const {
    NC_EXPECTS(total_count() > 0, what << ": the statistics hold no samples yet");
  }

  // One block of at most kAddBlock validated rows: per-class statistics of the block, then a
  // Chan combination with what is stored. Only the classes present in the block are touched.
  template <class T, class L>
  void add_block(const ConstRowsRef<T>& x, const L* y) {
    const Index n = x.rows(), d = dim();
    // Compact slots for the classes present, and the block's rows grouped by slot (a counting
    // sort that keeps each class's rows in their original order).
    std::vector<Index> slot_of(num_classes(), -1), classes;
    std::vector<Index> slot(n);
    for (Index i = 0; i < n; ++i) {
      const Index c = static_cast<Index>(y[i]);
      if (slot_of[c] < 0) {
        slot_of[c] = Index(classes.size());
        classes.push_back(c);
      }
      slot[i] = slot_of[c];
    }
    const Index P = Index(classes.size());
    std::vector<Index> start(P + 1, 0), order(n);
    for (Index i = 0; i < n; ++i) ++start[slot[i] + 1];
    for (Index p = 0; p < P; ++p) start[p + 1] += start[p];
    {
      std::vector<Index> fill(start.begin(), start.end() - 1);
      for (Index i = 0; i < n; ++i) order[fill[slot[i]]++] = i;
    }
    VectorI64 bcount(P);
    MatrixD bmean(P, d);
    Eigen::VectorXd bsq(P);
    // One pass per class with shifted sums: s1 = sum (x - k), s2 = sum (x - k)^2 with k the
    // class's first row, so the variance has no cancellation (rows sit near k); each class's
    // sums run in row order on one thread, whatever the thread count.
    detail::parallel_for(P, options_.threads, [&](Index p) {
      Eigen::RowVectorXd k = x.row(order[start[p]]).template cast<double>();
      Eigen::RowVectorXd s1 = Eigen::RowVectorXd::Zero(d), s2 = Eigen::RowVectorXd::Zero(d);
      const double* __restrict kp = k.data();
      double* __restrict a1 = s1.data();
      double* __restrict a2 = s2.data();
      for (Index r = start[p]; r < start[p + 1]; ++r) {
        const T* __restrict xr = x.data() + order[r] * x.outerStride();
        for (Index j = 0; j < d; ++j) {
          const double v = double(xr[j]) - kp[j];
          a1[j] += v;
          a2[j] += v * v;
        }
      }
      const double cnt = double(start[p + 1] - start[p]);
      bcount[p] = start[p + 1] - start[p];
      bmean.row(p) = k + s1 / cnt;
      bsq[p] = std::max(0.0, (s2 - s1.cwiseAbs2() / cnt).sum());
    });
    MatrixD bscatter;
    if (has_scatter()) {
      // Float products of deviations summed over a chunk stay below sum_c q_c; when that
      // approaches the float range (features near 1e19 and beyond) the scatter is formed in
      // double instead (a double copy of the batch).
      if (std::is_same<T, float>::value && !(bsq.sum() <= 1e36)) {
        const MatrixD xd = x.template cast<double>();
        bscatter = chunked_scatter<double>(ConstRowsRef<double>(xd), slot, bmean);
      } else {
        bscatter = chunked_scatter<T>(x, slot, bmean);
      }
    }
    combine(classes, bcount, bmean, bsq, has_scatter() ? &bscatter : nullptr);
  }

  // sum_i (x_i - m_{slot_i})^T (x_i - m_{slot_i}): rows are centred and multiplied in chunks of
  // kScatterChunk rows in the feature precision, and the chunks' products are added to a
  // double accumulator in chunk order (deterministic for any thread count).
  template <class T>
  MatrixD chunked_scatter(const ConstRowsRef<T>& x, const std::vector<Index>& slot, const MatrixD& bmean) const {
    const Index n = x.rows(), d = dim();
    const Index chunks = (n + detail::kScatterChunk - 1) / detail::kScatterChunk;
    const int threads = static_cast<int>(std::min<Index>(detail::resolve_threads(options_.threads), chunks));
    MatrixD acc = MatrixD::Zero(d, d);
    std::vector<Matrix<T>> part(threads, Matrix<T>(d, d));
    std::vector<Matrix<T>> centred(threads, Matrix<T>(detail::kScatterChunk, d));
    for (Index base = 0; base < chunks; base += threads) {
      const int active = static_cast<int>(std::min<Index>(threads, chunks - base));
      detail::parallel_for(active, active, [&](Index t) {
        const Index r0 = (base + t) * detail::kScatterChunk;
        const Index m = std::min(detail::kScatterChunk, n - r0);
        for (Index k = 0; k < m; ++k)
          centred[t].row(k) = (x.row(r0 + k).template cast<double>() - bmean.row(slot[r0 + k])).template cast<T>();
        const auto rows = centred[t].topRows(m);
        detail::gram_lower(rows, part[t]);
      });
      for (int t = 0; t < active; ++t) detail::add_lower(acc, part[t]);
    }
    detail::mirror_lower(acc);
    return acc;
  }

  // Chan et al. combination of another disjoint set's statistics for `classes`
  // (row p of bmean / entry p of bcount, bsq belongs to class classes[p]).
  void combine(const std::vector<Index>& classes, const VectorI64& bcount, const MatrixD& bmean,
               const Eigen::VectorXd& bsq, const MatrixD* bscatter) {
    // Rows sqrt(n_a n_b / n) (mu_b - mu_a) of the classes both sides hold: the scatter between
    // the two sides' class means, added as one rank update.
    std::vector<Index> both;
    for (std::size_t p = 0; p < classes.size(); ++p)
      if (bcount[p] > 0 && counts_[classes[p]] > 0) both.push_back(Index(p));
    MatrixD between(both.size(), dim());
    for (std::size_t k = 0; k < both.size(); ++k) {
      const Index p = both[k], c = classes[p];
      const double na = double(counts_[c]), nb = double(bcount[p]);
      between.row(k) = std::sqrt(na * nb / (na + nb)) * (bmean.row(p) - means_.row(c));
    }
    for (std::size_t p = 0; p < classes.size(); ++p) {
      const Index c = classes[p];
      if (bcount[p] == 0) continue;
      const double na = double(counts_[c]), nb = double(bcount[p]), tot = na + nb;
      if (counts_[c] == 0) {
        means_.row(c) = bmean.row(p);
        sq_dev_[c] = bsq[p];
      } else {
        const Eigen::RowVectorXd delta = bmean.row(p) - means_.row(c);
        sq_dev_[c] += bsq[p] + delta.squaredNorm() * na * nb / tot;
        means_.row(c) += delta * (nb / tot);
      }
      counts_[c] += bcount[p];
    }
    if (bscatter) {
      scatter_ += *bscatter;
      if (!both.empty()) detail::eigen_serial([&] { scatter_.noalias() += between.transpose() * between; });
    }
  }

  StatsOptions options_;
  VectorI64 counts_;
  MatrixD means_;
  Eigen::VectorXd sq_dev_;
  MatrixD scatter_;
};

/// One-pass statistics of `features` [N, D] with `labels` [N]; num_classes -1 means
/// max(label) + 1.
template <class D, class Labels>
ClassStats class_stats(const Eigen::MatrixBase<D>& features, const Labels& labels,
                       Index num_classes = -1, StatsOptions options = {}) {
  const auto y = label_view(labels);
  const Index C = detail::resolve_num_classes(y, features.rows(), num_classes, "labels");
  NC_EXPECTS(features.rows() > 0, "features is empty (0 rows)");
  ClassStats s(C, features.cols(), options);
  s.add(features, labels);
  return s;
}

}  // namespace nc
