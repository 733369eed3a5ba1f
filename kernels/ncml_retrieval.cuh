// ncml kernels: the retrieval evaluator's positives (scores of every same-class pair, found
// before the main pass so that it can count ranks) and the per-query metrics.
#pragma once

#include <cuda_bf16.h>

#include "ncml_common.cuh"

namespace nc::cuda::kernels {

/// r[q] = number of gallery items of query q's class, minus the query itself when the
/// queries are the gallery.
NC_KERNEL void positives_per_query(const int* __restrict__ qlabel, long long nq,
                                    const unsigned long long* __restrict__ gcount, int self,
                                    unsigned long long* __restrict__ r) {
  for (long long q = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; q < nq;
       q += static_cast<long long>(gridDim.x) * blockDim.x) {
    const unsigned long long n = gcount[qlabel[q]];
    r[q] = n - (self && n > 0 ? 1 : 0);
  }
}

constexpr int kPairTile = 32;

/// items[c] = tiles of kPairTile x kPairTile same-class (query, gallery) pairs of class c.
NC_KERNEL void pair_tiles_per_class(const unsigned long long* __restrict__ qcount,
                                     const unsigned long long* __restrict__ gcount, int num_classes,
                                     unsigned long long* __restrict__ items) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < num_classes; c += gridDim.x * blockDim.x)
    items[c] = ((qcount[c] + kPairTile - 1) / kPairTile) * ((gcount[c] + kPairTile - 1) / kPairTile);
}

struct PairArgs {
  const float* qf;          // float operand rows (or null with qh)
  const __nv_bfloat16* qh;  // bf16 operand rows
  long long ldq;
  const float* gf;
  const __nv_bfloat16* gh;
  long long ldg;
  int d;
  int tf32;  // round float operands to TF32 (as the TF32 GEMM reads them)
  int l2;
  const float* qn;
  const float* gn;
  const int* qorder;  // queries grouped by class
  const unsigned long long* qstart;
  const int* gorder;  // gallery grouped by class (the same arrays when self)
  const unsigned long long* gstart;
  const unsigned long long* item_start;  // [C + 1]
  int num_classes;
  int self;
  const unsigned long long* off;  // positives offset per query
  unsigned long long* pos;        // out: keys, in gallery order of the class (self removed)
};

__device__ __forceinline__ float pair_load(const float* f, const __nv_bfloat16* h, long long ld,
                                           long long row, int col, int tf32) {
  if (h) return __bfloat162float(h[row * ld + col]);
  const float v = f[row * ld + col];
  return tf32 ? round_tf32(v) : v;
}

/// Scores of all same-class pairs, one block per 32 x 32 tile of a class, float32 dot
/// products in dimension order.
NC_KERNEL void __launch_bounds__(256) positive_pairs(PairArgs a, unsigned long long items) {
  __shared__ float sa[kPairTile][kPairTile + 1];
  __shared__ float sb[kPairTile][kPairTile + 1];
  const int tid = threadIdx.x, ty = tid / 8, tx = tid % 8;
  for (unsigned long long item = blockIdx.x; item < items; item += gridDim.x) {
    int lo = 0, hi = a.num_classes - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (a.item_start[mid] <= item) lo = mid;
      else hi = mid - 1;
    }
    const int c = lo;
    const unsigned long long li = item - a.item_start[c];
    const long long nq = static_cast<long long>(a.qstart[c + 1] - a.qstart[c]);
    const long long ng = static_cast<long long>(a.gstart[c + 1] - a.gstart[c]);
    const long long ngt = (ng + kPairTile - 1) / kPairTile;
    const long long qa = static_cast<long long>(li) / ngt, gb = static_cast<long long>(li) % ngt;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int d0 = 0; d0 < a.d; d0 += kPairTile) {
      __syncthreads();
      for (int e = tid; e < kPairTile * kPairTile; e += blockDim.x) {
        const int r = e / kPairTile, kk = e % kPairTile, col = d0 + kk;
        const long long qi = qa * kPairTile + r, gj = gb * kPairTile + r;
        sa[r][kk] = (qi < nq && col < a.d)
                        ? pair_load(a.qf, a.qh, a.ldq, a.qorder[a.qstart[c] + qi], col, a.tf32)
                        : 0.0f;
        sb[r][kk] = (gj < ng && col < a.d)
                        ? pair_load(a.gf, a.gh, a.ldg, a.gorder[a.gstart[c] + gj], col, a.tf32)
                        : 0.0f;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kPairTile; ++kk) {
        const float av = sa[ty][kk];
#pragma unroll
        for (int m = 0; m < 4; ++m) acc[m] = fmaf(av, sb[tx * 4 + m][kk], acc[m]);
      }
    }
    const long long qi = qa * kPairTile + ty;
    if (qi < nq) {
      const long long q = a.qorder[a.qstart[c] + qi];
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const long long gj = gb * kPairTile + tx * 4 + m;
        if (gj >= ng) continue;
        const long long g = a.gorder[a.gstart[c] + gj];
        if (a.self && g == q) continue;
        const float s = a.l2 ? l2_score(acc[m], a.qn[q], a.gn[g]) : acc[m];
        const long long slot = gj - (a.self && gj > qi ? 1 : 0);
        a.pos[a.off[q] + slot] = make_key(s, static_cast<unsigned>(g));
      }
    }
  }
}

