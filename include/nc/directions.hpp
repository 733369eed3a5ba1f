// ncml: Neural Collapse directions of pretrained embeddings.
//
// nc_directions(features [N, D], labels [N]) returns one unit row per class [C, D]:
//   Direction::pc1           the paper's NC-Init direction (Algorithm 1): the first principal
//                            direction of the class's *uncentred* rows, i.e. the top right
//                            singular vector of E_c, signed so that v_c . mean(E_c) >= 0;
//   Direction::mean          the normalized class mean mu_c / ||mu_c||;
//   Direction::centered_mean (mu_c - mu_G) / ||mu_c - mu_G||, mu_G the global mean.
// Every class in [0, C) needs at least one sample; otherwise nc::error lists the empty ones.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include "core/check.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/types.hpp"
#include "stats.hpp"

namespace nc {

enum class Direction { pc1, mean, centered_mean };

struct DirectionOptions {
  Direction method = Direction::pc1;
  /// Number of classes; -1 means max(label) + 1.
  Index num_classes = -1;
  /// centered_mean only: subtract the unweighted mean of the class means instead of the
  /// sample-weighted global mean (for imbalanced data).
  bool unweighted_global_mean = false;
  /// Threads over classes (0: all available). Results do not depend on it.
  int threads = 0;
};

namespace detail {

/// Classes at or below this many rows (or dimensions) get a dense symmetric eigensolver;
/// larger ones a power iteration with a residual test that falls back to the eigensolver.
constexpr Index kExactEigenLimit = 256;
constexpr int kPowerMaxIter = 1000;

/// Top eigenvector of the symmetric PSD matrix `a`, starting from `v0` (not orthogonal to it).
inline Eigen::VectorXd top_eigenvector(const MatrixD& a, Eigen::VectorXd v0) {
  const Index n = a.rows();
  if (n > kExactEigenLimit) {
    if (!(v0.norm() > 0)) v0 = Eigen::VectorXd::Ones(n);
    Eigen::VectorXd v = v0.normalized(), av(n);
    for (int it = 0; it < kPowerMaxIter; ++it) {
      av.noalias() = a * v;
      const double lambda = v.dot(av);
      if (!(lambda > 0)) break;
      // ||A v - lambda v|| bounds sin(angle to the top eigenvector) times the spectral gap.
      const double resid = (av - lambda * v).norm();
      v = av / av.norm();
      if (resid <= 1e-13 * lambda) return v;
    }
  }
  Eigen::SelfAdjointEigenSolver<MatrixD> es(a);
  return es.eigenvectors().col(n - 1);
}

/// Gram matrix a^T a [D, D] of the rows `a` [n, D] in double; the products are formed in the
/// feature precision over chunks of kScatterChunk rows (lower block triangle only) and summed
/// in double.
template <class T>
MatrixD gram_of_rows(const Matrix<T>& a) {
  const Index n = a.rows(), d = a.cols();
  MatrixD acc = MatrixD::Zero(d, d);
  Matrix<T> part(d, d);
  for (Index r0 = 0; r0 < n; r0 += kScatterChunk) {
    gram_lower(a.middleRows(r0, std::min(kScatterChunk, n - r0)), part);
    add_lower(acc, part);
  }
  mirror_lower(acc);
  return acc;
}

/// `v` normalized and signed so that v . mean >= 0 (ties: largest-magnitude component
/// positive); zero when v is zero.
inline Eigen::VectorXd signed_unit(Eigen::VectorXd v, const Eigen::VectorXd& mean) {
  const double norm = v.norm();
  if (!(norm > 0)) return Eigen::VectorXd::Zero(v.size());
  v /= norm;
  double side = v.dot(mean);
  if (side == 0) {
    Index k;
    v.cwiseAbs().maxCoeff(&k);
    side = v[k];
  }
  return side < 0 ? Eigen::VectorXd(-v) : v;
}

/// First right singular vector of the rows `e` [n, D] (uncentred), signed towards their mean.
template <class T>
Eigen::VectorXd uncentred_pc1(const Matrix<T>& e_in) {
  // The direction does not depend on the scale of the rows: rows whose largest entry is far
  // from 1 (where the Gram matrix, formed in the feature precision, would overflow or lose
  // its smallest products) are scaled by a power of two, exactly. Typical data are untouched.
  const double largest = static_cast<double>(e_in.cwiseAbs().maxCoeff());
  int exponent = 0;
  std::frexp(largest, &exponent);
  const bool rescale = largest > 0 && (exponent > 40 || exponent < -40);
  Matrix<T> scaled;
  if (rescale) scaled = (e_in.template cast<double>() * std::ldexp(1.0, -exponent)).template cast<T>();
  const Matrix<T>& e = rescale ? scaled : e_in;
  const Index n = e.rows(), d = e.cols();
  const Eigen::VectorXd mean = e.template cast<double>().colwise().mean().transpose();
  if (n == 1) return signed_unit(e.row(0).template cast<double>().transpose(), mean);
  if (n < d) {
    // Through the n x n Gram matrix: E E^T u = s^2 u  =>  v = E^T u / s.
    const MatrixD ed = e.template cast<double>();
    const MatrixD g = ed * ed.transpose();
    return signed_unit(ed.transpose() * top_eigenvector(g, ed * mean), mean);
  }
  return signed_unit(top_eigenvector(gram_of_rows(e), mean), mean);
}

template <class L>
std::vector<Index> empty_classes(LabelView<L> y, Index num_classes, std::vector<Index>* start_out,
                                 std::vector<Index>* order_out) {
  std::vector<Index> start(num_classes + 1, 0);
  for (Index i = 0; i < y.size; ++i) ++start[static_cast<Index>(y[i]) + 1];
  std::vector<Index> empty;
  for (Index c = 0; c < num_classes; ++c)
    if (start[c + 1] == 0) empty.push_back(c);
  for (Index c = 0; c < num_classes; ++c) start[c + 1] += start[c];
  if (order_out) {
    std::vector<Index> fill(start.begin(), start.end() - 1);
    order_out->assign(y.size, 0);
    for (Index i = 0; i < y.size; ++i) (*order_out)[fill[static_cast<Index>(y[i])]++] = i;
  }
  if (start_out) *start_out = std::move(start);
  return empty;
}

inline void throw_zero_directions(const std::vector<Index>& zero, const char* why) {
  NC_FAIL("no direction is defined for class(es) " << join_indices(zero) << ": " << why);
}

/// Direction::mean / centered_mean rows [C, D] from class statistics (every class non-empty).
/// Throws when a direction has zero length.
inline MatrixD mean_directions(const ClassStats& s, const DirectionOptions& options) {
  const Index C = s.num_classes();
  MatrixD dirs = s.means();
  Eigen::VectorXd g = Eigen::VectorXd::Zero(s.dim());
  if (options.method == Direction::centered_mean) {
    NC_EXPECTS(C >= 2, "centered_mean needs at least 2 classes, got num_classes = " << C);
    g = options.unweighted_global_mean ? s.mean_of_class_means() : s.global_mean();
  } else {
    NC_EXPECTS(options.method == Direction::mean, "unknown Direction value " << int(options.method));
  }
  std::vector<Index> zero;
  for (Index c = 0; c < C; ++c) {
    // A row within rounding of zero (a class mean at the global mean) has no direction.
    const double scale = dirs.row(c).norm() + g.norm();
    dirs.row(c) -= g.transpose();
    const double n = dirs.row(c).norm();
    if (n > 64 * std::numeric_limits<double>::epsilon() * scale) dirs.row(c) /= n;
    else zero.push_back(c);
  }
  if (!zero.empty())
    throw_zero_directions(zero, options.method == Direction::centered_mean ? "the class mean equals the global mean"
                                                                           : "the class mean is zero");
  return dirs;
}

}  // namespace detail

/// NC directions [C, D] (unit rows, in the feature precision) of `features` [N, D] grouped
/// by `labels` [N]. See the file comment for the methods.
template <class D, class Labels>
Matrix<typename D::Scalar> nc_directions(const Eigen::MatrixBase<D>& features, const Labels& labels,
                                         DirectionOptions options = {}) {
  using T = typename D::Scalar;
  static_assert(detail::is_supported_scalar<T>::value, "features must be float or double");
  const auto y = label_view(labels);
  const ConstRowsRef<T> x(features);
  detail::check_features(x, "features");
  const Index C = detail::resolve_num_classes(y, x.rows(), options.num_classes, "labels");
  const Index d = x.cols();

  std::vector<Index> start, order;
  const std::vector<Index> empty = detail::empty_classes(y, C, &start, &order);
  NC_EXPECTS(empty.empty(), "class(es) " << detail::join_indices(empty)
                                         << " have no samples; every class needs one for its direction");

  MatrixD dirs(C, d);
  if (options.method == Direction::pc1) {
    detail::parallel_for(C, options.threads, [&](Index c) {
      Matrix<T> e(start[c + 1] - start[c], d);
      for (Index k = start[c]; k < start[c + 1]; ++k) e.row(k - start[c]) = x.row(order[k]);
      dirs.row(c) = detail::uncentred_pc1(e).transpose();
    });
  } else {
    dirs = detail::mean_directions(class_stats(x, labels, C, StatsOptions{false, options.threads}), options);
  }
  std::vector<Index> zero;
  for (Index c = 0; c < C; ++c)
    if (!(dirs.row(c).squaredNorm() > 0)) zero.push_back(c);
  if (!zero.empty()) detail::throw_zero_directions(zero, "all of the class's rows are zero");
  return dirs.template cast<T>();
}

}  // namespace nc
