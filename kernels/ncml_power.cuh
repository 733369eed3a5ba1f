// ncml kernels: NC directions. pc1 is the top right singular vector of each class's uncentred
// rows E_c, found by a power iteration batched over classes: w_c = E_c^T (E_c v_c), one pass
// for the dots t_i = x_i . v_{y_i} and one weighted class sum (stats_sorted<MODE 1>), both
// over the rows grouped by class, in float64.
#pragma once

#include "ncml_common.cuh"
#include "ncml_stats.cuh"

namespace nc::cuda::kernels {

enum : int { kActive = 0, kConverged = 1, kFailed = 2 };

/// t[p] = x_{order[p]} . v_{class} for grouped positions p of the classes still active.
/// One warp per position.
NC_KERNEL void __launch_bounds__(256)
row_dots(const float* __restrict__ x, long long ld, const int* __restrict__ y,
         const int* __restrict__ order, const unsigned long long* __restrict__ start, int num_classes,
         int d, const double* __restrict__ v, const int* __restrict__ state, double* __restrict__ t) {
  const int lane = lane_id();
  const long long n = static_cast<long long>(start[num_classes]);  // grouped positions
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  for (long long p = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32; p < n;
       p += warps) {
    const int i = order[p];
    const int c = y[i];
    if (c < 0 || state[c] != kActive) continue;
    const float* row = x + static_cast<long long>(i) * ld;
    const double* vc = v + static_cast<long long>(c) * d;
    double s = 0;
    for (int col = lane; col < d; col += 32) s += static_cast<double>(row[col]) * vc[col];
    s = warp_sum(s);
    if (lane == 0) t[p] = s;
  }
}

/// v_c = s_c / ||s_c|| from the class sums (a vector of ones, normalized, for a zero sum).
NC_KERNEL void power_init(const double* __restrict__ sums, int num_classes, int d,
                           double* __restrict__ v, int* __restrict__ state) {
  const int lane = lane_id();
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  for (long long c = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32;
       c < num_classes; c += warps) {
    const double* s = sums + c * d;
    double q = 0;
    for (int col = lane; col < d; col += 32) q += s[col] * s[col];
    q = warp_sum(q);
    const double nrm = sqrt(q);
    for (int col = lane; col < d; col += 32)
      v[c * d + col] = nrm > 0 ? s[col] / nrm : 1.0 / sqrt(static_cast<double>(d));
    if (lane == 0) state[c] = kActive;
  }
}

/// One power step for the active classes: lambda = v . w, r = ||w - lambda v||, v = w / ||w||;
/// converged when r <= tol * lambda, failed when lambda <= 0. Zeroes w for classes that span
/// windows (their next sum accumulates with atomics). Counts the classes still active.
NC_KERNEL void power_update(const unsigned long long* __restrict__ start, int num_classes, int d,
                             double* __restrict__ w, double* __restrict__ v,
                             int* __restrict__ state, double tol, int* __restrict__ active) {
  const int lane = lane_id();
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  for (long long c = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32;
       c < num_classes; c += warps) {
    if (state[c] != kActive) continue;
    double* wc = w + c * d;
    double* vc = v + c * d;
    double lam = 0, ww = 0;
    for (int col = lane; col < d; col += 32) {
      lam += vc[col] * wc[col];
      ww += wc[col] * wc[col];
    }
    lam = warp_sum(lam);
    ww = warp_sum(ww);
    const double nw = sqrt(ww);
    if (!(lam > 0) || !(nw > 0)) {
      if (lane == 0) state[c] = kFailed;
      continue;
    }
    double r2 = 0;
    for (int col = lane; col < d; col += 32) {
      const double e = wc[col] - lam * vc[col];
      r2 += e * e;
    }
    r2 = warp_sum(r2);
    const unsigned long long b = start[c], e = start[c + 1];
    const bool split = b / kWindow != (e - 1) / kWindow;
    for (int col = lane; col < d; col += 32) {
      vc[col] = wc[col] / nw;
      if (split) wc[col] = 0.0;
    }
    if (lane == 0) {
      if (sqrt(r2) <= tol * lam) state[c] = kConverged;
      else atomicAdd(active, 1);
    }
  }
}

/// dirs[c, :] = float(+-v_c), signed so that v_c . s_c >= 0 (s_c the class sum); with
/// v_c . s_c = 0 the largest-magnitude component (the first one) is made positive.
NC_KERNEL void power_finish(const double* __restrict__ v, const double* __restrict__ sums,
                             int num_classes, int d, float* __restrict__ dirs, long long ldo) {
  const int lane = lane_id();
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  for (long long c = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32;
       c < num_classes; c += warps) {
    const double* vc = v + c * d;
    const double* sc = sums + c * d;
    double side = 0, best = -1;
    int arg = d;
    for (int col = lane; col < d; col += 32) {
      side += vc[col] * sc[col];
      const double m = fabs(vc[col]);
      if (m > best) {
        best = m;
        arg = col;
      }
    }
    side = warp_sum(side);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const double ob = __shfl_xor_sync(kFullMask, best, o);
      const int oa = __shfl_xor_sync(kFullMask, arg, o);
      if (ob > best || (ob == best && oa < arg)) {
        best = ob;
        arg = oa;
      }
    }
    if (side == 0) side = vc[arg];
    const double sign = side < 0 ? -1.0 : 1.0;
    for (int col = lane; col < d; col += 32) dirs[c * ldo + col] = static_cast<float>(sign * vc[col]);
  }
}