/// live = R, before = 0, threshold = the worst positive, limit = max(max K, R).
NC_KERNEL void init_rank_state(const unsigned long long* __restrict__ off,
                                const unsigned long long* __restrict__ pos, long long nq, int kmax,
                                int* __restrict__ live, long long* __restrict__ before,
                                unsigned long long* __restrict__ thr, long long* __restrict__ limit) {
  for (long long q = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; q < nq;
       q += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = static_cast<long long>(off[q + 1] - off[q]);
    live[q] = static_cast<int>(r);
    before[q] = 0;
    thr[q] = r > 0 ? pos[off[q] + r - 1] : 0ull;
    limit[q] = r > kmax ? r : kmax;
  }
}

/// Per query: [Recall@K (nk), Precision@K (nk), MAP@R, R-Precision, MRR, R] from the ranks
/// of the live positives, rank_j = j + negatives counted before p_j (NaN metrics when R = 0).
NC_KERNEL void query_metrics(const unsigned long long* __restrict__ off, const int* __restrict__ cnt,
                              const int* __restrict__ live, long long nq, const int* __restrict__ ks,
                              int nk, double* __restrict__ out) {
  const int width = 2 * nk + 4;
  for (long long q = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; q < nq;
       q += static_cast<long long>(gridDim.x) * blockDim.x) {
    double* row = out + q * width;
    const long long r = static_cast<long long>(off[q + 1] - off[q]);
    row[width - 1] = static_cast<double>(r);
    if (r == 0) {
      for (int i = 0; i < width - 1; ++i) row[i] = nan("");
      continue;
    }
    for (int i = 0; i < 2 * nk; ++i) row[i] = 0.0;
    const int* c = cnt + off[q];
    const int a = live[q];
    long long negatives = 0, first = 0, in_r = 0;
    double ap = 0;
    for (int j = 0; j < a; ++j) {
      negatives += c[j];
      const long long rank = j + negatives;
      if (j == 0) first = rank;
      for (int i = 0; i < nk; ++i)
        if (rank < ks[i]) row[nk + i] += 1.0;
      if (rank < r) {
        ++in_r;
        ap += static_cast<double>(j + 1) / static_cast<double>(rank + 1);
      }
    }
    for (int i = 0; i < nk; ++i) {
      row[i] = first < ks[i] ? 1.0 : 0.0;
      row[nk + i] /= static_cast<double>(ks[i]);
    }
    row[2 * nk] = ap / static_cast<double>(r);
    row[2 * nk + 1] = static_cast<double>(in_r) / static_cast<double>(r);
    row[2 * nk + 2] = 1.0 / static_cast<double>(first + 1);
  }
}

}  // namespace nc::cuda::kernels
