// ncml GPU path: NC1 = (1/C') tr(Sigma_W Sigma_B^+), projected path, without a D x D
// inverse and without the within-class scatter.
//
//   nc::NC1Result r = nc::cuda::nc1(features, labels);                     // Eigen in
//   nc::NC1Result s = nc::cuda::nc1(d_x, ldx, d_y, n, d, C, d_counts, d_means, ldm);
//
// With M~ the centred class means (rows mu_c - mu_G of the classes with samples, zero rows
// for empty classes), Sigma_B = M~^T M~ / C' and NC1 = (1/N) sum_i ||A^T (x_i - mu_{y_i})||^2
// with A = V_r S_r^-1 from M~ = U S V^T. The spectrum comes from the smaller Gram matrix
// (M~ M~^T, C x C, or M~^T M~, D x D), formed on the GPU in float64 and decomposed on the
// host; eigenvalues at or below max(C', D) * eps * lambda_max are dropped, as in the CPU exact
// path (or rank_tol^2 when given). The O(N D r) pass over the rows runs on the GPU: rows
// centred in float64 and rounded to float (as the CPU does), projected by cuBLAS in chunks,
// squared norms summed in float64.
//
// Precision::tf32 selects "3xTF32" for the projection: each operand is split into a TF32
// part and a TF32 remainder and three tensor-core products recover float32 accuracy (about
// 2^-21 relative) at TF32 speed. Precision::bf16 is not offered here.
#pragma once

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include <ncml_scatter.cuh>

#include <cmath>
#include <limits>
#include <vector>

#include "common.cuh"
#include "stats.cuh"

