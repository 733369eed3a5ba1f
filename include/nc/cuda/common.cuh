// ncml GPU path: conventions shared by every nc::cuda call.
//
// Device calls take device pointers (d_ prefix), row-major matrices with a leading dimension
// (in elements, >= the number of columns; rows need not be 16-byte aligned), and a
// cudaStream_t last (default 0). Scratch memory comes from the caller, CUB style: every
// `*_async` call has a `*_workspace_size` query with the same arguments, and takes a
// Workspace {pointer, bytes} of at least that size; nothing is allocated per call (cuBLAS
// runs on the caller's stream with its workspace carved from the same buffer). The
// synchronous forms allocate the workspace from a DeviceAllocator (stream-ordered
// cudaMallocAsync by default, or the caller's), wait for the stream and throw.
//
// Input errors found on the device (a non-finite feature, a label out of range) are recorded
// at the start of the workspace; the synchronous forms and nc::cuda::check_inputs throw them
// as nc::error, naming the argument, the row and the value. Outputs of a call that found an
// error are unspecified; the host conveniences taking Eigen matrices never write their
// results on error. CUDA failures throw nc::cuda_error.
//
// Labels on the device are int32 or int64 (the host conveniences convert other integer
// types). Rows are indexed with 32-bit offsets where a counting sort is involved, so N must
// stay below 2^31.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <ncml_common.cuh>
#include <ncml_sort.cuh>

#include "../core/check.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "error.cuh"

namespace nc::cuda {

using nc::Index;

/// Caller-provided device scratch memory. Pass data == nullptr to a `*_workspace_size`
/// query (or read `bytes` back from it) to learn the size.
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

/// Device memory for the synchronous forms and the host conveniences.
class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  virtual void* allocate(std::size_t bytes, cudaStream_t stream) = 0;
  virtual void deallocate(void* p, std::size_t bytes, cudaStream_t stream) noexcept = 0;
};

/// Stream-ordered cudaMallocAsync / cudaFreeAsync (the CUDA memory pool of the device).
class AsyncAllocator final : public DeviceAllocator {
 public:
  void* allocate(std::size_t bytes, cudaStream_t stream) override {
    void* p = nullptr;
    if (bytes) NC_CUDA_TRY(cudaMallocAsync(&p, bytes, stream));
    return p;
  }
  void deallocate(void* p, std::size_t, cudaStream_t stream) noexcept override {
    if (p) NC_CUDA_TRY_NO_THROW(cudaFreeAsync(p, stream));
  }
};

inline DeviceAllocator& default_allocator() {
  static AsyncAllocator a;
  return a;
}

/// Owning device array from a DeviceAllocator (move-only).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count, cudaStream_t stream = 0, DeviceAllocator& alloc = default_allocator())
      : alloc_(&alloc), stream_(stream), count_(count) {
    ptr_ = static_cast<T*>(alloc.allocate(count * sizeof(T), stream));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    DeviceBuffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_) alloc_->deallocate(ptr_, count_ * sizeof(T), stream_);
  }
  T* data() const { return ptr_; }
  std::size_t size() const { return count_; }
  Workspace workspace() const { return {ptr_, count_ * sizeof(T)}; }

 private:
  void swap(DeviceBuffer& o) noexcept {
    std::swap(alloc_, o.alloc_);
    std::swap(stream_, o.stream_);
    std::swap(count_, o.count_);
    std::swap(ptr_, o.ptr_);
  }
  DeviceAllocator* alloc_ = nullptr;
  cudaStream_t stream_ = 0;
  std::size_t count_ = 0;
  T* ptr_ = nullptr;
};

/// Arithmetic of the similarity GEMMs (retrieval) and of the NC1 projection.
enum class Precision {
  fp32,  ///< float32 products and sums (default)
  tf32,  ///< TF32 tensor-core products, float32 accumulation (10-bit mantissas)
  bf16,  ///< bfloat16 operands, float32 accumulation (8-bit mantissas)
};

