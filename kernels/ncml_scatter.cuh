// ncml kernels: centring of row chunks by their class means (for the within-class scatter and
// the NC1 projection), float64 accumulation of chunk products, sums of squares, and the
// centred class means.
#pragma once

#include "ncml_common.cuh"

namespace nc::cuda::kernels {

/// out[k, :] = float(double(x[r0 + k, :]) - mean[y[r0 + k], :]) for k < rows (zero rows past
/// n or with an invalid label). With `split`, out[k, 0:d] is the TF32 part of that value and
/// out[k, d:2d] the TF32 rounding of the rest (hi + lo carries about 21 bits).
NC_KERNEL void center_rows(const float* __restrict__ x, long long ld, const int* __restrict__ y,
                            long long n, int d, const double* __restrict__ means, long long ldm,
                            long long r0, int rows, float* __restrict__ out, long long ldo,
                            int split, DeviceStatus* st) {
  const long long total = static_cast<long long>(rows) * d;
  for (long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long k = t / d;
    const int col = static_cast<int>(t % d);
    const long long r = r0 + k;
    float v = 0.0f;
    const int c = r < n ? y[r] : -1;
    if (c >= 0) {
      const float xv = x[r * ld + col];
      if (!finite(xv)) report(st, 0, static_cast<unsigned long long>(r) * d + col);
      v = static_cast<float>(static_cast<double>(xv) - means[c * ldm + col]);
    }
    if (split) {
      const float hi = round_tf32(v);
      out[k * ldo + col] = hi;
      out[k * ldo + d + col] = round_tf32(v - hi);
    } else {
      out[k * ldo + col] = v;
    }
  }
}

/// acc[i] += sum over b of prods[b * stride + i], in order of b.
NC_KERNEL void add_products(const float* __restrict__ prods, int batch, long long stride,
                             long long count, double* __restrict__ acc) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    double s = acc[i];
    for (int b = 0; b < batch; ++b) s += static_cast<double>(prods[b * stride + i]);
    acc[i] = s;
  }
}

/// out[i, j] = (acc[i, j] + acc[j, i]) / 2 for the d x d accumulator (exactly symmetric).
NC_KERNEL void symmetrize(const double* __restrict__ acc, int d, double* __restrict__ out,
                           long long ldo) {
  const long long total = static_cast<long long>(d) * d;
  for (long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long i = t / d, j = t % d;
    out[i * ldo + j] = 0.5 * (acc[i * d + j] + acc[j * d + i]);
  }
}

constexpr int kReduceThreads = 256;

/// partial[blockIdx] = sum of squares of z[0..count) over the block's grid-stride share, in
/// float64 (a fixed grid gives a fixed order).
NC_KERNEL void __launch_bounds__(kReduceThreads)
sum_squares(const float* __restrict__ z, long long count, double* __restrict__ partial) {
  __shared__ double sw[kReduceThreads / 32];
  double s = 0;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const double v = z[i];
    s += v * v;
  }
  s = warp_sum(s);
  if (lane_id() == 0) sw[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < kReduceThreads / 32; ++w) t += sw[w];
    partial[blockIdx.x] = t;
  }
}

/// total[0] += partial[0] + ... + partial[m - 1] (one thread, in order).
NC_KERNEL void add_partials(const double* __restrict__ partial, int m, double* __restrict__ total) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    double t = total[0];
    for (int i = 0; i < m; ++i) t += partial[i];
    total[0] = t;
  }
}

/// Global mean gm [d] of the class means: weighted by counts (sum n_c mu_c / N) or the plain
/// average over the classes with samples. One thread per column.
NC_KERNEL void global_mean(const double* __restrict__ means, long long ldm,
                            const long long* __restrict__ counts, int num_classes, int d,
                            int weighted, double* __restrict__ gm) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= d) return;
  double s = 0, w = 0;
  for (int c = 0; c < num_classes; ++c) {
    const long long n = counts[c];
    if (n == 0) continue;
    const double wc = weighted ? static_cast<double>(n) : 1.0;
    s += wc * means[c * ldm + col];
    w += wc;
  }
  gm[col] = w > 0 ? s / w : 0.0;
}

/// mt[c, :] = mean[c, :] - gm for classes with samples, zero rows otherwise ([C, d] compact).
NC_KERNEL void centred_means(const double* __restrict__ means, long long ldm,
                              const long long* __restrict__ counts, int num_classes, int d,
                              const double* __restrict__ gm, double* __restrict__ mt) {
  const long long total = static_cast<long long>(num_classes) * d;
  for (long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long c = t / d;
    const int col = static_cast<int>(t % d);
    mt[t] = counts[c] > 0 ? means[c * ldm + col] - gm[col] : 0.0;
  }
}

/// The projection a [d, r] (column-major, float64) for the float GEMM: hi = float(a). With
/// `split`, hi is [2d, r] holding the TF32 part twice (rows 0..d and d..2d, to multiply
/// [x_hi | x_lo]) and lo [d, r] the TF32 rounding of the rest.
NC_KERNEL void convert_projection(const double* __restrict__ a, int d, long long r, int split,
                                   float* __restrict__ hi, float* __restrict__ lo) {
  const long long count = static_cast<long long>(d) * r;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const float v = static_cast<float>(a[i]);
    if (split) {
      const long long j = i / d, row = i % d;
      const float h = round_tf32(v);
      hi[j * 2 * d + row] = h;
      hi[j * 2 * d + d + row] = h;
      lo[i] = round_tf32(v - h);
    } else {
      hi[i] = v;
    }
  }
}

/// Counts derived from the labels must equal the counts of the given statistics.
NC_KERNEL void compare_counts(const unsigned long long* __restrict__ from_labels,
                               const long long* __restrict__ given, int num_classes,
                               DeviceStatus* st) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < num_classes; c += gridDim.x * blockDim.x)
    if (static_cast<long long>(from_labels[c]) != given[c]) report(st, 4, static_cast<unsigned long long>(c));
}

}  // namespace nc::cuda::kernels
