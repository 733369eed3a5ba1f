// ncml GPU path: perturbation injection (the paper's Algorithm 2) on device weights.
//
//   nc::Perturbation pert({/*sigma=*/1e-2});
//   {
//     nc::cuda::DevicePerturbationGuard guard(d_W, ldw, C, D, pert, step, stream);
//     ... loss and gradient at the perturbed weights ...
//   }                                           // d_W holds exactly the clean values again
//
// The noise is that of nc::Perturbation::noise on the CPU: the same Philox stream keyed by
// (seed, step, row, column), transformed in float64 and rounded to float, so it agrees with
// the CPU to the last bit except where the device's float64 log/sin/cos round differently
// (then by one float ulp at most).
#pragma once

#include <ncml_perturb.cuh>

#include "../perturb.hpp"
#include "common.cuh"

namespace nc::cuda {

namespace detail {
inline void launch_perturb(float* d_w, Index ldw, Index rows, Index cols, const Perturbation& p,
                           int64_t step, int add, cudaStream_t stream) {
  NC_EXPECTS(rows > 0 && cols > 0, "noise shape must be positive, got " << rows << " x " << cols);
  NC_EXPECTS(ldw >= cols, "leading dimension " << ldw << " is smaller than cols = " << cols);
  NC_EXPECTS(d_w != nullptr, "the weights are a null device pointer");
  const double sigma = p.sigma_at(step);  // validates step
  const long long quads = (cols + 3) / 4;
  kernels::perturb_rows<<<wide_grid(rows * quads, 256), 256, 0, stream>>>(
      d_w, ldw, rows, cols, p.options().seed, static_cast<unsigned long long>(step), sigma, add);
  NC_CUDA_CHECK_LAUNCH();
}
}  // namespace detail

/// d_w [rows, cols] (leading dimension ldw) += the noise of `p` at `step`. Asynchronous.
inline void perturb_async(float* d_w, Index ldw, Index rows, Index cols, const Perturbation& p,
                          int64_t step, cudaStream_t stream = 0) {
  detail::launch_perturb(d_w, ldw, rows, cols, p, step, 1, stream);
}

/// d_out [rows, cols] = the noise of `p` at `step` (Perturbation::noise). Asynchronous.
inline void noise_async(float* d_out, Index ldo, Index rows, Index cols, const Perturbation& p,
                        int64_t step, cudaStream_t stream = 0) {
  detail::launch_perturb(d_out, ldo, rows, cols, p, step, 0, stream);
}

/// Scoped perturbation of device weights: keeps a copy of the clean values (from `alloc`),
/// adds the noise, and copies the clean values back (bitwise) on restore() or destruction,
/// in stream order. Move-only.
class DevicePerturbationGuard {
 public:
  DevicePerturbationGuard(float* d_w, Index ldw, Index rows, Index cols, const Perturbation& p,
                          int64_t step, cudaStream_t stream = 0,
                          DeviceAllocator& alloc = default_allocator())
      : w_(d_w), ldw_(ldw), rows_(rows), cols_(cols), stream_(stream),
        clean_(static_cast<std::size_t>(rows) * cols, stream, alloc) {
    NC_EXPECTS(ldw >= cols && rows > 0 && cols > 0 && d_w, "invalid weights for the perturbation guard");
    NC_CUDA_TRY(cudaMemcpy2DAsync(clean_.data(), cols * sizeof(float), w_, ldw * sizeof(float),
                                  cols * sizeof(float), rows, cudaMemcpyDeviceToDevice, stream));
    perturb_async(w_, ldw, rows, cols, p, step, stream);
  }
  DevicePerturbationGuard(const DevicePerturbationGuard&) = delete;
  DevicePerturbationGuard& operator=(const DevicePerturbationGuard&) = delete;
  DevicePerturbationGuard(DevicePerturbationGuard&& o) noexcept
      : w_(std::exchange(o.w_, nullptr)), ldw_(o.ldw_), rows_(o.rows_), cols_(o.cols_),
        stream_(o.stream_), clean_(std::move(o.clean_)) {}
  DevicePerturbationGuard& operator=(DevicePerturbationGuard&&) = delete;
  ~DevicePerturbationGuard() { restore(); }

  /// Copies the clean values back now (idempotent; stream-ordered).
  void restore() noexcept {
    if (!w_) return;
    NC_CUDA_TRY_NO_THROW(cudaMemcpy2DAsync(w_, ldw_ * sizeof(float), clean_.data(), cols_ * sizeof(float),
                                           cols_ * sizeof(float), rows_, cudaMemcpyDeviceToDevice, stream_));
    w_ = nullptr;
  }
  /// The clean weights [rows, cols] (contiguous, device).
  const float* clean() const { return clean_.data(); }

 private:
  float* w_;
  Index ldw_, rows_, cols_;
  cudaStream_t stream_;
  DeviceBuffer<float> clean_;
};

/// The noise of `p` at `step` [rows, cols], drawn on the GPU and copied to the host.
inline MatrixF noise(const Perturbation& p, Index rows, Index cols, int64_t step, cudaStream_t stream = 0) {
  NC_EXPECTS(rows > 0 && cols > 0, "noise shape must be positive, got " << rows << " x " << cols);
  DeviceBuffer<float> d(static_cast<std::size_t>(rows) * cols, stream);
  noise_async(d.data(), cols, rows, cols, p, step, stream);
  MatrixF out(rows, cols);
  NC_CUDA_TRY(cudaMemcpyAsync(out.data(), d.data(), d.size() * sizeof(float), cudaMemcpyDeviceToHost, stream));
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  return out;
}

}  // namespace nc::cuda
