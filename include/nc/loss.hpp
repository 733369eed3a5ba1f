// ncml: the two proxy losses of the paper, with analytic gradients.
//
// Shapes: embeddings X [B, D], labels y [B] in [0, C), class weights / proxies W [C, D].
// Both losses compare unit vectors, x~_i = x_i / ||x_i|| and w~_c = w_c / ||w_c||, through the
// cosine matrix S = X~ W~^T [B, C]:
//
//   Norm-Softmax (Zhai & Wu 2019), temperature tau (default 0.05):
//     L = (1/B) sum_i [ log sum_c exp(S_ic / tau) - S_{i,y_i} / tau ]
//
//   Proxy-Anchor (Kim et al., CVPR 2020), scale alpha (default 32), margin delta (default 0.1):
//     L = (1/|P+|) sum_{c in P+} log(1 + sum_{i: y_i = c}  exp(-alpha (S_ic - delta)))
//       + (1/C)    sum_{c = 0}^{C-1} log(1 + sum_{i: y_i != c} exp( alpha (S_ic + delta)))
//     P+ is the set of classes with at least one sample in the batch. The negative term is
//     divided by the number of classes C, not by the classes it has terms for, as in the
//     authors' reference code (Proxy-Anchor-CVPR2020, code/losses.py: neg_term = ... /
//     nb_classes); that code adds 1e-12 to the squared norms, which is left out here.
//
// The gradients are with respect to the raw (unnormalized) X and W, through the
// normalizations: d(v / ||v||) = (I - v~ v~^T) / ||v||. Everything is computed in float64
// (one GEMM for S, two for the back-propagation); log-sum-exp terms are shifted by their
// maximum, so large alpha or small tau do not overflow. The result scalar follows the inputs
// (float in, float gradients out; double in, double out).
//
// Perturbation injection (the paper's Algorithm 2): the loss and its gradient are taken at the
// perturbed proxies and applied to the clean ones, so compute the loss inside the guard's
// scope and update W after the guard has restored it:
//
//   nc::Perturbation pert({/*sigma=*/1e-2});
//   for (int64_t t = 0; t < steps; ++t) {
//     nc::LossResult r;
//     {
//       auto guard = pert.perturb(W, t);             // W [C, D] holds clean + noise
//       r = nc::proxy_anchor_loss(X, y, W);          // gradient at the perturbed point
//     }                                              // W holds exactly the clean values again
//     W -= eta * r.grad_weights;                     // update the clean weights
//     // r.grad_embeddings [B, D] goes on to the caller's network
//   }
//
// Invalid input (non-finite or empty matrices, different D, wrong label count or a label
// outside [0, C), a zero row, tau <= 0, alpha <= 0, non-finite delta) throws nc::error before
// any work is done.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "core/check.hpp"
#include "core/error.hpp"
#include "core/types.hpp"

