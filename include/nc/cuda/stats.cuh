// ncml GPU path: per-class statistics and the within-class scatter.
//
//   // device buffers: d_x [n, ldx] float, d_y [n] int32/int64, outputs as below
//   nc::cuda::Workspace ws;                                   // 1. size query
//   nc::cuda::class_stats_async(d_x, ldx, d_y, n, d, C, out, ws);
//   cudaMalloc(&ws.data, ws.bytes);                            // 2. run
//   nc::cuda::class_stats_async(d_x, ldx, d_y, n, d, C, out, ws, {}, stream);
//   nc::cuda::check_inputs(ws, stream, C);                     // throws nc::error on bad input
//
//   nc::cuda::ClassStatsResult r = nc::cuda::class_stats(features, labels);   // Eigen in and out
//
// class_stats gives what nc::ClassStats holds without the scatter: counts [C] (int64), class
// means [C, D] and per-class sums of squared deviations [C] (float64), in one pass over the
// rows (see kernels/ncml_stats.cuh for the two strategies and their accuracy).
// within_scatter gives S_W = sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T [D, D] (float64, not
// divided by N) from given means: rows are centred in chunks of `chunk_rows` (float, as the
// CPU does), multiplied by cuBLAS SGEMM in batches, and each chunk's product is added to a
// float64 accumulator; no N x D temporary.
#pragma once

#include <Eigen/Core>

#include <ncml_scatter.cuh>
#include <ncml_stats.cuh>

#include <cstdint>
#include <vector>

#include "../core/check.hpp"
#include "../core/types.hpp"
#include "common.cuh"

namespace nc::cuda {

struct ClassStatsOptions {
  enum class Strategy {
    automatic,   ///< privatized when the accumulators of a block fit in shared memory
    privatized,  ///< per-block shared-memory accumulators (small C x D)
    sorted,      ///< rows grouped by class, any C
  };
  Strategy strategy = Strategy::automatic;
  /// Privatized strategy: float64 shared-memory partial sums (half the capacity). Partial
  /// sums are float32 over at most 2048 rows per block otherwise; totals are always float64.
  bool fp64_accumulate = false;
};

/// Device outputs of class_stats: counts [C] (int64), means [C, ldm] and sums of squared
/// deviations from the class mean [C] (float64). Classes without rows get zeros.
struct ClassStatsOutput {
  long long* d_counts = nullptr;
  double* d_means = nullptr;
  Index ldm = 0;
  double* d_sq_dev = nullptr;
};

namespace detail {

constexpr long long kPrivateTileRows = 2048;

struct StatsPlan {
  bool privatized = false;
  bool vec4 = false;
  bool fp64 = false;
  int tpr = 1;
  int threads = 256;
  std::size_t smem = 0;
  Grouping grp;
  unsigned long long* cursor = nullptr;
  double* s1 = nullptr;  // privatized [C, d]; sorted slots [windows, d]
  double* s2 = nullptr;
  long long windows = 0;
  void* scan = nullptr;
  std::size_t scan_bytes = 0;
};

inline std::size_t private_smem(int threads, int tpr, Index C, Index d, bool fp64) {
  const std::size_t acc = fp64 ? 8 : 4;
  const std::size_t slots = static_cast<std::size_t>(threads / tpr);
  return slots * C * d * acc + slots * C * tpr * acc + static_cast<std::size_t>(C) * d * 4;
}

inline StatsPlan plan_stats(Carver& c, const float* x, Index ld, Index n, Index d, Index C,
                            const ClassStatsOptions& o) {
  StatsPlan p;
  p.vec4 = vec4_ok(x, ld, d);
  p.fp64 = o.fp64_accumulate;
  const Index dv = p.vec4 ? d / 4 : d;
  p.tpr = static_cast<int>(std::min<long long>(32, next_pow2(dv)));
  if (o.strategy != ClassStatsOptions::Strategy::sorted) {
    const std::size_t limit = static_cast<std::size_t>(max_smem_optin());
    // Prefer two resident blocks per multiprocessor (each block also costs 1 KiB of the
    // multiprocessor's shared memory), then one.
    for (std::size_t budget : {limit / 2 - 3 * 1024, limit}) {
      for (int t : {256, 128, 64, 32}) {
        if (t < p.tpr) break;
        const std::size_t s = private_smem(t, p.tpr, C, d, p.fp64);
        if (s <= budget) {
          p.privatized = true;
          p.threads = t;
          p.smem = s;
          break;
        }
      }
      if (p.privatized) break;
    }
    NC_EXPECTS(p.privatized || o.strategy == ClassStatsOptions::Strategy::automatic,
               "class_stats: the privatized strategy needs " << private_smem(32, p.tpr, C, d, p.fp64)
                                                             << " bytes of shared memory per block for "
                                                             << C << " classes x " << d
                                                             << " dimensions; the device has " << limit);
  }
  p.grp = plan_grouping(c, n, C, !p.privatized, p.privatized);
  if (p.privatized) {
    p.s1 = c.take<double>(static_cast<std::size_t>(C) * d);
    p.s2 = c.take<double>(static_cast<std::size_t>(C));
  } else {
    p.cursor = c.take<unsigned long long>(static_cast<std::size_t>(C) + 1);
    p.windows = (n + kernels::kWindow - 1) / kernels::kWindow;
    p.s1 = c.take<double>(static_cast<std::size_t>(p.windows) * d);
    p.s2 = c.take<double>(static_cast<std::size_t>(p.windows));
    p.scan_bytes = scan_temp_bytes(C + 1);
    p.scan = c.take<char>(p.scan_bytes);
  }
  return p;
}

template <class Kernel>
unsigned resident_grid(Kernel k, int threads, std::size_t smem, long long work_blocks) {
  int per_sm = 0;
  NC_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, threads, smem));
  return grid_for(work_blocks, 1, static_cast<long long>(std::max(per_sm, 1)) * num_sms());
}

