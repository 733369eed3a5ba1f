// ncml kernels: label validation, class counting, exclusive scans, grouping rows by class,
// and sorting of 64-bit ranking keys in segments.
#pragma once

#include "ncml_common.cuh"

namespace nc::cuda::kernels {

// ---------------------------------------------------------------------------------------
// Labels. One pass validates them (a negative label, or one >= num_classes when that is
// known, is reported by row), converts them to int32 class ids (-1 for invalid rows), and
// counts the rows of each class and the first row of each class, with one atomic per class
// and warp (lanes holding the same class are combined first).

template <class L>
__global__ void label_pass(const L* __restrict__ y, long long n, long long num_classes,
                           int* __restrict__ y32, unsigned long long* __restrict__ counts,
                           int* __restrict__ first, DeviceStatus* st, int slot) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  int c = -1;
  long long v = -1;
  if (i < n) {
    v = static_cast<long long>(y[i]);
    const bool bad = v < 0 || (num_classes > 0 && v >= num_classes);
    if (bad) report(st, slot, static_cast<unsigned long long>(i));
    else c = static_cast<int>(v);
    if (y32) y32[i] = c;
  }
  if (num_classes <= 0) {  // inferring num_classes: track the largest label
    long long m = v;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const long long w = __shfl_xor_sync(kFullMask, m, o);
      m = w > m ? w : m;
    }
    if (lane_id() == 0 && m >= 0 && st) atomicMax(&st->max_label[slot - 2], m);
    return;
  }
  const unsigned want = __ballot_sync(kFullMask, c >= 0 && counts != nullptr);
  if (c >= 0 && counts) {
    const unsigned peers = __match_any_sync(want, c);
    if (lane_id() == __ffs(peers) - 1) {  // the leader holds the lowest row of its peers
      atomicAdd(&counts[c], static_cast<unsigned long long>(__popc(peers)));
      if (first) atomicMin(&first[c], static_cast<int>(i));
    }
  }
}

/// order[cursor[c]++] = i for every row i of class c (cursor starts at the class offsets).
/// Rows of a class keep their order within a warp; across warps the order is that of the
/// atomics, which only changes the order of floating-point sums downstream.
NC_KERNEL void scatter_by_class(const int* __restrict__ y32, long long n,
                                 unsigned long long* __restrict__ cursor, int* __restrict__ order) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const int c = i < n ? y32[i] : -1;
  const unsigned want = __ballot_sync(kFullMask, c >= 0);
  if (c < 0) return;
  const unsigned peers = __match_any_sync(want, c);
  const int leader = __ffs(peers) - 1;
  unsigned long long base = 0;
  if (lane_id() == leader) base = atomicAdd(&cursor[c], static_cast<unsigned long long>(__popc(peers)));
  base = __shfl_sync(peers, base, leader);
  order[base + __popc(peers & lanemask_lt())] = static_cast<int>(i);
}

// ---------------------------------------------------------------------------------------
// Exclusive scan of unsigned 64-bit values: tiles of 2048 scanned by one block each, the
// tile totals scanned recursively, then added back.

constexpr int kScanThreads = 256;
constexpr int kScanItems = 8;
constexpr int kScanTile = kScanThreads * kScanItems;

NC_KERNEL void __launch_bounds__(kScanThreads)
scan_tiles(const unsigned long long* __restrict__ in, unsigned long long* __restrict__ out,
           long long n, unsigned long long* __restrict__ tile_sums) {
  __shared__ unsigned long long s[kScanTile];
  __shared__ unsigned long long warp_tot[kScanThreads / 32];
  const long long base = static_cast<long long>(blockIdx.x) * kScanTile;
  const int t = threadIdx.x, lane = lane_id(), warp = t / 32;
  for (int k = t; k < kScanTile; k += kScanThreads) s[k] = base + k < n ? in[base + k] : 0ull;
  __syncthreads();
  unsigned long long local[kScanItems], sum = 0;
#pragma unroll
  for (int j = 0; j < kScanItems; ++j) {
    local[j] = sum;
    sum += s[t * kScanItems + j];
  }
  unsigned long long incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long w = __shfl_up_sync(kFullMask, incl, o);
    if (lane >= o) incl += w;
  }
  if (lane == 31) warp_tot[warp] = incl;
  __syncthreads();
  unsigned long long warp_off = 0, total = 0;
  for (int w = 0; w < kScanThreads / 32; ++w) {
    if (w < warp) warp_off += warp_tot[w];
    total += warp_tot[w];
  }
  const unsigned long long off = warp_off + incl - sum;
