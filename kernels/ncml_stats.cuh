// ncml kernels: per-class counts, means and squared deviations in one pass over the rows.
//
// Both strategies accumulate shifted sums: with k_c a fixed row of class c (its first row),
// S1_c = sum (x - k_c) and S2_c = sum ||x - k_c||^2, so that mean_c = k_c + S1_c / n_c and
// sum ||x - mean_c||^2 = S2_c - ||S1_c||^2 / n_c without the cancellation of raw moments.
//
//   - privatized (small C x D): each block keeps its own accumulators in shared memory, one
//     copy per row slot, so no two threads ever update the same entry; float partial sums
//     (or double, on request) over at most one tile of rows are added to float64 totals with
//     one atomic per entry and tile;
//   - sorted (any C): rows are grouped by class (counting sort of the labels), a warp walks
//     a window of consecutive grouped rows and sums each run of one class in registers in
//     float64; a class that lies inside one window is written directly, one that spans
//     windows is added into a slot owned by its first window and finished afterwards.
//
// Rows are read once, with 16-byte loads when rows are 16-byte aligned.
#pragma once

#include "ncml_common.cuh"

namespace nc::cuda::kernels {

template <int V>
struct Vec;
template <>
struct Vec<1> {
  __device__ __forceinline__ static void load(const float* p, float (&v)[1]) { v[0] = __ldg(p); }
};
template <>
struct Vec<4> {
  __device__ __forceinline__ static void load(const float* p, float (&v)[4]) {
    const float4 q = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
  }
};

// ---------------------------------------------------------------------------------------
// Privatized strategy.

/// p[0..V) += v with 16-byte shared-memory accesses (conflict-free across a warp).
template <int V, class Acc>
__device__ __forceinline__ void add_vec(Acc* p, const Acc (&v)[V]) {
  if constexpr (V == 4 && sizeof(Acc) == 4) {
    float4* q = reinterpret_cast<float4*>(p);
    float4 c = *q;
    c.x += v[0];
    c.y += v[1];
    c.z += v[2];
    c.w += v[3];
    *q = c;
  } else if constexpr (V == 4) {
    double2* q = reinterpret_cast<double2*>(p);
    double2 c0 = q[0], c1 = q[1];
    c0.x += v[0];
    c0.y += v[1];
    c1.x += v[2];
    c1.y += v[3];
    q[0] = c0;
    q[1] = c1;
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) p[e] += v[e];
  }
}

struct PrivateArgs {
  const float* x;
  long long ld;
  const int* y;  // int32 class ids, -1 for rows with an invalid label
  long long n;
  int d;
  int num_classes;
  const int* first;  // first row of each class (INT_MAX when empty)
  double* s1;        // [C, d] float64 totals (zeroed)
  double* s2;        // [C]
  DeviceStatus* st;
  int tpr;             // threads per row slot (power of two, <= 32)
  long long tile_rows;  // rows per block between two flushes
};

