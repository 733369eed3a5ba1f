// ncml: NCCL reduction of class statistics held in device memory (target ncml::nccl, built
// when CUDA and NCCL are found). The device-buffer counterpart of nc::mpi::allreduce.
//
//   // each rank: statistics of its own rows, from nc::cuda::class_stats (+ within_scatter)
//   nc::cuda::class_stats(d_x, ldx, d_y, n_local, d, C, out, {}, stream);
//   nc::cuda::within_scatter(d_x, ldx, d_y, n_local, d, C, out.d_means, out.ldm, d_sw, d, {}, stream);
//   nc::nccl::allreduce_stats(out, C, d, d_sw, d, comm, stream);
//   // now every rank holds counts, means, squared deviations and S_W of all ranks' rows
//
// Exact merge (as nc::ClassStats::merge and nc::mpi::allreduce): with n_rc, mu_rc the count
// and mean of class c on rank r and mu_c the global mean,
//   counts  n_c   = sum_r n_rc                                      (int64, exact)
//   means   mu_c  = (sum_r n_rc mu_rc) / n_c                        (float64 sums)
//   sq_dev  q_c   = sum_r [q_rc + n_rc ||mu_rc - mu_c||^2]
//   S_W           = sum_r [S_W,r + sum_c n_rc (mu_rc - mu_c)(mu_rc - mu_c)^T]
// All sums are float64 allreduces, so the result equals the single-device statistics of the
// concatenated rows up to float64 rounding (the order of the rank sum is NCCL's, fixed for a
// given communicator); it does not depend on how the rows are split beyond that rounding.
//
// Communication per call: 8 C (counts) + 8 C D (sums) + 8 C (squared deviations) bytes, plus
// 8 D^2 with the scatter, and one 48-byte agreement check; scratch on the device:
// 8 (3 C D + C) bytes. Every rank must call it with the same C, D and scatter choice; a rank
// that disagrees gets nc::error on every rank (the check runs before any statistic moves).
#pragma once

#include <nccl.h>

#include <cmath>
#include <string>

#include "../cuda/common.cuh"
#include "../cuda/stats.cuh"