#pragma unroll
  for (int j = 0; j < kScanItems; ++j) s[t * kScanItems + j] = off + local[j];
  __syncthreads();
  for (int k = t; k < kScanTile; k += kScanThreads)
    if (base + k < n) out[base + k] = s[k];
  if (t == 0 && tile_sums) tile_sums[blockIdx.x] = total;
}

NC_KERNEL void add_tile_offsets(unsigned long long* __restrict__ out, long long n,
                                 const unsigned long long* __restrict__ offsets) {
  const long long base = static_cast<long long>(blockIdx.x) * kScanTile;
  const unsigned long long add = offsets[blockIdx.x];
  for (int k = threadIdx.x; k < kScanTile; k += blockDim.x)
    if (base + k < n) out[base + k] += add;
}

// ---------------------------------------------------------------------------------------
// Segmented ascending sort of 64-bit keys. Segment s holds len(s) keys at begin(s): either
// offsets[s] .. offsets[s + 1], or s * stride with a uniform length. The network is the
// bitonic sort written with "flip" merges, in which every comparison puts the smaller key at
// the lower position, so a segment behaves as if padded with +infinity to a power of two.

struct Segments {
  unsigned long long* keys;
  const unsigned long long* offsets;  // nullptr: begin = s * stride, len = uniform_len
  long long stride;
  long long uniform_len;
  long long count;
  __device__ __forceinline__ unsigned long long* begin(long long s) const {
    return keys + (offsets ? offsets[s] : s * stride);
  }
  __device__ __forceinline__ long long len(long long s) const {
    return offsets ? static_cast<long long>(offsets[s + 1] - offsets[s]) : uniform_len;
  }
};

/// Largest segment one block sorts in shared memory (64 KiB of keys).
constexpr int kBlockSortMax = 8192;

__device__ __forceinline__ void cmp_swap(unsigned long long* a, int i, int j) {
  const unsigned long long x = a[i], y = a[j];
  if (x > y) {
    a[i] = y;
    a[j] = x;
  }
}

/// One block per segment of length <= kBlockSortMax (longer ones are left to the global
/// network below).
NC_KERNEL void __launch_bounds__(512) sort_segments_block(Segments seg) {
  extern __shared__ unsigned long long sk[];
  for (long long s = blockIdx.x; s < seg.count; s += gridDim.x) {
    const long long len = seg.len(s);
    if (len <= 1 || len > kBlockSortMax) continue;
    unsigned long long* g = seg.begin(s);
    int n = 2;
    while (n < len) n <<= 1;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sk[i] = i < len ? g[i] : kNone;
    __syncthreads();
    for (int size = 2; size <= n; size <<= 1) {
      const int half = size >> 1;
      for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
        const int blk = i / half, off = i % half;
        cmp_swap(sk, blk * size + off, blk * size + size - 1 - off);
      }
      __syncthreads();
      for (int j = half >> 1; j >= 1; j >>= 1) {
        for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
          const int blk = i / j, off = i % j;
          cmp_swap(sk, blk * 2 * j + off, blk * 2 * j + off + j);
        }
        __syncthreads();
      }
    }
    for (int i = threadIdx.x; i < len; i += blockDim.x) g[i] = sk[i];
    __syncthreads();
  }
}

/// One step of the global network for segments longer than kBlockSortMax: `flip` merges
/// blocks of `size`, otherwise half-cleaners of distance `dist`.
NC_KERNEL void sort_segments_step(Segments seg, long long padded, int flip, long long size,
                                   long long dist) {
  const long long pairs = padded / 2;
  const long long total = seg.count * pairs;
  for (long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long s = t / pairs, i = t % pairs;
    const long long len = seg.len(s);
    if (len <= kBlockSortMax) continue;
    long long a, b;
    if (flip) {
      const long long half = size / 2, blk = i / half, off = i % half;
      a = blk * size + off;
      b = blk * size + size - 1 - off;
    } else {
      const long long blk = i / dist, off = i % dist;
      a = blk * 2 * dist + off;
      b = a + dist;
    }
    if (b >= len) continue;  // the partner is padding (+infinity): nothing moves
    unsigned long long* g = seg.begin(s);
    const unsigned long long x = g[a], y = g[b];
    if (x > y) {
      g[a] = y;
      g[b] = x;
    }
  }
}

}  // namespace nc::cuda::kernels