/// Shared memory: acc [slots][C][d], sq [slots][C][tpr] (Acc), shift [C][d] (float).
template <int V, class Acc>
__global__ void __launch_bounds__(256) stats_private(PrivateArgs a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nt = blockDim.x, tid = threadIdx.x;
  const int tpr = a.tpr, slots = nt / tpr, slot = tid / tpr, l = tid % tpr;
  const int d = a.d, C = a.num_classes, dv = d / V;
  const long long cd = static_cast<long long>(C) * d;
  Acc* acc = reinterpret_cast<Acc*>(smem_raw);
  Acc* sq = acc + slots * cd;
  float* shift = reinterpret_cast<float*>(sq + static_cast<long long>(slots) * C * tpr);

  for (long long idx = tid; idx < cd; idx += nt) {
    const int c = static_cast<int>(idx / d), col = static_cast<int>(idx % d);
    const int f = a.first[c];
    shift[idx] = f < a.n ? a.x[f * a.ld + col] : 0.0f;
  }
  for (long long idx = tid; idx < slots * cd; idx += nt) acc[idx] = Acc(0);
  for (long long idx = tid; idx < static_cast<long long>(slots) * C * tpr; idx += nt) sq[idx] = Acc(0);
  __syncthreads();

  constexpr int U = 4;  // column groups per thread loaded together
  constexpr int H = 4;  // rows per slot loaded together: up to H * U 16-byte loads in flight
  const long long ntiles = (a.n + a.tile_rows - 1) / a.tile_rows;
  for (long long t = blockIdx.x; t < ntiles; t += gridDim.x) {
    const long long r0 = t * a.tile_rows, r1 = min(a.n, r0 + a.tile_rows);
    for (long long r = r0 + slot; r < r1; r += H * slots) {
      long long rr[H];
      int cls[H];
#pragma unroll
      for (int h = 0; h < H; ++h) {
        rr[h] = r + h * slots;
        cls[h] = rr[h] < r1 ? a.y[rr[h]] : -1;
      }
      Acc sqv[H];
#pragma unroll
      for (int h = 0; h < H; ++h) sqv[h] = Acc(0);
      for (int g0 = l; g0 < dv; g0 += U * tpr) {
        float v[H][U][V];
#pragma unroll
        for (int h = 0; h < H; ++h)
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int g = g0 + u * tpr;
            if (cls[h] >= 0 && g < dv) {
              float tmp[V];
              Vec<V>::load(a.x + rr[h] * a.ld + g * V, tmp);
#pragma unroll
              for (int e = 0; e < V; ++e) v[h][u][e] = tmp[e];
            }
          }
#pragma unroll
        for (int h = 0; h < H; ++h) {
          if (cls[h] < 0) continue;
          Acc* ac = acc + (slot * static_cast<long long>(C) + cls[h]) * d;
          const float* sh = shift + static_cast<long long>(cls[h]) * d;
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int g = g0 + u * tpr;
            if (g >= dv) continue;
            Acc df[V];
#pragma unroll
            for (int e = 0; e < V; ++e) {
              const float xv = v[h][u][e];
              if (!finite(xv)) report(a.st, 0, static_cast<unsigned long long>(rr[h]) * d + g * V + e);
              df[e] = Acc(xv - sh[g * V + e]);
              sqv[h] += df[e] * df[e];
            }
            add_vec<V>(ac + g * V, df);
          }
        }
      }
#pragma unroll
      for (int h = 0; h < H; ++h)
        if (cls[h] >= 0) sq[(slot * static_cast<long long>(C) + cls[h]) * tpr + l] += sqv[h];
    }
    __syncthreads();
    for (long long idx = tid; idx < cd; idx += nt) {
      Acc s = Acc(0);
      for (int sl = 0; sl < slots; ++sl) {
        s += acc[sl * cd + idx];
        acc[sl * cd + idx] = Acc(0);
      }
      if (s != Acc(0)) atomicAdd(&a.s1[idx], static_cast<double>(s));
    }
    for (int c = tid; c < C; c += nt) {
      Acc s = Acc(0);
      for (int sl = 0; sl < slots; ++sl)
        for (int j = 0; j < tpr; ++j) {
          Acc* p = &sq[(sl * static_cast<long long>(C) + c) * tpr + j];
          s += *p;
          *p = Acc(0);
        }
      if (s != Acc(0)) atomicAdd(&a.s2[c], static_cast<double>(s));
    }
    __syncthreads();
  }
}

struct FinalizeArgs {
  const float* x;
  long long ld;
  long long n;
  int d;
  int num_classes;
  const unsigned long long* counts;
  const int* shift_row;             // privatized: first row of each class
  const unsigned long long* start;  // sorted: class offsets [C + 1]
  const int* order;                 // sorted: rows grouped by class
  int window;                       // sorted: positions per window
  const double* s1;                 // privatized [C, d]; sorted: slots [windows, d]
  const double* s2;
  long long* counts_out;
  double* means;
  long long ldm;
  double* sq_dev;
};