namespace detail {

/// Operation codes recorded with the status (they name the arguments of its slots).
enum StatusOp : int { kOpStats = 1, kOpSearch = 2 };

/// Device layout of the status block at the start of every workspace.
struct StatusBlock {
  kernels::DeviceStatus s;
  long long row[5];
  long long col[5];
  double fvalue[2];
  long long lvalue[2];
  int op;
};

constexpr std::size_t kAlign = 256;

inline std::size_t round_up(std::size_t x, std::size_t m) { return (x + m - 1) / m * m; }

/// Carves aligned arrays out of a workspace in a fixed order; with a null base it only adds
/// up the sizes (the size query runs the same plan).
class Carver {
 public:
  explicit Carver(void* base = nullptr, std::size_t limit = 0) : base_(static_cast<char*>(base)), limit_(limit) {}
  template <class T>
  T* take(std::size_t count) {
    off_ = round_up(off_, kAlign);
    T* p = base_ ? reinterpret_cast<T*>(base_ + off_) : nullptr;
    off_ += count * sizeof(T);
    if (base_ && off_ > limit_)
      NC_FAIL("workspace too small: " << limit_ << " bytes given, at least " << off_
                                      << " needed (call with an empty Workspace to get the size)");
    return p;
  }
  std::size_t bytes() const { return round_up(off_, kAlign); }
  bool sizing() const { return base_ == nullptr; }

 private:
  char* base_;
  std::size_t limit_;
  std::size_t off_ = 0;
};

NC_KERNEL void resolve_status(StatusBlock* b, const float* x0, long long ld0, int d0,
                               const float* x1, long long ld1, int d1, const void* y0, int y0size,
                               const void* y1, int y1size) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const float* xs[2] = {x0, x1};
  const long long lds[2] = {ld0, ld1};
  const int ds[2] = {d0, d1};
  for (int k = 0; k < 2; ++k) {
    const unsigned long long p = b->s.bad[k];
    if (p == kernels::kNone || !xs[k]) continue;
    b->row[k] = static_cast<long long>(p / ds[k]);
    b->col[k] = static_cast<long long>(p % ds[k]);
    b->fvalue[k] = xs[k][b->row[k] * lds[k] + b->col[k]];
  }
  const void* ys[2] = {y0, y1};
  const int sz[2] = {y0size, y1size};
  for (int k = 0; k < 2; ++k) {
    const unsigned long long p = b->s.bad[2 + k];
    if (p == kernels::kNone || !ys[k]) continue;
    b->row[2 + k] = static_cast<long long>(p);
    b->lvalue[k] = sz[k] == 8 ? static_cast<const long long*>(ys[k])[p]
                              : static_cast<const int*>(ys[k])[p];
  }
  if (b->s.bad[4] != kernels::kNone) b->row[4] = static_cast<long long>(b->s.bad[4]);
}

inline void init_status(StatusBlock* b, int op, cudaStream_t stream) {
  NC_CUDA_TRY(cudaMemsetAsync(b, 0xff, sizeof(StatusBlock), stream));
  NC_CUDA_TRY(cudaMemsetAsync(&b->op, op, 1, stream));
}

/// Records, for every slot that found an error, the row, column and value.
inline void finish_status(StatusBlock* b, const float* x0, Index ld0, Index d0, const float* x1,
                          Index ld1, Index d1, const void* y0, int y0size, const void* y1,
                          int y1size, cudaStream_t stream) {
  resolve_status<<<1, 32, 0, stream>>>(b, x0, ld0, int(std::max<Index>(d0, 1)), x1, ld1,
                                       int(std::max<Index>(d1, 1)), y0, y0size, y1, y1size);
  NC_CUDA_CHECK_LAUNCH();
}

inline void throw_status(const StatusBlock& h, Index num_classes) {
  const int op = h.op & 0xff;
  const char* fname[2] = {op == kOpSearch ? "queries" : "features", "gallery"};
  const char* lname[2] = {op == kOpSearch ? "query_labels" : "labels", "gallery_labels"};
  for (int k = 0; k < 2; ++k)
    if (h.s.bad[k] != kernels::kNone)
      NC_FAIL(fname[k] << " has a non-finite value " << h.fvalue[k] << " at row " << h.row[k]
                       << ", column " << h.col[k]);
  for (int k = 0; k < 2; ++k) {
    if (h.s.bad[2 + k] == kernels::kNone) continue;
    NC_EXPECTS(h.lvalue[k] >= 0, lname[k] << " has a negative label " << h.lvalue[k] << " at row " << h.row[2 + k]);
    NC_FAIL(lname[k] << " has label " << h.lvalue[k] << " at row " << h.row[2 + k]
                     << ", out of range [0, " << num_classes << ")");
  }
  if (h.s.bad[4] != kernels::kNone)
    NC_FAIL("labels and the given statistics disagree on the number of samples of class "
            << h.row[4] << ": pass the data the statistics were built from");
}

inline StatusBlock read_status(const void* workspace, cudaStream_t stream) {
  StatusBlock h;
  NC_CUDA_TRY(cudaMemcpyAsync(&h, workspace, sizeof h, cudaMemcpyDeviceToHost, stream));
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  return h;
}

