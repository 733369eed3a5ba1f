// ncml: perturbation injection (the paper's Algorithm 2).
//
// At every update step t each proxy row w_c receives fresh noise eps_{t,c} ~ N(0, sigma_t^2 I);
// the loss and its gradient are taken at the perturbed point and the *clean* weights are
// updated. A scoped guard makes that one line in a training loop:
//
//   nc::Perturbation pert({/*sigma=*/1e-2});
//   for (int64_t t = 0; t < steps; ++t) {
//     nc::LossResult r;
//     {
//       auto guard = pert.perturb(W, t);          // W now holds clean + noise
//       r = nc::proxy_anchor_loss(X, y, W);       // loss and gradient at the perturbed point
//     }                                           // W holds exactly the clean values again
//     W -= eta * r.grad_weights;                  // update the clean weights
//   }
//
// The noise is a pure function of (seed, step, row, column) (Philox4x32-10), so it does not
// depend on threads, and the GPU path draws the same values.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>

#include <Eigen/Core>

#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/rng.hpp"
#include "core/types.hpp"

namespace nc {

enum class Schedule { constant, linear, cosine };

struct PerturbOptions {
  /// Noise standard deviation (the paper: constant, 1e-4 to 1e-2 depending on the data set).
  double sigma = 0;
  /// constant: sigma; linear: sigma (1 - t/T); cosine: sigma (1 + cos(pi t/T)) / 2; zero after T.
  Schedule schedule = Schedule::constant;
  /// T for the decaying schedules (must be positive for linear and cosine).
  int64_t total_steps = 0;
  uint64_t seed = 0;
  /// Threads over rows (0: all available). The noise does not depend on it.
  int threads = 0;
};

/// Scoped perturbation of a weight matrix: holds a copy of the clean values and writes them
/// back (bitwise) when it is destroyed or restore() is called. Move-only.
template <class T>
class PerturbationGuard {
 public:
  PerturbationGuard(Eigen::Ref<Matrix<T>> w, Matrix<T> clean)
      : data_(w.data()), rows_(w.rows()), cols_(w.cols()), stride_(w.outerStride()), clean_(std::move(clean)) {}
  PerturbationGuard(const PerturbationGuard&) = delete;
  PerturbationGuard& operator=(const PerturbationGuard&) = delete;
  PerturbationGuard(PerturbationGuard&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), rows_(o.rows_), cols_(o.cols_), stride_(o.stride_),
        clean_(std::move(o.clean_)) {}
  PerturbationGuard& operator=(PerturbationGuard&&) = delete;
  ~PerturbationGuard() { restore(); }

  /// Writes the clean values back now (idempotent).
  void restore() noexcept {
    if (!data_) return;
    view() = clean_;
    data_ = nullptr;
  }
  /// The clean weights saved when the guard was made.
  const Matrix<T>& clean() const { return clean_; }

 private:
  Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>> view() {
    return {data_, rows_, cols_, Eigen::OuterStride<>(stride_)};
  }
  T* data_;
  Index rows_, cols_, stride_;
  Matrix<T> clean_;
};

class Perturbation {
 public:
  explicit Perturbation(PerturbOptions options) : o_(options) {
    NC_EXPECTS(std::isfinite(o_.sigma) && o_.sigma >= 0,
               "sigma must be finite and non-negative, got " << o_.sigma);
    NC_EXPECTS(o_.schedule == Schedule::constant || o_.total_steps > 0,
               "total_steps must be positive for a linear or cosine schedule, got " << o_.total_steps);
  }

  const PerturbOptions& options() const { return o_; }

  /// Noise standard deviation at `step` (>= 0).
  double sigma_at(int64_t step) const {
    NC_EXPECTS(step >= 0, "step must be non-negative, got " << step);
    if (o_.schedule == Schedule::constant) return o_.sigma;
    const double frac = step >= o_.total_steps ? 1.0 : double(step) / double(o_.total_steps);
    if (o_.schedule == Schedule::linear) return o_.sigma * (1.0 - frac);
    constexpr double pi = 3.14159265358979323846;
    return o_.sigma * 0.5 * (1.0 + std::cos(pi * frac));
  }

  /// The noise sigma_t * eps_{t} [rows, cols] that perturb() adds at `step`.
  template <class T = float>
  Matrix<T> noise(Index rows, Index cols, int64_t step) const {
    NC_EXPECTS(rows > 0 && cols > 0, "noise shape must be positive, got " << rows << " x " << cols);
    const double s = sigma_at(step);
    Matrix<T> e(rows, cols);
    const int threads = detail::resolve_threads(o_.threads);
    (void)threads;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (Index r = 0; r < rows; ++r) {
      double g[4];
      for (Index j = 0; j < cols; ++j) {
        if (j % 4 == 0) gaussian4(o_.seed, uint64_t(step), uint64_t(r), uint64_t(j / 4), g);
        e(r, j) = static_cast<T>(s * g[j % 4]);
      }
    }
    return e;
  }

  /// Adds the step's noise to every row of `w` (a matrix, a block or a Map over caller memory)
  /// and returns the guard that restores the clean values.
  [[nodiscard]] PerturbationGuard<float> perturb(Eigen::Ref<MatrixF> w, int64_t step) const {
    return perturb_impl<float>(w, step);
  }
  [[nodiscard]] PerturbationGuard<double> perturb(Eigen::Ref<MatrixD> w, int64_t step) const {
    return perturb_impl<double>(w, step);
  }

 private:
  template <class T>
  PerturbationGuard<T> perturb_impl(Eigen::Ref<Matrix<T>> w, int64_t step) const {
    Matrix<T> e = noise<T>(w.rows(), w.cols(), step);  // validates before anything is written
    Matrix<T> clean = w;
    w += e;
    return PerturbationGuard<T>(w, std::move(clean));
  }

  PerturbOptions o_;
};

}  // namespace nc