/// mean = k + S1 / n and S2 - ||S1||^2 / n for every class (privatized) or for the classes
/// that span windows (sorted; the others were written by the main pass); empty classes get
/// zeros. One warp per class.
NC_KERNEL void stats_finalize(FinalizeArgs a, int sorted) {
  const int lane = lane_id();
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  for (long long c = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32;
       c < a.num_classes; c += warps) {
    const unsigned long long cnt = a.counts[c];
    if (lane == 0) a.counts_out[c] = static_cast<long long>(cnt);
    double* mrow = a.means + c * a.ldm;
    if (cnt == 0) {
      for (int col = lane; col < a.d; col += 32) mrow[col] = 0.0;
      if (lane == 0) a.sq_dev[c] = 0.0;
      continue;
    }
    long long krow, srow;
    if (sorted) {
      const unsigned long long b = a.start[c], e = a.start[c + 1];
      const bool split = b / a.window != (e - 1) / a.window;
      if (!split) {
        if (lane == 0) a.sq_dev[c] = fmax(a.sq_dev[c], 0.0);
        continue;
      }
      krow = a.order[b];
      srow = static_cast<long long>(b / a.window);
    } else {
      krow = a.shift_row[c];
      srow = c;
    }
    const double inv = 1.0 / static_cast<double>(cnt);
    const float* k = a.x + krow * a.ld;
    const double* s1 = a.s1 + srow * a.d;
    double q = 0;
    for (int col = lane; col < a.d; col += 32) {
      const double s = s1[col];
      mrow[col] = static_cast<double>(k[col]) + s * inv;
      q += s * s;
    }
    q = warp_sum(q);
    if (lane == 0) a.sq_dev[c] = fmax(a.s2[srow] - q * inv, 0.0);
  }
}

// ---------------------------------------------------------------------------------------
// Sorted strategy. MODE 0: statistics (shifted sums). MODE 1: weighted sums
// sum_i t_i x_i per class (the power iteration of nc_directions), t_i = 1 without weights.

constexpr int kWindow = 256;     // grouped positions per warp window
constexpr int kSortedWarps = 8;  // warps per block
constexpr int kGroupsPerLane = 2;  // 16-byte groups per lane and column block
constexpr int kRowsInFlight = 4;   // rows loaded before they are summed

struct SortedArgs {
  const float* x;
  long long ld;
  const int* y;
  const int* order;
  const unsigned long long* start;  // [C + 1]
  long long n;
  int d;
  int num_classes;
  DeviceStatus* st;
  // MODE 0
  double* means;
  long long ldm;
  double* sq_dev;
  double* slot_s1;  // [windows, d] (zeroed)
  double* slot_s2;  // [windows]
  // MODE 1
  const double* weights;  // per grouped position; nullptr: all ones
  double* wsum;           // [C, d]: written for classes inside a window, atomics otherwise
  const int* skip;        // per class; nonzero: leave the class out (nullptr: none)
};

/// Positions [k, end) of the window with the same class as position k.
__device__ __forceinline__ int run_end(const int* cls, int k, int cnt) {
  const int c = cls[k];
  for (int j = k + 1; j < cnt; j += 32) {
    const int p = j + lane_id();
    const unsigned diff = __ballot_sync(kFullMask, p < cnt && cls[p] != c);
    if (diff) return j + __ffs(diff) - 1;
  }
  return cnt;
}