inline int current_device() {
  int dev = 0;
  NC_CUDA_TRY(cudaGetDevice(&dev));
  return dev;
}

inline int num_sms() {
  int v = 0;
  NC_CUDA_TRY(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, current_device()));
  return v;
}

inline int max_smem_optin() {
  int v = 0;
  NC_CUDA_TRY(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, current_device()));
  return v;
}

/// Blocks for a grid-stride loop over `work` items of `per_block` each, at most `cap`.
inline unsigned grid_for(long long work, long long per_block, long long cap) {
  const long long g = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(std::max<long long>(1, std::min(g, cap)));
}

inline unsigned wide_grid(long long work, long long per_block) {
  return grid_for(work, per_block, 32ll * num_sms());
}

/// cuBLAS handle used when the caller gives none: one per thread and device, created on
/// first use and kept for the life of the thread.
inline cublasHandle_t default_cublas() {
  struct Handles {
    std::unordered_map<int, cublasHandle_t> h;
    ~Handles() {
      for (auto& kv : h) cublasDestroy(kv.second);
    }
  };
  thread_local Handles handles;
  const int dev = current_device();
  auto it = handles.h.find(dev);
  if (it != handles.h.end()) return it->second;
  cublasHandle_t h = nullptr;
  NC_CUBLAS_TRY(cublasCreate(&h));
  handles.h.emplace(dev, h);
  return h;
}

/// cuBLAS workspace carved from the caller's workspace (the size cuBLAS asks for on Hopper).
constexpr std::size_t kCublasWorkspace = std::size_t(32) << 20;

/// Points a handle at our stream, workspace and default math mode for one call, and puts the
/// caller's stream (which also restores the handle's own workspace) and math mode back.
class CublasScope {
 public:
  CublasScope(cublasHandle_t h, cudaStream_t stream, void* ws, std::size_t ws_bytes) : h_(h) {
    NC_CUBLAS_TRY(cublasGetStream(h_, &old_stream_));
    NC_CUBLAS_TRY(cublasGetMathMode(h_, &old_math_));
    NC_CUBLAS_TRY(cublasSetStream(h_, stream));
    if (ws) NC_CUBLAS_TRY(cublasSetWorkspace(h_, ws, ws_bytes));
    NC_CUBLAS_TRY(cublasSetMathMode(h_, CUBLAS_DEFAULT_MATH));
  }
  CublasScope(const CublasScope&) = delete;
  CublasScope& operator=(const CublasScope&) = delete;
  ~CublasScope() {
    cublasSetMathMode(h_, old_math_);
    cublasSetStream(h_, old_stream_);
  }
  cublasHandle_t get() const { return h_; }

 private:
  cublasHandle_t h_;
  cudaStream_t old_stream_ = 0;
  cublasMath_t old_math_ = CUBLAS_DEFAULT_MATH;
};

/// Scratch bytes of exclusive_scan for n values.
inline std::size_t scan_temp_bytes(long long n) {
  std::size_t total = 0;
  long long m = n;
  for (;;) {
    const long long nb = (m + kernels::kScanTile - 1) / kernels::kScanTile;
    if (nb <= 1) break;
    total += 2 * round_up(static_cast<std::size_t>(nb) * 8, kAlign);
    m = nb;
  }
  return total + kAlign;
}

/// out = exclusive prefix sums of in[0..n) (out may alias in).
inline void exclusive_scan(const unsigned long long* in, unsigned long long* out, long long n,
                           Carver& temp, cudaStream_t stream) {
  if (n <= 0) return;
  const long long nb = (n + kernels::kScanTile - 1) / kernels::kScanTile;
  if (nb == 1) {
    kernels::scan_tiles<<<1, kernels::kScanThreads, 0, stream>>>(in, out, n, nullptr);
    NC_CUDA_CHECK_LAUNCH();
    return;
  }
  unsigned long long* sums = temp.take<unsigned long long>(nb);
  unsigned long long* scanned = temp.take<unsigned long long>(nb);
  kernels::scan_tiles<<<static_cast<unsigned>(nb), kernels::kScanThreads, 0, stream>>>(in, out, n, sums);
  NC_CUDA_CHECK_LAUNCH();
  exclusive_scan(sums, scanned, nb, temp, stream);
  kernels::add_tile_offsets<<<static_cast<unsigned>(nb), kernels::kScanThreads, 0, stream>>>(out, n, scanned);
  NC_CUDA_CHECK_LAUNCH();
}

inline long long next_pow2(long long x) {
  long long p = 1;
  while (p < x) p <<= 1;
  return p;
}