namespace nc::nccl {

using nc::Index;

namespace detail {

[[noreturn]] inline void throw_nccl(ncclResult_t r, const char* call, const char* file, int line) {
  throw ::nc::cuda_error("ncml: NCCL call " + std::string(call) + " failed: " + ncclGetErrorString(r) +
                         " (" + ::nc::cuda::detail::base_name(file) + ":" + std::to_string(line) + ")");
}

}  // namespace detail

/// Throws nc::cuda_error when the NCCL call does not return ncclSuccess.
#define NC_NCCL_TRY(call)                                                          \
  do {                                                                             \
    const ncclResult_t nc_nccl_try_r_ = (call);                                    \
    if (nc_nccl_try_r_ != ncclSuccess)                                             \
      ::nc::nccl::detail::throw_nccl(nc_nccl_try_r_, #call, __FILE__, __LINE__);   \
  } while (0)

namespace detail {

/// sums[c, j] = counts[c] * means[c, j]; keeps a copy of the local means and counts.
static __global__ void ncml_nccl_to_sums(const long long* counts, const double* means, Index ldm, Index C, Index d,
                                  double* sums, double* local_means, long long* local_counts) {
  const long long total = static_cast<long long>(C) * d;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long c = i / d, j = i % d;
    const double m = means[c * ldm + j];
    local_means[i] = m;
    sums[i] = static_cast<double>(counts[c]) * m;
    if (j == 0) local_counts[c] = counts[c];
  }
}

/// One warp per class: the global mean from the reduced sums and counts, the local offset
/// delta = mu_rc - mu_c (stored scaled by sqrt(n_rc) for the scatter correction) and
/// q_rc += n_rc ||delta||^2 (a fixed-order warp reduction: deterministic).
static __global__ void ncml_nccl_finish_means(const long long* counts, const double* sums, const double* local_means,
                                       const long long* local_counts, Index C, Index d, double* means,
                                       Index ldm, double* sq_dev, double* scaled_delta) {
  const long long warp = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= C) return;
  const long long c = warp;
  const double n = static_cast<double>(counts[c]);
  const double nr = static_cast<double>(local_counts[c]);
  const double s = sqrt(nr);
  double acc = 0;
  for (long long j = lane; j < d; j += 32) {
    const double g = n > 0 ? sums[c * d + j] / n : 0.0;
    const double delta = nr > 0 ? local_means[c * d + j] - g : 0.0;
    means[c * ldm + j] = g;
    scaled_delta[c * d + j] = s * delta;
    acc += delta * delta;
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if (lane == 0) sq_dev[c] += nr * acc;
}

/// Upper triangle of the column-major [d, d] matrix (leading dimension ld) from the lower.
static __global__ void ncml_nccl_mirror_lower(double* s, Index d, Index ld) {
  const long long total = static_cast<long long>(d) * d;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long col = i / d, row = i % d;  // column-major (col, row) with row < col: upper
    if (row < col) s[col * ld + row] = s[row * ld + col];
  }
}

/// The collectives allreduce_stats needs, on NCCL. (A test stands in another reducer with
/// the same members to check the merge on one device.)
struct NcclReducer {
  ncclComm_t comm;
  void group_begin() { NC_NCCL_TRY(ncclGroupStart()); }
  void group_end() { NC_NCCL_TRY(ncclGroupEnd()); }
  void sum(long long* p, std::size_t n, cudaStream_t s) { NC_NCCL_TRY(ncclAllReduce(p, p, n, ncclInt64, ncclSum, comm, s)); }
  void sum(double* p, std::size_t n, cudaStream_t s) { NC_NCCL_TRY(ncclAllReduce(p, p, n, ncclFloat64, ncclSum, comm, s)); }
  void max(long long* p, std::size_t n, cudaStream_t s) { NC_NCCL_TRY(ncclAllReduce(p, p, n, ncclInt64, ncclMax, comm, s)); }
};

/// Every rank's (C, D, scatter flag) agree: max and min over ranks of (C, D, flag) compared.
template <class Reducer>
void check_agreement(Index C, Index d, bool scatter, Reducer& red, cudaStream_t stream,
                            ::nc::cuda::DeviceAllocator& alloc) {
  long long mine[6] = {C, d, scatter ? 1 : 0, -C, -static_cast<long long>(d), scatter ? -1 : 0};
  ::nc::cuda::DeviceBuffer<long long> buf(6, stream, alloc);
  ::nc::cuda::detail::upload(buf.data(), mine, 6, stream);
  red.max(buf.data(), 6, stream);
  long long all[6];
  ::nc::cuda::detail::download(all, buf.data(), 6, stream);
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  // all[0..2] = max, -all[3..5] = min over ranks: equal on every rank, so every rank throws.
  NC_EXPECTS(all[0] == -all[3] && all[1] == -all[4] && all[2] == -all[5],
             "nccl::allreduce_stats: ranks disagree: num_classes from " << -all[3] << " to " << all[0]
                 << ", dimension from " << -all[4] << " to " << all[1]
                 << ", within-scatter given on " << (all[2] == -all[5] ? "all" : "some but not all")
                 << " ranks (this rank: num_classes = " << C << ", dimension = " << d << ")");
}

template <class Reducer>
void allreduce_stats_with(Reducer& red, const ::nc::cuda::ClassStatsOutput& stats, Index num_classes, Index d,
                          double* d_scatter, Index lds, cudaStream_t stream, ::nc::cuda::DeviceAllocator& alloc,
                          cublasHandle_t cublas);

}  // namespace detail

/// Replaces each rank's statistics of its own rows by those of all ranks' rows, in place:
/// `stats` as written by nc::cuda::class_stats (counts [C], means [C, ldm], squared
/// deviations [C]) and, when `d_scatter` is not null, the within-class scatter S_W [d, d]
/// (leading dimension lds, float64, around this rank's own class means, as written by
/// nc::cuda::within_scatter). Collective over `comm`; asynchronous on `stream` after the
/// agreement check (one small synchronizing allreduce). Throws nc::error for invalid
/// arguments or when ranks disagree, and nc::cuda_error for CUDA, cuBLAS and NCCL failures.
inline void allreduce_stats(const ::nc::cuda::ClassStatsOutput& stats, Index num_classes, Index d,
                            double* d_scatter, Index lds, ncclComm_t comm, cudaStream_t stream = 0,
                            ::nc::cuda::DeviceAllocator& alloc = ::nc::cuda::default_allocator(),
                            cublasHandle_t cublas = nullptr) {
  NC_EXPECTS(comm != nullptr, "nccl::allreduce_stats: comm is null");
  detail::NcclReducer red{comm};
  detail::allreduce_stats_with(red, stats, num_classes, d, d_scatter, lds, stream, alloc, cublas);
}