/// dirs[c, :] = (means[c, :] - gm) / ||.|| (gm may be null: plain class means). A centred
/// mean within rounding of zero (64 eps of ||mu_c|| + ||gm||) or a zero mean gets flag 1.
NC_KERNEL void normalize_means(const double* __restrict__ means, long long ldm, int num_classes,
                                int d, const double* __restrict__ gm, double gm_norm,
                                float* __restrict__ dirs, long long ldo, int* __restrict__ zero) {
  const int lane = lane_id();
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  for (long long c = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32;
       c < num_classes; c += warps) {
    const double* m = means + c * ldm;
    double q = 0, mq = 0;
    for (int col = lane; col < d; col += 32) {
      const double e = m[col] - (gm ? gm[col] : 0.0);
      q += e * e;
      mq += m[col] * m[col];
    }
    q = warp_sum(q);
    mq = warp_sum(mq);
    const double nrm = sqrt(q);
    const bool is_zero = gm ? nrm <= 64 * 2.220446049250313e-16 * (sqrt(mq) + gm_norm) : !(nrm > 0);
    for (int col = lane; col < d; col += 32) {
      const double e = m[col] - (gm ? gm[col] : 0.0);
      dirs[c * ldo + col] = is_zero ? 0.0f : static_cast<float>(e / nrm);
    }
    if (lane == 0) zero[c] = is_zero ? 1 : 0;
  }
}

/// means[c, :] = sums[c, :] / n_c (zero rows for empty classes).
NC_KERNEL void means_from_sums(const double* __restrict__ sums, const unsigned long long* __restrict__ counts,
                               int num_classes, int d, double* __restrict__ means) {
  const long long total = static_cast<long long>(num_classes) * d;
  for (long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<long long>(gridDim.x) * blockDim.x) {
    const unsigned long long n = counts[t / d];
    means[t] = n ? sums[t] / static_cast<double>(n) : 0.0;
  }
}

/// out[j, :] = x[idx[j], :] for j < count (a class's rows, for the host fallback).
NC_KERNEL void gather_rows(const float* __restrict__ x, long long ld, const int* __restrict__ idx,
                           long long count, int d, float* __restrict__ out) {
  const long long total = count * d;
  for (long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<long long>(gridDim.x) * blockDim.x)
    out[t] = x[static_cast<long long>(idx[t / d]) * ld + t % d];
}

}  // namespace nc::cuda::kernels
