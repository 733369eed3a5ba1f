// ncml Python module: the GPU calls behind the bindings (declared in cuda_bridge.hpp), over
// the nc::cuda API on raw device pointers. No Python here: the bindings hand over device
// pointers from torch tensors, the device index and torch's current stream.
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <nc/cuda/directions.cuh>
#include <nc/cuda/knn.cuh>
#include <nc/cuda/nc1.cuh>
#include <nc/cuda/perturb.cuh>
#include <nc/cuda/retrieval.cuh>
#include <nc/cuda/stats.cuh>

#include "cuda_bridge.hpp"

namespace ncml_py::gpu {
namespace {

using nc::cuda::DeviceBuffer;

cudaStream_t stream_of(const Stream& s) { return reinterpret_cast<cudaStream_t>(s.handle); }

/// Makes `device` current for a call and puts the caller's device back afterwards (torch
/// keeps its own notion of the current device; a call must not change it).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    NC_CUDA_TRY(cudaGetDevice(&previous_));
    if (device != previous_) NC_CUDA_TRY(cudaSetDevice(device));
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  ~DeviceScope() { NC_CUDA_TRY_NO_THROW(cudaSetDevice(previous_)); }

 private:
  int previous_ = 0;
};

/// Calls f with the labels as a typed device pointer (int32 or int64).
template <class F>
decltype(auto) with_labels(const Labels& y, F&& f) {
  if (y.is_int64) return f(static_cast<const int64_t*>(y.data));
  return f(static_cast<const int32_t*>(y.data));
}

template <class T>
void download(std::vector<T>& out, const T* d, std::size_t count, cudaStream_t stream) {
  out.resize(count);
  nc::cuda::detail::download(out.data(), d, count, stream);
}

}  // namespace

StatsParts class_stats(const Stream& s, const Rows& x, const Labels& y, Index num_classes, bool within_scatter) {
  const DeviceScope device(s.device);
  const cudaStream_t stream = stream_of(s);
  const Index C = num_classes, d = x.cols;
  NC_EXPECTS(C > 0, "num_classes must be positive, got " << C);
  static_assert(sizeof(long long) == sizeof(int64_t), "int64 counts");
  DeviceBuffer<long long> counts(static_cast<std::size_t>(C), stream);
  DeviceBuffer<double> means(static_cast<std::size_t>(C) * d, stream);
  DeviceBuffer<double> sq_dev(static_cast<std::size_t>(C), stream);
  DeviceBuffer<double> scatter;
  with_labels(y, [&](const auto* labels) {
    nc::cuda::class_stats(x.data, x.ld, labels, x.rows, d, C,
                          nc::cuda::ClassStatsOutput{counts.data(), means.data(), d, sq_dev.data()}, {}, stream);
    if (within_scatter) {
      scatter = DeviceBuffer<double>(static_cast<std::size_t>(d) * d, stream);
      nc::cuda::within_scatter(x.data, x.ld, labels, x.rows, d, C, means.data(), d, scatter.data(), d, {}, stream);
    }
  });
  StatsParts r;
  r.counts.resize(static_cast<std::size_t>(C));
  nc::cuda::detail::download(reinterpret_cast<long long*>(r.counts.data()), counts.data(), counts.size(), stream);
  download(r.means, means.data(), means.size(), stream);
  download(r.sq_dev, sq_dev.data(), sq_dev.size(), stream);
  if (within_scatter) download(r.scatter, scatter.data(), scatter.size(), stream);
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  return r;
}

NC1Value nc1(const Stream& s, const Rows& x, const Labels& y, Index num_classes, const int64_t* counts,
             const double* means, double rank_tol, bool unweighted_global_mean) {
  const DeviceScope device(s.device);
  const cudaStream_t stream = stream_of(s);
  const Index C = num_classes, d = x.cols;
  NC_EXPECTS(C > 0, "num_classes must be positive, got " << C);
  DeviceBuffer<long long> d_counts(static_cast<std::size_t>(C), stream);
  DeviceBuffer<double> d_means(static_cast<std::size_t>(C) * d, stream);
  nc::cuda::NC1Options o;
  o.rank_tol = rank_tol;
  o.unweighted_global_mean = unweighted_global_mean;
  const nc::cuda::NC1Result r = with_labels(y, [&](const auto* labels) {
    if (counts) {
      // The caller's statistics (small: C + C x D values); the device compares their counts
      // with the labels.
      nc::cuda::detail::upload(d_counts.data(), reinterpret_cast<const long long*>(counts), d_counts.size(), stream);
      nc::cuda::detail::upload(d_means.data(), means, d_means.size(), stream);
    } else {
      DeviceBuffer<double> sq_dev(static_cast<std::size_t>(C), stream);
      nc::cuda::class_stats(x.data, x.ld, labels, x.rows, d, C,
                            nc::cuda::ClassStatsOutput{d_counts.data(), d_means.data(), d, sq_dev.data()}, {},
                            stream);
    }
    return nc::cuda::nc1(x.data, x.ld, labels, x.rows, d, C, d_counts.data(), d_means.data(), d, o, stream);
  });
  NC1Value v;
  v.value = r.value;
  v.tolerance = r.tolerance;
  v.rank = r.rank;
  v.num_classes_used = r.num_classes_used;
  return v;
}