/// Sorts every segment ascending; `max_len` bounds the segment lengths.
inline void sort_segments(const kernels::Segments& seg, long long max_len, cudaStream_t stream) {
  if (seg.count <= 0 || max_len <= 1) return;
  const long long pad = next_pow2(std::min<long long>(max_len, kernels::kBlockSortMax));
  const std::size_t smem = static_cast<std::size_t>(pad) * sizeof(unsigned long long);
  if (smem > 48 * 1024)
    NC_CUDA_TRY(cudaFuncSetAttribute(kernels::sort_segments_block,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const int threads = static_cast<int>(std::min<long long>(512, std::max<long long>(32, pad / 2)));
  kernels::sort_segments_block<<<grid_for(seg.count, 1, 16ll * num_sms()), threads, smem, stream>>>(seg);
  NC_CUDA_CHECK_LAUNCH();
  if (max_len <= kernels::kBlockSortMax) return;
  const long long padded = next_pow2(max_len);
  const unsigned grid = wide_grid(seg.count * (padded / 2), 256);
  for (long long size = 2; size <= padded; size <<= 1) {
    kernels::sort_segments_step<<<grid, 256, 0, stream>>>(seg, padded, 1, size, 0);
    NC_CUDA_CHECK_LAUNCH();
    for (long long dist = size / 4; dist >= 1; dist >>= 1) {
      kernels::sort_segments_step<<<grid, 256, 0, stream>>>(seg, padded, 0, size, dist);
      NC_CUDA_CHECK_LAUNCH();
    }
  }
}

/// Labels grouped by class: int32 ids, counts [C + 1] (last 0), offsets [C + 1], the row
/// order, and the first row of each class.
struct Grouping {
  int* y32 = nullptr;
  unsigned long long* counts = nullptr;
  unsigned long long* start = nullptr;
  int* order = nullptr;
  int* first = nullptr;
};

inline Grouping plan_grouping(Carver& c, Index n, Index num_classes, bool with_order, bool with_first) {
  Grouping g;
  g.y32 = c.take<int>(static_cast<std::size_t>(n));
  g.counts = c.take<unsigned long long>(static_cast<std::size_t>(num_classes) + 1);
  if (with_first) g.first = c.take<int>(static_cast<std::size_t>(num_classes));
  if (with_order) {
    g.start = c.take<unsigned long long>(static_cast<std::size_t>(num_classes) + 1);
    g.order = c.take<int>(static_cast<std::size_t>(n));
  }
  return g;
}

NC_KERNEL void fill_int(int* p, long long n, int v) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    p[i] = v;
}

/// Validates labels (slot 2 or 3), counts classes and, as planned, groups rows by class.
/// `cursor` is scratch of C + 1 values when ordering; `temp` feeds the scan.
template <class L>
void run_grouping(const Grouping& g, const L* d_labels, Index n, Index num_classes,
                  kernels::DeviceStatus* st, int slot, unsigned long long* cursor, Carver& temp,
                  cudaStream_t stream) {
  NC_CUDA_TRY(cudaMemsetAsync(g.counts, 0, sizeof(unsigned long long) * (num_classes + 1), stream));
  if (g.first) {
    fill_int<<<wide_grid(num_classes, 256), 256, 0, stream>>>(g.first, num_classes,
                                                              std::numeric_limits<int>::max());
    NC_CUDA_CHECK_LAUNCH();
  }
  kernels::label_pass<L><<<grid_for(n, 256, std::numeric_limits<int>::max()), 256, 0, stream>>>(
      d_labels, n, num_classes, g.y32, g.counts, g.first, st, slot);
  NC_CUDA_CHECK_LAUNCH();
  if (!g.order) return;
  exclusive_scan(g.counts, g.start, num_classes + 1, temp, stream);
  NC_CUDA_TRY(cudaMemcpyAsync(cursor, g.start, sizeof(unsigned long long) * (num_classes + 1),
                              cudaMemcpyDeviceToDevice, stream));
  kernels::scatter_by_class<<<grid_for(n, 256, std::numeric_limits<int>::max()), 256, 0, stream>>>(
      g.y32, n, cursor, g.order);
  NC_CUDA_CHECK_LAUNCH();
}

template <class L>
constexpr void check_label_type() {
  static_assert(std::is_same<L, int32_t>::value || std::is_same<L, int64_t>::value ||
                    std::is_same<L, int>::value || std::is_same<L, long long>::value,
                "device labels must be int32 or int64");
}

inline void check_rows(Index n, const char* name) {
  NC_EXPECTS(n > 0, name << " is empty (0 rows)");
  NC_EXPECTS(n < std::numeric_limits<int>::max(),
             name << " has " << n << " rows; the GPU path supports fewer than 2^31 - 1");
}

inline void check_matrix(const void* p, Index rows, Index cols, Index ld, const char* name) {
  check_rows(rows, name);
  NC_EXPECTS(cols > 0, name << " has no columns");
  NC_EXPECTS(ld >= cols, name << ": leading dimension " << ld << " is smaller than the number of columns " << cols);
  NC_EXPECTS(p != nullptr, name << " is a null device pointer");
}

/// Whether rows of x (leading dimension ld, d columns) can be read with 16-byte loads.
inline bool vec4_ok(const float* x, Index ld, Index d) {
  return reinterpret_cast<std::uintptr_t>(x) % 16 == 0 && ld % 4 == 0 && d % 4 == 0;
}

/// Float row-major copy of any Eigen expression (the GPU path computes in float32).
template <class D>
MatrixF to_float_rows(const Eigen::MatrixBase<D>& x) {
  return x.template cast<float>();
}

/// int64 copy of any supported label container; num_classes = max + 1 when -1.
template <class Labels>
std::vector<int64_t> to_int64_labels(const Labels& labels, Index n, Index& num_classes, const char* name) {
  const auto y = label_view(labels);
  NC_EXPECTS(y.size == n, name << " has " << y.size << " entries, expected " << n << " (one per row)");
  std::vector<int64_t> out(static_cast<std::size_t>(n));
  int64_t mx = -1;
  for (Index i = 0; i < n; ++i) {
    out[i] = static_cast<int64_t>(y[i]);
    mx = std::max(mx, out[i]);
  }
  NC_EXPECTS(num_classes == -1 || num_classes > 0,
             "num_classes must be positive or -1 (infer), got " << num_classes);
  // Negative and out-of-range labels are found on the device (check_inputs); an inferred
  // class count is bounded here, before per-class device memory is sized by it.
  if (num_classes == -1) {
    nc::detail::check_inferred_classes(static_cast<Index>(mx), n, name);
    num_classes = std::max<Index>(1, mx + 1);
  }
  return out;
}

template <class T>
void upload(T* d, const T* h, std::size_t count, cudaStream_t stream) {
  NC_CUDA_TRY(cudaMemcpyAsync(d, h, count * sizeof(T), cudaMemcpyHostToDevice, stream));
}
template <class T>
void download(T* h, const T* d, std::size_t count, cudaStream_t stream) {
  NC_CUDA_TRY(cudaMemcpyAsync(h, d, count * sizeof(T), cudaMemcpyDeviceToHost, stream));
}

/// Host features [n, d] and labels [n] checked (rows, columns, label count; num_classes
/// inferred when -1) and copied to the device as float32 rows (leading dimension d) and int64
/// labels: the first step of every host convenience.
struct DeviceLabelledRows {
  Index n = 0, d = 0;
  DeviceBuffer<float> x;
  DeviceBuffer<int64_t> y;
};
template <class D, class Labels>
DeviceLabelledRows upload_labelled_rows(const Eigen::MatrixBase<D>& features, const Labels& labels,
                                        Index& num_classes, cudaStream_t stream) {
  DeviceLabelledRows r;
  r.n = features.rows();
  r.d = features.cols();
  check_rows(r.n, "features");
  NC_EXPECTS(r.d > 0, "features has no columns");
  const std::vector<int64_t> y = to_int64_labels(labels, r.n, num_classes, "labels");
  const MatrixF x = to_float_rows(features);
  r.x = DeviceBuffer<float>(static_cast<std::size_t>(x.size()), stream);
  r.y = DeviceBuffer<int64_t>(y.size(), stream);
  upload(r.x.data(), x.data(), static_cast<std::size_t>(x.size()), stream);
  upload(r.y.data(), y.data(), y.size(), stream);
  // The host copies die with this function: wait until the stream has read them.
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  return r;
}

}  // namespace detail

/// Throws nc::error for input errors the device recorded in `ws` during an `*_async` call
/// on `stream` (waits for the stream). `num_classes` appears in out-of-range messages.
inline void check_inputs(const Workspace& ws, cudaStream_t stream = 0, Index num_classes = -1) {
  NC_EXPECTS(ws.data != nullptr, "check_inputs: the workspace is null");
  const detail::StatusBlock h = detail::read_status(ws.data, stream);
  detail::throw_status(h, num_classes);
}

}  // namespace nc::cuda