namespace nc {

/// A loss value and its gradients; the gradients have the shapes of the inputs.
template <class T>
struct LossResultT {
  double loss = 0;
  Matrix<T> grad_embeddings;  // [B, D]
  Matrix<T> grad_weights;     // [C, D]
};
using LossResult = LossResultT<float>;
using LossResultD = LossResultT<double>;

namespace detail {

/// Unit rows of a validated matrix, in float64, with the row norms kept for the backward pass.
struct UnitRows {
  MatrixD unit;          // [n, D]
  Eigen::VectorXd norm;  // [n]
};

template <class D>
UnitRows unit_rows(const Eigen::MatrixBase<D>& m, const char* name) {
  UnitRows u;
  u.unit = m.template cast<double>();
  // stableNorm: a row of tiny (or huge) doubles is not mistaken for a zero (or infinite) one.
  u.norm = u.unit.rowwise().stableNorm();
  std::vector<Index> zero;
  for (Index r = 0; r < u.norm.size(); ++r)
    if (!(u.norm[r] > 0)) zero.push_back(r);
  NC_EXPECTS(zero.empty(), name << " has zero row(s) " << join_indices(zero)
                                << "; the direction of a zero vector is undefined");
  u.unit.array().colwise() /= u.norm.array();
  return u;
}

/// Back-propagates g = dL/dv~ [n, D] through v~ = v / ||v||: (g - (g . v~) v~) / ||v||.
inline MatrixD through_normalization(const MatrixD& g, const UnitRows& u) {
  const Eigen::VectorXd radial = g.cwiseProduct(u.unit).rowwise().sum();
  MatrixD out = g - (u.unit.array().colwise() * radial.array()).matrix();
  out.array().colwise() /= u.norm.array();
  return out;
}

struct LossInputs {
  UnitRows x, w;
  std::vector<Index> y;
};

/// Validates embeddings, labels and weights (in that order) and normalizes the rows.
template <class DX, class Labels, class DW>
LossInputs prepare_loss(const Eigen::MatrixBase<DX>& embeddings, const Labels& labels,
                        const Eigen::MatrixBase<DW>& w, const char* w_name) {
  using TX = typename DX::Scalar;
  using TW = typename DW::Scalar;
  static_assert(is_supported_scalar<TX>::value, "embeddings must be float or double");
  static_assert(std::is_same<TX, TW>::value, "embeddings and weights must have the same scalar type");
  check_features(embeddings, "embeddings");
  check_features(w, w_name);
  NC_EXPECTS(embeddings.cols() == w.cols(),
             "dimension mismatch: embeddings have " << embeddings.cols() << " columns, " << w_name
                                                    << " has " << w.cols());
  const auto lv = label_view(labels);
  check_labels(lv, embeddings.rows(), w.rows(), "labels");
  LossInputs in;
  in.y.resize(static_cast<std::size_t>(lv.size));
  for (Index i = 0; i < lv.size; ++i) in.y[i] = static_cast<Index>(lv[i]);
  in.x = unit_rows(embeddings, "embeddings");
  in.w = unit_rows(w, w_name);
  return in;
}

/// Turns dL/dS [B, C] into the gradients with respect to the raw inputs.
template <class T>
LossResultT<T> finish_loss(double loss, const MatrixD& g_sim, const LossInputs& in) {
  LossResultT<T> r;
  r.loss = loss;
  r.grad_embeddings = through_normalization(g_sim * in.w.unit, in.x).template cast<T>();
  r.grad_weights = through_normalization(g_sim.transpose() * in.x.unit, in.w).template cast<T>();
  return r;
}

}  // namespace detail

/// Norm-Softmax loss (cross-entropy over cosine logits / tau), mean over the batch.
/// embeddings [B, D], labels [B] in [0, C), W [C, D]; float or double (the same for both).
template <class DX, class Labels, class DW>
LossResultT<typename DX::Scalar> norm_softmax_loss(const Eigen::MatrixBase<DX>& embeddings, const Labels& labels,
                                                   const Eigen::MatrixBase<DW>& W, double tau = 0.05) {
  NC_EXPECTS(std::isfinite(tau) && tau > 0, "tau must be positive and finite, got tau = " << tau);
  const auto in = detail::prepare_loss(embeddings, labels, W, "W");
  const Index B = in.x.unit.rows();

  MatrixD z = (in.x.unit * in.w.unit.transpose()) / tau;  // logits [B, C]
  const Eigen::VectorXd zmax = z.rowwise().maxCoeff();
  z.array().colwise() -= zmax.array();
  // -log softmax_y = log sum_c exp(z_c - zmax) - (z_y - zmax), read before exp can underflow.
  double loss = 0;
  for (Index i = 0; i < B; ++i) loss -= z(i, in.y[i]);
  z = z.array().exp().matrix();
  const Eigen::VectorXd sum = z.rowwise().sum();  // >= 1: the row maximum contributes exp(0)
  loss = (loss + sum.array().log().sum()) / double(B);

  // dL/dlogits = (softmax - onehot) / B; dL/dS = that / tau.
  z.array().colwise() /= sum.array();
  for (Index i = 0; i < B; ++i) z(i, in.y[i]) -= 1.0;
  z /= double(B) * tau;
  return detail::finish_loss<typename DX::Scalar>(loss, z, in);
}

/// Proxy-Anchor loss (Kim et al. 2020), normalized as in the authors' reference code (see the
/// file comment). embeddings [B, D], labels [B] in [0, C), P [C, D]; float or double.
template <class DX, class Labels, class DW>
LossResultT<typename DX::Scalar> proxy_anchor_loss(const Eigen::MatrixBase<DX>& embeddings, const Labels& labels,
                                                   const Eigen::MatrixBase<DW>& P, double alpha = 32,
                                                   double delta = 0.1) {
  NC_EXPECTS(std::isfinite(alpha) && alpha > 0, "alpha must be positive and finite, got alpha = " << alpha);
  NC_EXPECTS(std::isfinite(delta), "delta must be finite, got delta = " << delta);
  const auto in = detail::prepare_loss(embeddings, labels, P, "P");
  const Index B = in.x.unit.rows(), C = in.w.unit.rows();
  const MatrixD s = in.x.unit * in.w.unit.transpose();  // cosines [B, C]

  // Each term is softplus(logsumexp(z)) = m + log(exp(-m) + sum exp(z - m)) with
  // m = max(0, max z), exact and overflow-free. The positive term has one entry per row.
  Eigen::VectorXd zpos(B), pos_max = Eigen::VectorXd::Zero(C);
  std::vector<char> has_pos(static_cast<std::size_t>(C), 0);
  for (Index i = 0; i < B; ++i) {
    const Index c = in.y[i];
    zpos[i] = -alpha * (s(i, c) - delta);
    pos_max[c] = std::max(pos_max[c], zpos[i]);
    has_pos[c] = 1;
  }
  Eigen::VectorXd pos_den = (-pos_max).array().exp();
  for (Index i = 0; i < B; ++i) {
    zpos[i] = std::exp(zpos[i] - pos_max[in.y[i]]);
    pos_den[in.y[i]] += zpos[i];
  }
  Index num_pos = 0;
  double pos_term = 0;
  for (Index c = 0; c < C; ++c) {
    if (!has_pos[c]) continue;
    ++num_pos;
    pos_term += pos_max[c] + std::log(pos_den[c]);
  }

  // Negatives: every (i, c) with y_i != c. The positive entries are excluded from the column
  // maximum by the lowest double and zeroed after the exponential.
  MatrixD zneg = alpha * (s.array() + delta).matrix();
  for (Index i = 0; i < B; ++i) zneg(i, in.y[i]) = std::numeric_limits<double>::lowest();
  const Eigen::RowVectorXd neg_max = zneg.colwise().maxCoeff().cwiseMax(0.0);
  zneg.array().rowwise() -= neg_max.array();
  zneg = zneg.array().exp().matrix();
  for (Index i = 0; i < B; ++i) zneg(i, in.y[i]) = 0.0;
  const Eigen::RowVectorXd neg_den = (-neg_max).array().exp().matrix() + zneg.colwise().sum();
  const double neg_term = (neg_max.array() + neg_den.array().log()).sum();

  const double loss = pos_term / double(num_pos) + neg_term / double(C);

  // dL/dS: alpha exp(z - m) / den / C on negatives, -alpha exp(z - m) / den / |P+| on positives.
  MatrixD g = zneg;
  g.array().rowwise() /= neg_den.array();
  g *= alpha / double(C);
  for (Index i = 0; i < B; ++i) {
    const Index c = in.y[i];
    g(i, c) = -alpha * zpos[i] / pos_den[c] / double(num_pos);
  }
  return detail::finish_loss<typename DX::Scalar>(loss, g, in);
}

}  // namespace nc
