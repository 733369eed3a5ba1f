// ncml: classifier-head / proxy initialization.
//
//   nc::MatrixF W = nc::init_head(features, labels);          // [C, D], NC-Init (paper, Alg. 1)
//   nc::MatrixF P = nc::init_head(C, D, {nc::HeadInit::kaiming_normal, 1.0, seed});
//
// Data-driven methods (need features and labels):
//   nc_pc1         unit first principal direction of each class's uncentred embeddings (default)
//   class_mean     unit class mean
//   centered_mean  unit (class mean - global mean)
//   aligned_etf    a simplex ETF rotated (orthogonal Procrustes) to best match the nc_pc1
//                  directions: max_U sum_c <etf_c U^T, v_c>, needs D >= C - 1
// Data-free methods (the (C, D) overload, or ignore the data):
//   simplex_etf    C unit rows with pairwise cosine -1/(C-1) in a random (seeded) (C-1)-dim
//                  subspace, needs D >= C - 1
//   kaiming_normal N(0, 2/C) entries: torch.nn.init.kaiming_normal_(mode='fan_out') on a [C, D]
//                  tensor, as in the Proxy-Anchor reference code
//   xavier_uniform U(-b, b), b = sqrt(6 / (C + D))
// Every method multiplies its result by `scale` (unit-row methods get rows of norm `scale`).
#pragma once

#include <cmath>
#include <limits>
#include <cstdint>

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>

#include "core/check.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/types.hpp"
#include "directions.hpp"

namespace nc {

enum class HeadInit { nc_pc1, class_mean, centered_mean, simplex_etf, aligned_etf, kaiming_normal, xavier_uniform };

struct HeadOptions {
  HeadInit method = HeadInit::nc_pc1;
  double scale = 1.0;
  uint64_t seed = 0;
  /// Number of classes; -1 means max(label) + 1.
  Index num_classes = -1;
  /// Threads over classes for the data-driven methods (0: all available).
  int threads = 0;
};

/// True for the methods that need features and labels.
inline bool head_needs_data(HeadInit m) {
  return m == HeadInit::nc_pc1 || m == HeadInit::class_mean || m == HeadInit::centered_mean ||
         m == HeadInit::aligned_etf;
}

inline const char* to_string(HeadInit m) {
  switch (m) {
    case HeadInit::nc_pc1: return "nc_pc1";
    case HeadInit::class_mean: return "class_mean";
    case HeadInit::centered_mean: return "centered_mean";
    case HeadInit::simplex_etf: return "simplex_etf";
    case HeadInit::aligned_etf: return "aligned_etf";
    case HeadInit::kaiming_normal: return "kaiming_normal";
    case HeadInit::xavier_uniform: return "xavier_uniform";
  }
  return "unknown";
}

namespace detail {

// Random streams of the head initializers live at steps >= 2^63, disjoint from the
// perturbation steps (non-negative int64), so a head and its noise never share draws.
constexpr uint64_t kHeadStream = uint64_t(1) << 63;

/// Simplex ETF coordinates [C, C-1]: sqrt(C/(C-1)) times an orthonormal (Helmert) basis of the
/// complement of the all-ones vector, so rows are unit with pairwise inner product -1/(C-1).
inline MatrixD simplex_coordinates(Index C) {
  MatrixD e = MatrixD::Zero(C, C - 1);
  for (Index k = 1; k < C; ++k) {
    const double inv = 1.0 / std::sqrt(double(k) * double(k + 1));
    for (Index i = 0; i < k; ++i) e(i, k - 1) = inv;
    e(k, k - 1) = -double(k) * inv;
  }
  return e * std::sqrt(double(C) / double(C - 1));
}

/// Random D x m matrix with orthonormal columns (Householder QR of a seeded Gaussian matrix).
inline MatrixD random_orthonormal(Index d, Index m, uint64_t seed) {
  Eigen::MatrixXd g(d, m);
  for (Index i = 0; i < d; ++i)
    for (Index j = 0; j < m; ++j) g(i, j) = gaussian(seed, kHeadStream | 1, uint64_t(i), uint64_t(j));
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(d, m);
  // Fix the sign ambiguity of QR so the result is Haar-distributed.
  const Eigen::MatrixXd r = qr.matrixQR().topRows(m).triangularView<Eigen::Upper>();
  for (Index j = 0; j < m; ++j)
    if (r(j, j) < 0) q.col(j) = -q.col(j);
  return q;
}

inline void check_etf_shape(Index C, Index d, HeadInit m) {
  NC_EXPECTS(C >= 2, to_string(m) << " needs at least 2 classes, got num_classes = " << C);
  NC_EXPECTS(d >= C - 1, to_string(m) << " needs dim >= num_classes - 1 (a simplex of C points spans C - 1 "
                                      << "dimensions), got dim = " << d << ", num_classes = " << C);
}

inline MatrixD data_free_head(Index C, Index d, const HeadOptions& o) {
  switch (o.method) {
    case HeadInit::simplex_etf: {
      check_etf_shape(C, d, o.method);
      return simplex_coordinates(C) * random_orthonormal(d, C - 1, o.seed).transpose();
    }
    case HeadInit::kaiming_normal: {
      const double std_dev = std::sqrt(2.0 / double(C));
      MatrixD w(C, d);
      for (Index c = 0; c < C; ++c)
        for (Index j = 0; j < d; ++j) w(c, j) = std_dev * gaussian(o.seed, kHeadStream | 2, uint64_t(c), uint64_t(j));
      return w;
    }
    case HeadInit::xavier_uniform: {
      const double b = std::sqrt(6.0 / double(C + d));
      MatrixD w(C, d);
      for (Index c = 0; c < C; ++c)
        for (Index j = 0; j < d; ++j)
          w(c, j) = b * (2.0 * uniform(o.seed, kHeadStream | 3, uint64_t(c), uint64_t(j)) - 1.0);
      return w;
    }
    default:
      NC_FAIL("init_head: method " << to_string(o.method)
                                   << " needs features and labels; call init_head(features, labels, options)");
  }
}

/// The simplex ETF [C, D] rotated to best match the unit directions `v` [C, D]:
/// max_U tr(E U^T V^T) over U^T U = I is U = P Q^T for the SVD V^T E = P S Q^T.
inline MatrixD align_etf(const MatrixD& v, Index d) {
  const Index C = v.rows();
  check_etf_shape(C, d, HeadInit::aligned_etf);
  const MatrixD e = simplex_coordinates(C);
  Eigen::BDCSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(v.transpose() * e), Eigen::ComputeThinU | Eigen::ComputeThinV);
  return e * (svd.matrixU() * svd.matrixV().transpose()).transpose();
}

inline void check_head_options(const HeadOptions& o) {
  NC_EXPECTS(std::isfinite(o.scale) && o.scale > 0, "scale must be positive and finite, got " << o.scale);
}

/// w * scale in float; throws when an entry leaves the float range (a huge scale).
inline MatrixF scaled_head(const MatrixD& w, double scale) {
  const double largest = w.cwiseAbs().maxCoeff() * scale;
  NC_EXPECTS(largest <= double(std::numeric_limits<float>::max()),
             "scale = " << scale << " makes the head overflow float (largest entry " << largest << ")");
  return (w * scale).cast<float>();
}

}  // namespace detail