namespace nc::cuda {

/// NC1 with the numerical rank it used (the fields of nc::NC1Result, projected path).
struct NC1Result {
  double value = std::numeric_limits<double>::quiet_NaN();
  /// Singular directions of M~ kept.
  Index rank = 0;
  /// Classes with at least one sample (C').
  Index num_classes_used = 0;
  /// The threshold applied, in units of the singular values of M~.
  double tolerance = 0;
};

struct NC1Options {
  /// Singular values of M~ at or below this are dropped (-1: the default tolerance above).
  double rank_tol = -1;
  /// mu_G = the unweighted average of the class means instead of the sample-weighted mean.
  bool unweighted_global_mean = false;
  /// fp32 (default) or tf32 (3xTF32 projection).
  Precision precision = Precision::fp32;
  /// Rows per projected chunk (0: 16384).
  Index chunk_rows = 0;
  cublasHandle_t cublas = nullptr;
};

namespace detail {

struct NC1Plan {
  Index chunk = 16384, rmax = 0;
  bool split = false;
  int* y32 = nullptr;
  unsigned long long* counts = nullptr;
  double* gm = nullptr;
  double* mt = nullptr;
  double* gram = nullptr;
  double* basis = nullptr;  // [C, r] or [d, r]
  double* proj = nullptr;   // [d, r] float64
  float* a_hi = nullptr;    // [d or 2d, r]
  float* a_lo = nullptr;    // [d, r]
  float* centred = nullptr;
  float* z = nullptr;
  double* partial = nullptr;
  double* total = nullptr;
  void* cublas_ws = nullptr;
  unsigned reduce_grid = 1;
};

inline NC1Plan plan_nc1(Carver& c, Index n, Index d, Index C, const NC1Options& o) {
  NC_EXPECTS(o.precision != Precision::bf16, "nc1: Precision::bf16 is not offered (use fp32 or tf32)");
  NC1Plan p;
  p.split = o.precision == Precision::tf32;
  p.chunk = std::min<Index>(o.chunk_rows > 0 ? o.chunk_rows : 16384, n);
  p.rmax = std::min(C, d);
  const Index g = std::min(C, d);
  p.y32 = c.take<int>(static_cast<std::size_t>(n));
  p.counts = c.take<unsigned long long>(static_cast<std::size_t>(C) + 1);
  p.gm = c.take<double>(static_cast<std::size_t>(d));
  p.mt = c.take<double>(static_cast<std::size_t>(C) * d);
  p.gram = c.take<double>(static_cast<std::size_t>(g) * g);
  p.basis = c.take<double>(static_cast<std::size_t>(g) * p.rmax);
  p.proj = c.take<double>(static_cast<std::size_t>(d) * p.rmax);
  p.a_hi = c.take<float>(static_cast<std::size_t>(p.split ? 2 : 1) * d * p.rmax);
  p.a_lo = p.split ? c.take<float>(static_cast<std::size_t>(d) * p.rmax) : nullptr;
  p.centred = c.take<float>(static_cast<std::size_t>(p.chunk) * (p.split ? 2 : 1) * d);
  p.z = c.take<float>(static_cast<std::size_t>(p.chunk) * p.rmax);
  p.reduce_grid = 1024;
  p.partial = c.take<double>(p.reduce_grid);
  p.total = c.take<double>(1);
  p.cublas_ws = c.take<char>(kCublasWorkspace);
  return p;
}

}  // namespace detail

/// Projected NC1 of `d_x` [n, d] with labels [n] against the statistics `d_counts` [C] and
/// `d_means` [C, ldm] (from class_stats over the same rows, checked through the counts).
/// Synchronous (the small eigendecomposition runs on the host); scratch from `alloc`.
template <class L>
NC1Result nc1(const float* d_x, Index ldx, const L* d_labels, Index n, Index d, Index num_classes,
              const long long* d_counts, const double* d_means, Index ldm,
              const NC1Options& options = {}, cudaStream_t stream = 0,
              DeviceAllocator& alloc = default_allocator()) {
  using namespace detail;
  check_label_type<L>();
  check_stats_args(d_x, ldx, n, d, num_classes);
  NC_EXPECTS(d_counts && d_means, "nc1: a null device pointer");
  NC_EXPECTS(ldm >= d, "nc1: ldm = " << ldm << " is smaller than d = " << d);
  const Index C = num_classes;

  std::vector<long long> counts(static_cast<std::size_t>(C));
  download(counts.data(), d_counts, counts.size(), stream);
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  long long total = 0;
  std::vector<Index> nonempty;
  for (Index c = 0; c < C; ++c) {
    total += counts[c];
    if (counts[c] > 0) nonempty.push_back(c);
  }
  const Index used = static_cast<Index>(nonempty.size());
  NC_EXPECTS(total > 0, "stats hold no samples");
  NC_EXPECTS(used >= 2, "NC metrics need at least 2 classes with samples, got "
                            << used << " (class " << nc::detail::join_indices(nonempty) << ") of " << C);

  Carver sizing;
  sizing.take<StatusBlock>(1);
  plan_nc1(sizing, n, d, C, options);
  DeviceBuffer<char> buf(sizing.bytes(), stream, alloc);
  Carver c(buf.data(), buf.size());
  auto* status = c.take<StatusBlock>(1);
  const NC1Plan p = plan_nc1(c, n, d, C, options);
  init_status(status, kOpStats, stream);

  // Labels, and the counts they imply against the given statistics.
  NC_CUDA_TRY(cudaMemsetAsync(p.counts, 0, sizeof(unsigned long long) * (C + 1), stream));
  kernels::label_pass<L><<<grid_for(n, 256, std::numeric_limits<int>::max()), 256, 0, stream>>>(
      d_labels, n, C, p.y32, p.counts, nullptr, &status->s, 2);
  NC_CUDA_CHECK_LAUNCH();
  kernels::compare_counts<<<wide_grid(C, 256), 256, 0, stream>>>(p.counts, d_counts, int(C), &status->s);
  NC_CUDA_CHECK_LAUNCH();

  // Centred means and the smaller Gram matrix.
  kernels::global_mean<<<grid_for(d, 128, std::numeric_limits<int>::max()), 128, 0, stream>>>(
      d_means, ldm, d_counts, int(C), int(d), options.unweighted_global_mean ? 0 : 1, p.gm);
  NC_CUDA_CHECK_LAUNCH();
  kernels::centred_means<<<wide_grid(C * d, 256), 256, 0, stream>>>(d_means, ldm, d_counts, int(C), int(d), p.gm, p.mt);
  NC_CUDA_CHECK_LAUNCH();
  CublasScope blas(options.cublas ? options.cublas : default_cublas(), stream, p.cublas_ws, kCublasWorkspace);
  const double one = 1.0, zero = 0.0;
  const bool small_c = C <= d;
  const Index g = small_c ? C : d;
  // mt is row-major [C, d], i.e. column-major d x C with leading dimension d.
  if (small_c)
    NC_CUBLAS_TRY(cublasDsyrk(blas.get(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, int(C), int(d), &one,
                              p.mt, int(d), &zero, p.gram, int(C)));
  else
    NC_CUBLAS_TRY(cublasDsyrk(blas.get(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, int(d), int(C), &one,
                              p.mt, int(d), &zero, p.gram, int(d)));
  Eigen::MatrixXd gram(g, g);
  download(gram.data(), p.gram, static_cast<std::size_t>(g) * g, stream);
  finish_status(status, d_x, ldx, d, nullptr, 0, 1, d_labels, sizeof(L), nullptr, 0, stream);
  throw_status(read_status(status, stream), C);

  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(gram);  // reads the lower triangle
  NC_EXPECTS(es.info() == Eigen::Success, "nc1: the eigensolver did not converge");
  const Eigen::VectorXd& lambda = es.eigenvalues();  // ascending
  const double l_max = lambda[g - 1];
  NC_EXPECTS(l_max > 0, "all " << used << " class means coincide: Sigma_B = 0 and NC1 is undefined");
  const double l_tol = options.rank_tol >= 0
                           ? options.rank_tol * options.rank_tol
                           : double(std::max(used, d)) * std::numeric_limits<double>::epsilon() * l_max;
  Index r = 0;
  while (r < g && lambda[g - 1 - r] > l_tol) ++r;
  NC_EXPECTS(r > 0, "rank_tol = " << options.rank_tol << " is at or above the largest singular value "
                                  << std::sqrt(l_max) << " of the centred class means");

  // A = V_r S_r^-1 [d, r], column-major: M~^T U_r Lambda_r^-1 from the C x C Gram matrix,
  // or V_r Lambda_r^-1/2 from the D x D one.
  Eigen::MatrixXd basis = es.eigenvectors().rightCols(r);
  for (Index j = 0; j < r; ++j)
    basis.col(j) /= small_c ? lambda[g - r + j] : std::sqrt(lambda[g - r + j]);
  if (small_c) {
    upload(p.basis, basis.data(), static_cast<std::size_t>(C) * r, stream);
    NC_CUBLAS_TRY(cublasDgemm(blas.get(), CUBLAS_OP_N, CUBLAS_OP_N, int(d), int(r), int(C), &one, p.mt,
                              int(d), p.basis, int(C), &zero, p.proj, int(d)));
  } else {
    upload(p.proj, basis.data(), static_cast<std::size_t>(d) * r, stream);
  }
  kernels::convert_projection<<<wide_grid(d * r, 256), 256, 0, stream>>>(p.proj, int(d), r, p.split ? 1 : 0,
                                                                          p.a_hi, p.a_lo);
  NC_CUDA_CHECK_LAUNCH();

  // The pass over the rows.
  NC_CUDA_TRY(cudaMemsetAsync(p.total, 0, sizeof(double), stream));
  const float fone = 1.0f, fzero = 0.0f;
  const cublasComputeType_t ct = p.split ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  for (long long r0 = 0; r0 < n; r0 += p.chunk) {
    const int rows = static_cast<int>(std::min<long long>(p.chunk, n - r0));
    const Index ldc = p.split ? 2 * d : d;
    kernels::center_rows<<<wide_grid(static_cast<long long>(rows) * d, 256), 256, 0, stream>>>(
        d_x, ldx, p.y32, n, int(d), d_means, ldm, r0, rows, p.centred, ldc, p.split ? 1 : 0, &status->s);
    NC_CUDA_CHECK_LAUNCH();
    // Z^T [r, rows] = A^T [r, k] * Xc^T [k, rows] (column-major views of the row-major chunk).
    if (p.split) {
      NC_CUBLAS_TRY(cublasGemmEx(blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, int(r), rows, int(2 * d), &fone,
                                 p.a_hi, CUDA_R_32F, int(2 * d), p.centred, CUDA_R_32F, int(ldc), &fzero,
                                 p.z, CUDA_R_32F, int(r), ct, CUBLAS_GEMM_DEFAULT));
      NC_CUBLAS_TRY(cublasGemmEx(blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, int(r), rows, int(d), &fone, p.a_lo,
                                 CUDA_R_32F, int(d), p.centred, CUDA_R_32F, int(ldc), &fone, p.z,
                                 CUDA_R_32F, int(r), ct, CUBLAS_GEMM_DEFAULT));
    } else {
      NC_CUBLAS_TRY(cublasGemmEx(blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, int(r), rows, int(d), &fone, p.a_hi,
                                 CUDA_R_32F, int(d), p.centred, CUDA_R_32F, int(ldc), &fzero, p.z,
                                 CUDA_R_32F, int(r), ct, CUBLAS_GEMM_DEFAULT));
    }
    kernels::sum_squares<<<p.reduce_grid, kernels::kReduceThreads, 0, stream>>>(
        p.z, static_cast<long long>(rows) * r, p.partial);
    NC_CUDA_CHECK_LAUNCH();
    kernels::add_partials<<<1, 32, 0, stream>>>(p.partial, int(p.reduce_grid), p.total);
    NC_CUDA_CHECK_LAUNCH();
  }
  finish_status(status, d_x, ldx, d, nullptr, 0, 1, d_labels, sizeof(L), nullptr, 0, stream);
  double acc = 0;
  download(&acc, p.total, 1, stream);
  throw_status(read_status(status, stream), C);

  NC1Result res;
  res.value = acc / double(n);
  res.rank = r;
  res.num_classes_used = used;
  res.tolerance = std::sqrt(l_tol);
  return res;
}

/// NC1 of host features [N, D] (computed in float32 on the GPU) with labels [N]: class
/// statistics and the projected pass, both on the GPU.
template <class D, class Labels>
NC1Result nc1(const Eigen::MatrixBase<D>& features, const Labels& labels, Index num_classes = -1,
              const NC1Options& options = {}, cudaStream_t stream = 0) {
  const detail::DeviceLabelledRows rows = detail::upload_labelled_rows(features, labels, num_classes, stream);
  const Index n = rows.n, d = rows.d;
  const DeviceBuffer<float>& dx = rows.x;
  const DeviceBuffer<int64_t>& dy = rows.y;
  DeviceBuffer<long long> dc(num_classes, stream);
  DeviceBuffer<double> dm(static_cast<std::size_t>(num_classes) * d, stream);
  DeviceBuffer<double> dsq(num_classes, stream);
  class_stats(dx.data(), d, dy.data(), n, d, num_classes, ClassStatsOutput{dc.data(), dm.data(), d, dsq.data()},
              {}, stream);
  return nc1(dx.data(), d, dy.data(), n, d, num_classes, dc.data(), dm.data(), d, options, stream);
}

}  // namespace nc::cuda