namespace detail {

template <class Reducer>
void allreduce_stats_with(Reducer& red, const ::nc::cuda::ClassStatsOutput& stats, Index num_classes, Index d,
                          double* d_scatter, Index lds, cudaStream_t stream, ::nc::cuda::DeviceAllocator& alloc,
                          cublasHandle_t cublas) {
  NC_EXPECTS(num_classes > 0, "nccl::allreduce_stats: num_classes must be positive, got " << num_classes);
  NC_EXPECTS(d > 0, "nccl::allreduce_stats: d must be positive, got " << d);
  NC_EXPECTS(stats.d_counts && stats.d_means && stats.d_sq_dev, "nccl::allreduce_stats: an output pointer is null");
  NC_EXPECTS(stats.ldm >= d, "nccl::allreduce_stats: ldm = " << stats.ldm << " is smaller than d = " << d);
  NC_EXPECTS(d_scatter == nullptr || lds >= d,
             "nccl::allreduce_stats: lds = " << lds << " is smaller than d = " << d);
  check_agreement(num_classes, d, d_scatter != nullptr, red, stream, alloc);

  const Index C = num_classes;
  const std::size_t cd = static_cast<std::size_t>(C) * static_cast<std::size_t>(d);
  ::nc::cuda::DeviceBuffer<double> sums(cd, stream, alloc), local_means(cd, stream, alloc),
      delta(cd, stream, alloc);
  ::nc::cuda::DeviceBuffer<long long> local_counts(static_cast<std::size_t>(C), stream, alloc);
  const unsigned grid = ::nc::cuda::detail::wide_grid(static_cast<long long>(cd), 256);
  ncml_nccl_to_sums<<<grid, 256, 0, stream>>>(stats.d_counts, stats.d_means, stats.ldm, C, d, sums.data(),
                                                      local_means.data(), local_counts.data());
  NC_CUDA_CHECK_LAUNCH();

  red.group_begin();
  red.sum(stats.d_counts, static_cast<std::size_t>(C), stream);
  red.sum(sums.data(), cd, stream);
  red.group_end();

  const unsigned warps_grid = static_cast<unsigned>((static_cast<long long>(C) * 32 + 255) / 256);
  ncml_nccl_finish_means<<<warps_grid, 256, 0, stream>>>(stats.d_counts, sums.data(), local_means.data(),
                                                                  local_counts.data(), C, d, stats.d_means, stats.ldm,
                                                                  stats.d_sq_dev, delta.data());
  NC_CUDA_CHECK_LAUNCH();

  if (d_scatter != nullptr) {
    // S_W,r += D^T D with D = diag(sqrt(n_rc)) (mu_rc - mu_c) [C, d] row-major, i.e. the
    // column-major [d, C] matrix A = D^T: S += A A^T (lower triangle, then mirrored). S_W is
    // symmetric, so its row- and column-major layouts are the same matrix.
    ::nc::cuda::detail::CublasScope scope(cublas ? cublas : ::nc::cuda::detail::default_cublas(), stream, nullptr, 0);
    const double one = 1.0;
    NC_CUBLAS_TRY(cublasDsyrk(scope.get(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, static_cast<int>(d),
                              static_cast<int>(C), &one, delta.data(), static_cast<int>(d), &one, d_scatter,
                              static_cast<int>(lds)));
    ncml_nccl_mirror_lower<<<::nc::cuda::detail::wide_grid(static_cast<long long>(d) * d, 256), 256, 0,
                                     stream>>>(d_scatter, d, lds);
    NC_CUDA_CHECK_LAUNCH();
  }

  red.group_begin();
  red.sum(stats.d_sq_dev, static_cast<std::size_t>(C), stream);
  if (d_scatter != nullptr && lds == d) {
    red.sum(d_scatter, static_cast<std::size_t>(d) * d, stream);
  } else if (d_scatter != nullptr) {
    for (Index r = 0; r < d; ++r) {
      double* row = d_scatter + static_cast<std::size_t>(r) * static_cast<std::size_t>(lds);
      red.sum(row, static_cast<std::size_t>(d), stream);
    }
  }
  red.group_end();
}

}  // namespace detail

}  // namespace nc::nccl