/// Head [C, D] for the data-free methods (simplex_etf, kaiming_normal, xavier_uniform).
inline MatrixF init_head(Index num_classes, Index dim, HeadOptions options) {
  detail::check_head_options(options);
  NC_EXPECTS(num_classes > 0, "num_classes must be positive, got " << num_classes);
  NC_EXPECTS(dim > 0, "dim must be positive, got " << dim);
  NC_EXPECTS(options.num_classes == -1 || options.num_classes == num_classes,
             "options.num_classes = " << options.num_classes << " disagrees with num_classes = " << num_classes);
  return detail::scaled_head(detail::data_free_head(num_classes, dim, options), options.scale);
}

/// Head [C, D] (float) from `features` [N, D] and `labels` [N]; defaults to NC-Init (nc_pc1).
template <class D, class Labels>
MatrixF init_head(const Eigen::MatrixBase<D>& features, const Labels& labels, HeadOptions options = {}) {
  using T = typename D::Scalar;
  static_assert(detail::is_supported_scalar<T>::value, "features must be float or double");
  detail::check_head_options(options);
  const auto y = label_view(labels);
  const ConstRowsRef<T> x(features);
  detail::check_features(x, "features");
  const Index C = detail::resolve_num_classes(y, x.rows(), options.num_classes, "labels");
  const Index d = x.cols();

  MatrixD w;
  DirectionOptions dopt;
  dopt.num_classes = C;
  dopt.threads = options.threads;
  switch (options.method) {
    case HeadInit::nc_pc1:
    case HeadInit::class_mean:
    case HeadInit::centered_mean:
      dopt.method = options.method == HeadInit::nc_pc1       ? Direction::pc1
                    : options.method == HeadInit::class_mean ? Direction::mean
                                                             : Direction::centered_mean;
      w = nc_directions(x, labels, dopt).template cast<double>();
      break;
    case HeadInit::aligned_etf:
      detail::check_etf_shape(C, d, options.method);
      w = detail::align_etf(nc_directions(x, labels, dopt).template cast<double>(), d);
      break;
    default:
      w = detail::data_free_head(C, d, options);
  }
  return detail::scaled_head(w, options.scale);
}

}  // namespace nc
