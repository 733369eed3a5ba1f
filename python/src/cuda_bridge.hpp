// ncml Python module: the GPU calls behind the bindings (cuda_bridge.cu, built only when
// ncml is built with CUDA, NCML_PY_WITH_CUDA=1), as plain C++ over raw device pointers.
//
// This header has no CUDA and no pybind11 types: the .cu is compiled by nvcc without the
// Python headers, the bindings by the C++ compiler without the CUDA headers. The stream is a
// cudaStream_t passed as an integer (torch's `torch.cuda.current_stream(device).cuda_stream`)
// and the device as its index; every call makes that device current for its duration and
// restores the caller's device afterwards. Calls are synchronous where the library's are
// (they read the device's input checks and throw nc::error for invalid input, nc::cuda_error
// for CUDA failures); outputs are written into memory the caller allocated on the device.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <nc/core/types.hpp>

// Declared only: the bindings that use them include their headers.
namespace nc {
enum class Direction;
enum class Similarity;
class Perturbation;
struct RetrievalReport;
}  // namespace nc

namespace ncml_py::gpu {

using nc::Index;

/// Where a call runs: a device index and a cudaStream_t on that device, as an integer.
struct Stream {
  int device = 0;
  std::uintptr_t handle = 0;
};

/// Float rows [rows, cols] at a leading dimension `ld` (elements) in device memory.
struct Rows {
  const float* data = nullptr;
  Index rows = 0, cols = 0, ld = 0;
};

/// int32 or int64 labels [size], contiguous, in device memory.
struct Labels {
  const void* data = nullptr;
  bool is_int64 = false;
  Index size = 0;
};

/// Per-class statistics copied back to the host (the parts of nc::ClassStats::from_parts).
struct StatsParts {
  std::vector<int64_t> counts;  // [C]
  std::vector<double> means;    // [C, D] row-major
  std::vector<double> sq_dev;   // [C]
  std::vector<double> scatter;  // [D, D] when requested, else empty
};

/// Counts, means and squared deviations of `x` grouped by `y` in [0, num_classes), and the
/// within-class scatter S_W when `within_scatter` (nc::cuda::class_stats, within_scatter).
StatsParts class_stats(const Stream& s, const Rows& x, const Labels& y, Index num_classes, bool within_scatter);

/// The fields of nc::NC1Result (projected path).
struct NC1Value {
  double value = 0, tolerance = 0;
  Index rank = 0, num_classes_used = 0;
};

/// Projected NC1 of `x` with labels `y` (nc::cuda::nc1). With `counts` [C] and `means`
/// [C, D] (host, row-major: the statistics of these rows) they are uploaded and checked
/// against the labels; with null pointers the statistics are gathered on the device first.
NC1Value nc1(const Stream& s, const Rows& x, const Labels& y, Index num_classes, const int64_t* counts,
             const double* means, double rank_tol, bool unweighted_global_mean);

/// NC directions [C, D] of `x` grouped by `y` into `d_out` (float, contiguous rows).
void nc_directions(const Stream& s, const Rows& x, const Labels& y, Index num_classes, nc::Direction method,
                   bool unweighted_global_mean, float* d_out);

/// The k nearest gallery rows of every query: `d_indices` and `d_scores` [Q, k] (contiguous).
/// Queries and gallery at the same address (and layout) take the symmetric path.
void knn(const Stream& s, const Rows& queries, const Rows& gallery, Index k, nc::Similarity similarity,
         bool exclude_self, int64_t* d_indices, float* d_scores);

/// Leave-one-out (gallery == nullptr) or query-vs-gallery retrieval metrics.
nc::RetrievalReport evaluate_retrieval(const Stream& s, const Rows& queries, const Labels& query_labels,
                                       const Rows* gallery, const Labels* gallery_labels,
                                       const std::vector<int>& ks, nc::Similarity similarity, bool per_class);

/// In-place perturbation of device weights (nc::cuda::DevicePerturbationGuard on the stream):
/// the clean values are saved on the device, the step's noise is added, and restore() (or
/// destruction) copies the clean values back bitwise, in stream order.
class PerturbationGuard {
 public:
  PerturbationGuard(const Stream& s, float* d_w, Index ld, Index rows, Index cols, const nc::Perturbation& p,
                    int64_t step);
  PerturbationGuard(const PerturbationGuard&) = delete;
  PerturbationGuard& operator=(const PerturbationGuard&) = delete;
  ~PerturbationGuard();
  /// Writes the clean values back now (idempotent; reports CUDA failures to stderr).
  void restore() noexcept;
  /// Copies the saved clean values into `d_out` [rows, cols] (contiguous) and waits for them.
  void copy_clean(float* d_out) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ncml_py::gpu