template <class L>
void run_stats(const StatsPlan& p, const float* x, Index ld, const L* y, Index n, Index d, Index C,
               const ClassStatsOutput& out, kernels::DeviceStatus* st, cudaStream_t stream) {
  Carver scan(p.scan, p.scan_bytes);
  run_grouping(p.grp, y, n, C, st, 2, p.cursor, scan, stream);
  kernels::FinalizeArgs f{x, ld, n, int(d), int(C), p.grp.counts, p.grp.first, p.grp.start,
                          p.grp.order, kernels::kWindow, p.s1, p.s2, out.d_counts, out.d_means,
                          out.ldm, out.d_sq_dev};
  if (p.privatized) {
    NC_CUDA_TRY(cudaMemsetAsync(p.s1, 0, sizeof(double) * C * d, stream));
    NC_CUDA_TRY(cudaMemsetAsync(p.s2, 0, sizeof(double) * C, stream));
    kernels::PrivateArgs a{x, ld, p.grp.y32, n, int(d), int(C), p.grp.first, p.s1, p.s2, st,
                           p.tpr, kPrivateTileRows};
    const long long tiles = (n + kPrivateTileRows - 1) / kPrivateTileRows;
    auto launch = [&](auto kernel) {
      NC_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(p.smem)));
      kernel<<<resident_grid(kernel, p.threads, p.smem, tiles), p.threads, p.smem, stream>>>(a);
      NC_CUDA_CHECK_LAUNCH();
    };
    if (p.vec4 && p.fp64) launch(kernels::stats_private<4, double>);
    else if (p.vec4) launch(kernels::stats_private<4, float>);
    else if (p.fp64) launch(kernels::stats_private<1, double>);
    else launch(kernels::stats_private<1, float>);
    kernels::stats_finalize<<<wide_grid(C, 8), 256, 0, stream>>>(f, 0);
    NC_CUDA_CHECK_LAUNCH();
    return;
  }
  NC_CUDA_TRY(cudaMemsetAsync(p.s1, 0, sizeof(double) * p.windows * d, stream));
  NC_CUDA_TRY(cudaMemsetAsync(p.s2, 0, sizeof(double) * p.windows, stream));
  kernels::SortedArgs a{};
  a.x = x;
  a.ld = ld;
  a.y = p.grp.y32;
  a.order = p.grp.order;
  a.start = p.grp.start;
  a.n = n;
  a.d = int(d);
  a.num_classes = int(C);
  a.st = st;
  a.means = out.d_means;
  a.ldm = out.ldm;
  a.sq_dev = out.d_sq_dev;
  a.slot_s1 = p.s1;
  a.slot_s2 = p.s2;
  const long long blocks = (p.windows + kernels::kSortedWarps - 1) / kernels::kSortedWarps;
  auto launch = [&](auto kernel) {
    kernel<<<resident_grid(kernel, kernels::kSortedWarps * 32, 0, blocks), kernels::kSortedWarps * 32, 0, stream>>>(a);
    NC_CUDA_CHECK_LAUNCH();
  };
  if (p.vec4) launch(kernels::stats_sorted<4, 0>);
  else launch(kernels::stats_sorted<1, 0>);
  kernels::stats_finalize<<<wide_grid(C, 8), 256, 0, stream>>>(f, 1);
  NC_CUDA_CHECK_LAUNCH();
}