void nc_directions(const Stream& s, const Rows& x, const Labels& y, Index num_classes, nc::Direction method,
                   bool unweighted_global_mean, float* d_out) {
  const DeviceScope device(s.device);
  nc::cuda::DirectionOptions o;
  o.method = method;
  o.unweighted_global_mean = unweighted_global_mean;
  with_labels(y, [&](const auto* labels) {
    nc::cuda::nc_directions(x.data, x.ld, labels, x.rows, x.cols, num_classes, d_out, x.cols, o, stream_of(s));
  });
}

void knn(const Stream& s, const Rows& queries, const Rows& gallery, Index k, nc::Similarity similarity,
         bool exclude_self, int64_t* d_indices, float* d_scores) {
  const DeviceScope device(s.device);
  nc::cuda::KnnOptions o;
  o.similarity = similarity;
  o.exclude_self = exclude_self;
  nc::cuda::knn(queries.data, queries.ld, queries.rows, gallery.data, gallery.ld, gallery.rows, queries.cols, k,
                d_indices, k, d_scores, k, o, stream_of(s));
}

nc::RetrievalReport evaluate_retrieval(const Stream& s, const Rows& queries, const Labels& query_labels,
                                       const Rows* gallery, const Labels* gallery_labels,
                                       const std::vector<int>& ks, nc::Similarity similarity, bool per_class) {
  const DeviceScope device(s.device);
  const cudaStream_t stream = stream_of(s);
  nc::cuda::RetrievalOptions o;
  o.ks = ks;
  o.similarity = similarity;
  o.per_class = per_class;
  const Rows& q = queries;
  return with_labels(query_labels, [&](const auto* yq) {
    if (!gallery)
      return nc::cuda::evaluate_retrieval(q.data, q.ld, yq, q.rows, q.cols, o, stream);
    const Rows& g = *gallery;
    return with_labels(*gallery_labels, [&](const auto* yg) {
      return nc::cuda::evaluate_retrieval(q.data, q.ld, yq, q.rows, g.data, g.ld, yg, g.rows, q.cols, o, stream);
    });
  });
}

struct PerturbationGuard::Impl {
  Impl(int device_, float* d_w, Index ld, Index rows_, Index cols_, const nc::Perturbation& p, int64_t step,
       cudaStream_t stream_)
      : device(device_), rows(rows_), cols(cols_), stream(stream_), guard(d_w, ld, rows_, cols_, p, step, stream_) {}
  int device;
  Index rows, cols;
  cudaStream_t stream;
  nc::cuda::DevicePerturbationGuard guard;
};

PerturbationGuard::PerturbationGuard(const Stream& s, float* d_w, Index ld, Index rows, Index cols,
                                     const nc::Perturbation& p, int64_t step) {
  const DeviceScope device(s.device);
  impl_ = std::make_unique<Impl>(s.device, d_w, ld, rows, cols, p, step, stream_of(s));
}

PerturbationGuard::~PerturbationGuard() {
  if (!impl_) return;
  // The clean copy goes back, then its buffer is freed, both in stream order on W's device.
  int previous = 0;
  NC_CUDA_TRY_NO_THROW(cudaGetDevice(&previous));
  NC_CUDA_TRY_NO_THROW(cudaSetDevice(impl_->device));
  impl_.reset();
  NC_CUDA_TRY_NO_THROW(cudaSetDevice(previous));
}

void PerturbationGuard::restore() noexcept {
  if (!impl_) return;
  int previous = 0;
  NC_CUDA_TRY_NO_THROW(cudaGetDevice(&previous));
  NC_CUDA_TRY_NO_THROW(cudaSetDevice(impl_->device));
  impl_->guard.restore();
  NC_CUDA_TRY_NO_THROW(cudaSetDevice(previous));
}

void PerturbationGuard::copy_clean(float* d_out) const {
  const DeviceScope device(impl_->device);
  const std::size_t bytes = static_cast<std::size_t>(impl_->rows) * impl_->cols * sizeof(float);
  NC_CUDA_TRY(cudaMemcpyAsync(d_out, impl_->guard.clean(), bytes, cudaMemcpyDeviceToDevice, impl_->stream));
  NC_CUDA_TRY(cudaStreamSynchronize(impl_->stream));
}

}  // namespace ncml_py::gpu