template <int V, int MODE>
__global__ void __launch_bounds__(kSortedWarps * 32) stats_sorted(SortedArgs a) {
  __shared__ int s_idx[kSortedWarps][kWindow];
  __shared__ int s_cls[kSortedWarps][kWindow];
  const int warp = threadIdx.x / 32, lane = lane_id();
  const int d = a.d, dv = d / V;
  // Rows with an invalid label (an error is being reported) were not grouped: walk only the
  // positions the counting sort filled.
  const long long n = min(a.n, static_cast<long long>(a.start[a.num_classes]));
  const long long nwin = (n + kWindow - 1) / kWindow;
  int* idx = s_idx[warp];
  int* cls = s_cls[warp];
  for (long long w = static_cast<long long>(blockIdx.x) * kSortedWarps + warp; w < nwin;
       w += static_cast<long long>(gridDim.x) * kSortedWarps) {
    const long long p0 = w * kWindow;
    const int cnt = static_cast<int>(min(static_cast<long long>(kWindow), n - p0));
    __syncwarp();
    for (int k = lane; k < cnt; k += 32) {
      const int i = a.order[p0 + k];
      idx[k] = i;
      cls[k] = a.y[i];
    }
    __syncwarp();
    for (int cb = 0; cb < dv; cb += 32 * kGroupsPerLane) {
      for (int k = 0; k < cnt;) {
        const int c = cls[k];
        const int kend = run_end(cls, k, cnt);
        const int first = k;
        k = kend;
        if (c < 0) continue;
        if (MODE == 1 && a.skip && a.skip[c]) continue;
        const unsigned long long cs = a.start[c], ce = a.start[c + 1];
        const bool whole = static_cast<unsigned long long>(p0 + first) == cs &&
                           static_cast<unsigned long long>(p0 + kend) == ce;
        float kv[kGroupsPerLane][V];
#pragma unroll
        for (int u = 0; u < kGroupsPerLane; ++u)
#pragma unroll
          for (int e = 0; e < V; ++e) kv[u][e] = 0.0f;
        if (MODE == 0) {
          const float* krow = a.x + static_cast<long long>(a.order[cs]) * a.ld;
#pragma unroll
          for (int u = 0; u < kGroupsPerLane; ++u) {
            const int g = cb + lane + 32 * u;
            if (g < dv) Vec<V>::load(krow + g * V, kv[u]);
          }
        }
        double acc[kGroupsPerLane][V];
#pragma unroll
        for (int u = 0; u < kGroupsPerLane; ++u)
#pragma unroll
          for (int e = 0; e < V; ++e) acc[u][e] = 0.0;
        double s2 = 0.0;
        for (int r = first; r < kend; r += kRowsInFlight) {
          float v[kRowsInFlight][kGroupsPerLane][V];
          double t[kRowsInFlight];
#pragma unroll
          for (int h = 0; h < kRowsInFlight; ++h) {
            t[h] = 1.0;
            if (r + h >= kend) continue;
            const float* row = a.x + static_cast<long long>(idx[r + h]) * a.ld;
            if (MODE == 1 && a.weights) t[h] = a.weights[p0 + r + h];
#pragma unroll
            for (int u = 0; u < kGroupsPerLane; ++u) {
              const int g = cb + lane + 32 * u;
              if (g < dv) Vec<V>::load(row + g * V, v[h][u]);
            }
          }
#pragma unroll
          for (int h = 0; h < kRowsInFlight; ++h) {
            if (r + h >= kend) continue;
#pragma unroll
            for (int u = 0; u < kGroupsPerLane; ++u) {
              const int g = cb + lane + 32 * u;
              if (g >= dv) continue;
#pragma unroll
              for (int e = 0; e < V; ++e) {
                const float xv = v[h][u][e];
                if (!finite(xv))
                  report(a.st, 0, static_cast<unsigned long long>(idx[r + h]) * d + g * V + e);
                if (MODE == 0) {
                  const double df = static_cast<double>(xv - kv[u][e]);
                  acc[u][e] += df;
                  s2 += df * df;
                } else {
                  acc[u][e] += t[h] * static_cast<double>(xv);
                }
              }
            }
          }
        }
        if (MODE == 0) {
          const double inv = 1.0 / static_cast<double>(kend - first);
          if (whole) {
            double part = s2;
            double* mrow = a.means + static_cast<long long>(c) * a.ldm;
#pragma unroll
            for (int u = 0; u < kGroupsPerLane; ++u) {
              const int g = cb + lane + 32 * u;
              if (g >= dv) continue;
#pragma unroll
              for (int e = 0; e < V; ++e) {
                mrow[g * V + e] = static_cast<double>(kv[u][e]) + acc[u][e] * inv;
                part -= acc[u][e] * acc[u][e] * inv;
              }
            }
            part = warp_sum(part);
            if (lane == 0) a.sq_dev[c] = (cb == 0 ? 0.0 : a.sq_dev[c]) + part;
          } else {
            const long long slot = static_cast<long long>(cs / kWindow);
#pragma unroll
            for (int u = 0; u < kGroupsPerLane; ++u) {
              const int g = cb + lane + 32 * u;
              if (g >= dv) continue;
#pragma unroll
              for (int e = 0; e < V; ++e) atomicAdd(&a.slot_s1[slot * d + g * V + e], acc[u][e]);
            }
            s2 = warp_sum(s2);
            if (lane == 0) atomicAdd(&a.slot_s2[slot], s2);
          }
        } else {
          double* out = a.wsum + static_cast<long long>(c) * d;
#pragma unroll
          for (int u = 0; u < kGroupsPerLane; ++u) {
            const int g = cb + lane + 32 * u;
            if (g >= dv) continue;
#pragma unroll
            for (int e = 0; e < V; ++e) {
              if (whole) out[g * V + e] = acc[u][e];
              else atomicAdd(&out[g * V + e], acc[u][e]);
            }
          }
        }
      }
    }
  }
}

}  // namespace nc::cuda::kernels