inline void check_stats_args(const float* x, Index ld, Index n, Index d, Index C) {
  check_matrix(x, n, d, ld, "features");
  NC_EXPECTS(C > 0, "num_classes must be positive, got " << C);
  NC_EXPECTS(C < std::numeric_limits<int>::max(), "num_classes = " << C << " is too large for the GPU path");
}

}  // namespace detail

/// Counts, means and squared deviations of `d_x` [n, d] (leading dimension ldx) grouped by
/// `d_labels` [n] with values in [0, num_classes). With ws.data == nullptr, sets ws.bytes and
/// returns. Input errors are recorded in the workspace (check_inputs).
template <class L>
void class_stats_async(const float* d_x, Index ldx, const L* d_labels, Index n, Index d,
                       Index num_classes, const ClassStatsOutput& out, Workspace& ws,
                       const ClassStatsOptions& options = {}, cudaStream_t stream = 0) {
  detail::check_label_type<L>();
  detail::check_stats_args(d_x, ldx, n, d, num_classes);
  NC_EXPECTS(out.d_counts && out.d_means && out.d_sq_dev, "class_stats: an output pointer is null");
  NC_EXPECTS(out.ldm >= d, "class_stats: ldm = " << out.ldm << " is smaller than d = " << d);
  detail::Carver c(ws.data, ws.bytes);
  auto* status = c.take<detail::StatusBlock>(1);
  const detail::StatsPlan p = detail::plan_stats(c, d_x, ldx, n, d, num_classes, options);
  if (c.sizing()) {
    ws.bytes = c.bytes();
    return;
  }
  detail::init_status(status, detail::kOpStats, stream);
  detail::run_stats(p, d_x, ldx, d_labels, n, d, num_classes, out, &status->s, stream);
  detail::finish_status(status, d_x, ldx, d, nullptr, 0, 1, d_labels, sizeof(L), nullptr, 0, stream);
}

/// Synchronous class_stats with scratch from `alloc`; throws nc::error for invalid input.
template <class L>
void class_stats(const float* d_x, Index ldx, const L* d_labels, Index n, Index d, Index num_classes,
                 const ClassStatsOutput& out, const ClassStatsOptions& options = {},
                 cudaStream_t stream = 0, DeviceAllocator& alloc = default_allocator()) {
  Workspace ws;
  class_stats_async(d_x, ldx, d_labels, n, d, num_classes, out, ws, options, stream);
  DeviceBuffer<char> buf(ws.bytes, stream, alloc);
  ws.data = buf.data();
  class_stats_async(d_x, ldx, d_labels, n, d, num_classes, out, ws, options, stream);
  check_inputs(ws, stream, num_classes);
}

struct WithinScatterOptions {
  /// Rows centred and multiplied together (float32 products over this many rows are added
  /// to the float64 accumulator). 0: 2048.
  Index chunk_rows = 0;
  /// Chunks per batched GEMM (0: as many as fit in 64 MiB of scratch, at least 1).
  Index batch = 0;
  cublasHandle_t cublas = nullptr;
};

