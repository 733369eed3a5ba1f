// ncml: drift of a classifier head from reference directions (the paper's Definition 1).
//
//   nc::DriftTracker drift(nc::nc_directions(features, labels));   // reference v_c [C, D]
//   drift.update(W);                                               // after each step or epoch
//   drift.mean_squared_distance();   // (1/C) sum_c || w_c/||w_c|| - v_c/||v_c|| ||^2, in [0, 4]
//
// A random head in high dimension sits near 2 (nearly orthogonal unit vectors), an NC-Init
// head at 0. from_initial() = ||W_t - W_0||_F / ||W_0||_F and path_length() = sum_t ||W_{t+1} - W_t||_F.
#pragma once

#include <cmath>
#include <vector>

#include <Eigen/Core>

#include "core/check.hpp"
#include "core/error.hpp"
#include "core/types.hpp"

namespace nc {

class DriftTracker {
 public:
  /// `reference` [C, D]: one direction per class (normalized here; rows must be nonzero).
  explicit DriftTracker(const MatrixF& reference) {
    detail::check_features(reference, "reference");
    ref_ = reference.cast<double>();
    std::vector<Index> zero;
    for (Index c = 0; c < ref_.rows(); ++c) {
      const double n = ref_.row(c).norm();
      if (n > 0) ref_.row(c) /= n; else zero.push_back(c);
    }
    NC_EXPECTS(zero.empty(), "reference rows " << detail::join_indices(zero) << " are zero");
  }

  /// Records the head `w` [C, D] (same shape as the reference; rows must be nonzero).
  void update(const MatrixF& w) {
    NC_EXPECTS(w.rows() == ref_.rows() && w.cols() == ref_.cols(),
               "W is " << w.rows() << " x " << w.cols() << ", expected " << ref_.rows() << " x " << ref_.cols());
    detail::check_features(w, "W");
    Eigen::VectorXd dist(ref_.rows());
    std::vector<Index> zero;
    for (Index c = 0; c < ref_.rows(); ++c) {
      const Eigen::RowVectorXd row = w.row(c).cast<double>();
      const double n = row.norm();
      if (!(n > 0)) { zero.push_back(c); continue; }
      dist[c] = (row / n - ref_.row(c)).squaredNorm();
    }
    NC_EXPECTS(zero.empty(), "W rows " << detail::join_indices(zero) << " are zero; their direction is undefined");
    if (steps_ == 0) {
      initial_ = w.cast<double>();
    } else {
      path_ += (w.cast<double>() - last_).norm();
    }
    last_ = w.cast<double>();
    per_class_ = dist;
    ++steps_;
  }

  /// The paper's D: mean over classes of the squared distance of unit rows [0, 4].
  double mean_squared_distance() const { require_update(); return per_class_.mean(); }
  /// Squared distance per class [C].
  Eigen::VectorXd per_class() const { require_update(); return per_class_; }
  /// ||W_t - W_0||_F / ||W_0||_F for the latest W_t and the first recorded W_0.
  double from_initial() const { require_update(); return (last_ - initial_).norm() / initial_.norm(); }
  /// sum over recorded steps of ||W_{t+1} - W_t||_F.
  double path_length() const { require_update(); return path_; }
  /// Number of update() calls so far.
  int64_t num_updates() const { return steps_; }
  /// The unit reference directions [C, D].
  const MatrixD& reference() const { return ref_; }

 private:
  void require_update() const {
    NC_EXPECTS(steps_ > 0, "DriftTracker: no head recorded yet; call update(W) first");
  }
  MatrixD ref_, initial_, last_;
  Eigen::VectorXd per_class_;
  double path_ = 0;
  int64_t steps_ = 0;
};

}  // namespace nc