namespace detail {

struct ScatterPlan {
  Index chunk = 2048, batch = 1;
  int* y32 = nullptr;
  double* acc = nullptr;
  float* centred = nullptr;
  float* prods = nullptr;
  void* cublas_ws = nullptr;
};

inline ScatterPlan plan_scatter(Carver& c, Index n, Index d, const WithinScatterOptions& o) {
  ScatterPlan p;
  p.chunk = o.chunk_rows > 0 ? o.chunk_rows : 2048;
  const std::size_t budget = std::size_t(64) << 20;
  const std::size_t per = static_cast<std::size_t>(p.chunk) * d * 4 + static_cast<std::size_t>(d) * d * 4;
  const Index chunks = (n + p.chunk - 1) / p.chunk;
  p.batch = o.batch > 0 ? o.batch : std::max<Index>(1, static_cast<Index>(budget / per));
  p.batch = std::min(p.batch, chunks);
  p.y32 = c.take<int>(static_cast<std::size_t>(n));
  p.acc = c.take<double>(static_cast<std::size_t>(d) * d);
  p.centred = c.take<float>(static_cast<std::size_t>(p.batch) * p.chunk * d);
  p.prods = c.take<float>(static_cast<std::size_t>(p.batch) * d * d);
  p.cublas_ws = c.take<char>(kCublasWorkspace);
  return p;
}

template <class L>
void run_scatter(const ScatterPlan& p, const float* x, Index ld, const L* y, Index n, Index d,
                 Index C, const double* means, Index ldm, double* out, Index ldo,
                 kernels::DeviceStatus* st, cublasHandle_t handle, cudaStream_t stream) {
  kernels::label_pass<L><<<grid_for(n, 256, std::numeric_limits<int>::max()), 256, 0, stream>>>(
      y, n, C, p.y32, nullptr, nullptr, st, 2);
  NC_CUDA_CHECK_LAUNCH();
  NC_CUDA_TRY(cudaMemsetAsync(p.acc, 0, sizeof(double) * d * d, stream));
  CublasScope blas(handle ? handle : default_cublas(), stream, p.cublas_ws, kCublasWorkspace);
  const float one = 1.0f, zero = 0.0f;
  const long long group = static_cast<long long>(p.batch) * p.chunk;
  for (long long r0 = 0; r0 < n; r0 += group) {
    const long long rows = std::min<long long>(group, n - r0);
    const int used = static_cast<int>((rows + p.chunk - 1) / p.chunk);
    const long long padded = static_cast<long long>(used) * p.chunk;
    kernels::center_rows<<<wide_grid(padded * d, 256), 256, 0, stream>>>(
        x, ld, p.y32, n, int(d), means, ldm, r0, int(padded), p.centred, d, 0, st);
    NC_CUDA_CHECK_LAUNCH();
    // Row-major chunk [chunk, d] = column-major d x chunk; its product with its transpose.
    NC_CUBLAS_TRY(cublasSgemmStridedBatched(blas.get(), CUBLAS_OP_N, CUBLAS_OP_T, int(d), int(d),
                                            int(p.chunk), &one, p.centred, int(d), p.chunk * d,
                                            p.centred, int(d), p.chunk * d, &zero, p.prods, int(d),
                                            d * d, used));
    kernels::add_products<<<wide_grid(d * d, 256), 256, 0, stream>>>(p.prods, used, d * d, d * d, p.acc);
    NC_CUDA_CHECK_LAUNCH();
  }
  kernels::symmetrize<<<wide_grid(d * d, 256), 256, 0, stream>>>(p.acc, int(d), out, ldo);
  NC_CUDA_CHECK_LAUNCH();
}

}  // namespace detail

/// S_W [d, d] (float64, leading dimension ldo) of `d_x` [n, d] around the class means
/// `d_means` [C, ldm] (float64, e.g. from class_stats). CUB-style workspace (ws.data ==
/// nullptr: size query).
template <class L>
void within_scatter_async(const float* d_x, Index ldx, const L* d_labels, Index n, Index d,
                          Index num_classes, const double* d_means, Index ldm, double* d_out,
                          Index ldo, Workspace& ws, const WithinScatterOptions& options = {},
                          cudaStream_t stream = 0) {
  detail::check_label_type<L>();
  detail::check_stats_args(d_x, ldx, n, d, num_classes);
  NC_EXPECTS(d_means && d_out, "within_scatter: a null device pointer");
  NC_EXPECTS(ldm >= d && ldo >= d, "within_scatter: ldm and ldo must be at least d = " << d);
  detail::Carver c(ws.data, ws.bytes);
  auto* status = c.take<detail::StatusBlock>(1);
  const detail::ScatterPlan p = detail::plan_scatter(c, n, d, options);
  if (c.sizing()) {
    ws.bytes = c.bytes();
    return;
  }
  detail::init_status(status, detail::kOpStats, stream);
  detail::run_scatter(p, d_x, ldx, d_labels, n, d, num_classes, d_means, ldm, d_out, ldo,
                      &status->s, options.cublas, stream);
  detail::finish_status(status, d_x, ldx, d, nullptr, 0, 1, d_labels, sizeof(L), nullptr, 0, stream);
}

template <class L>
void within_scatter(const float* d_x, Index ldx, const L* d_labels, Index n, Index d,
                    Index num_classes, const double* d_means, Index ldm, double* d_out, Index ldo,
                    const WithinScatterOptions& options = {}, cudaStream_t stream = 0,
                    DeviceAllocator& alloc = default_allocator()) {
  Workspace ws;
  within_scatter_async(d_x, ldx, d_labels, n, d, num_classes, d_means, ldm, d_out, ldo, ws, options, stream);
  DeviceBuffer<char> buf(ws.bytes, stream, alloc);
  ws.data = buf.data();
  within_scatter_async(d_x, ldx, d_labels, n, d, num_classes, d_means, ldm, d_out, ldo, ws, options, stream);
  check_inputs(ws, stream, num_classes);
}

// ---------------------------------------------------------------------------------------
// Host conveniences.

/// Statistics copied back to the host.
struct ClassStatsResult {
  VectorI64 counts;        ///< [C]
  MatrixD means;           ///< [C, D] (zero rows for empty classes)
  Eigen::VectorXd sq_dev;  ///< [C] sum over the class of ||x - mu_c||^2
  MatrixD within_scatter;  ///< [D, D] S_W when requested, else empty
  Index num_classes() const { return counts.size(); }
  int64_t total_count() const { return counts.sum(); }
  /// Sigma_W = S_W / N.
  MatrixD within_covariance() const { return within_scatter / double(total_count()); }
};

struct HostStatsOptions {
  ClassStatsOptions stats;
  /// Also compute S_W (a second pass over the rows).
  bool within_scatter = false;
  WithinScatterOptions scatter;
};

/// Statistics of `features` [N, D] (any Eigen expression; computed in float32 on the GPU)
/// with `labels` [N]; num_classes -1 means max(label) + 1. Throws nc::error for invalid
/// input (nothing is returned then).
template <class D, class Labels>
ClassStatsResult class_stats(const Eigen::MatrixBase<D>& features, const Labels& labels,
                             Index num_classes = -1, const HostStatsOptions& options = {},
                             cudaStream_t stream = 0) {
  const detail::DeviceLabelledRows rows = detail::upload_labelled_rows(features, labels, num_classes, stream);
  const Index n = rows.n, d = rows.d;
  const DeviceBuffer<float>& dx = rows.x;
  const DeviceBuffer<int64_t>& dy = rows.y;
  DeviceBuffer<long long> dc(num_classes, stream);
  DeviceBuffer<double> dm(static_cast<std::size_t>(num_classes) * d, stream);
  DeviceBuffer<double> dsq(num_classes, stream);
  class_stats(dx.data(), d, dy.data(), n, d, num_classes, ClassStatsOutput{dc.data(), dm.data(), d, dsq.data()},
              options.stats, stream);
  ClassStatsResult r;
  r.counts.resize(num_classes);
  r.means.resize(num_classes, d);
  r.sq_dev.resize(num_classes);
  if (options.within_scatter) {
    DeviceBuffer<double> dsw(static_cast<std::size_t>(d) * d, stream);
    within_scatter(dx.data(), d, dy.data(), n, d, num_classes, dm.data(), d, dsw.data(), d, options.scatter, stream);
    r.within_scatter.resize(d, d);
    detail::download(r.within_scatter.data(), dsw.data(), static_cast<std::size_t>(d) * d, stream);
  }
  static_assert(sizeof(long long) == sizeof(int64_t), "int64 layout");
  detail::download(reinterpret_cast<long long*>(r.counts.data()), dc.data(), num_classes, stream);
  detail::download(r.means.data(), dm.data(), static_cast<std::size_t>(num_classes) * d, stream);
  detail::download(r.sq_dev.data(), dsq.data(), num_classes, stream);
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  return r;
}

}  // namespace nc::cuda
