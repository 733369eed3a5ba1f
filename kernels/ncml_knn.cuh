// ncml kernels: exact k-nearest-neighbour selection on tiles of similarity scores.
//
// Scores of a tile of query rows x gallery columns come from one GEMM into an L2-resident
// buffer; select_topk_tile / select_rank_tile then read the tile once (each row, and for an
// off-diagonal tile of a set against itself each column, is one query's scores) and update
// per-query state in global memory. Every query of a tile is owned by one warp (a row) or
// one block (32 columns), so its state changes without locks.
//
// Top-k state of a query: a buffer of `cap` 64-bit ranking keys (ncml_common.cuh), its fill
// count, and a threshold key, the k-th best key kept at the last compaction (none before):
// an entry is appended only when its key is below the threshold. When the buffer would
// overflow, a warp-cooperative radix select keeps the k smallest keys and raises the
// threshold. Keys are unique (they contain the gallery index), so the kept set is exactly
// the k best entries seen, whatever their order of arrival: results are deterministic.
#pragma once

#include <cuda_bf16.h>

#include "ncml_common.cuh"

namespace nc::cuda::kernels {

// ---------------------------------------------------------------------------------------
// Operand preparation: checks that rows are finite, normalizes for cosine (in float64, as
// the CPU does), writes a float and/or a bf16 copy, squared norms of the operand rows (for
// -L2) and norms of the raw rows (for exact rescoring). One warp per row.

struct PrepArgs {
  const float* x;
  long long ld;
  long long n;
  int d;
  int slot;  // DeviceStatus slot for non-finite values
  DeviceStatus* st;
  int normalize;
  float* out_f;  // nullable, [n, ldf]
  long long ldf;
  __nv_bfloat16* out_h;  // nullable, [n, ldh]
  long long ldh;
  float* sq;     // nullable: squared norms of the operand rows as multiplied
  double* norm;  // nullable: norms of the raw rows
};

NC_KERNEL void __launch_bounds__(256) prepare_rows(PrepArgs a) {
  const int lane = lane_id();
  const long long warps = static_cast<long long>(gridDim.x) * (blockDim.x / 32);
  for (long long i = (blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x) / 32; i < a.n;
       i += warps) {
    const float* row = a.x + i * a.ld;
    double ss = 0;
    for (int col = lane; col < a.d; col += 32) {
      const float v = row[col];
      if (!finite(v)) report(a.st, a.slot, static_cast<unsigned long long>(i) * a.d + col);
      ss += static_cast<double>(v) * v;
    }
    ss = warp_sum(ss);
    const double nrm = sqrt(ss);
    if (a.norm && lane == 0) a.norm[i] = nrm;
    double sq = 0;
    const long long width = a.out_f ? a.ldf : (a.out_h ? a.ldh : a.d);
    for (long long col = lane; col < width; col += 32) {
      float f = 0.0f;
      if (col < a.d) {
        const float v = row[col];
        f = a.normalize ? (nrm > 0 ? static_cast<float>(static_cast<double>(v) / nrm) : 0.0f) : v;
      }
      if (a.out_f) a.out_f[i * a.ldf + col] = f;
      if (a.out_h && col < a.ldh) {
        const __nv_bfloat16 h = __float2bfloat16_rn(f);
        a.out_h[i * a.ldh + col] = h;
        f = __bfloat162float(h);
      }
      if (col < a.d) sq += static_cast<double>(f) * f;
    }
    sq = warp_sum(sq);
    if (a.sq && lane == 0) a.sq[i] = static_cast<float>(sq);
  }
}

// ---------------------------------------------------------------------------------------
// Tiles.

constexpr int kSelectThreads = 512;
constexpr int kSelectWarps = kSelectThreads / 32;
constexpr int kColQueries = 32;  // column queries per block
constexpr int kRowUnroll = 4;    // float4 loads in flight per lane, row tasks
constexpr int kColUnroll = 4;    // float4 loads in flight per lane, column tasks

struct Tile {
  const float* s;  // scores, row-major [rows, lds]; lds a multiple of 32, 16-byte aligned
  long long lds;
  int rows, cols;        // valid part
  long long row0, col0;  // query index of row 0, gallery index of column 0
  int exclude_self;      // row tasks never take gallery == query
  int l2;                // scores are dot products to turn into -||q - g||^2
  const float* qn;       // squared norms by query index (l2)
  const float* gn;       // squared norms by gallery index (l2)
  int row_blocks;        // blocks [0, row_blocks) run row tasks (16 rows each), the rest
                         // column tasks (32 columns each; set only for off-diagonal tiles
                         // of a set against itself, where columns are queries too)
  long long q_base;      // state index = query - q_base
};

struct TopKState {
  unsigned long long* buf;  // [queries, cap]
  int* cnt;
  unsigned long long* thr;
  int cap;
  int k;
};

__device__ __forceinline__ float tile_score(const Tile& t, float dot, long long q, long long g) {
  return t.l2 ? l2_score(dot, t.qn[q], t.gn[g]) : dot;
}

/// Keeps the k smallest of the n > k keys buf[0..n) in buf[0..k) and returns the largest kept
/// key. Radix select, 8 bits per round from the top, on a per-warp histogram `hist` [256].
__device__ unsigned long long warp_select_compact(unsigned long long* buf, int n, int k, int* hist) {
  const int lane = lane_id();
  __syncwarp();
  unsigned long long prefix = 0, mask = 0;
  int need = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = lane; b < 256; b += 32) hist[b] = 0;
    __syncwarp();
    for (int i = lane; i < n; i += 32) {
      const unsigned long long key = buf[i];
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
    }
    __syncwarp();
    int h[8], local = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      h[j] = hist[lane * 8 + j];
      local += h[j];
    }
    const int incl = warp_inclusive_scan(local), excl = incl - local;
    const unsigned owner = __ballot_sync(kFullMask, excl < need && need <= incl);
    int bucket = 0, before = 0, in_bucket = 0;
    if (lane == __ffs(owner) - 1) {
      int cum = excl;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (cum + h[j] >= need) {
          bucket = lane * 8 + j;
          before = cum;
          in_bucket = h[j];
          break;
        }
        cum += h[j];
      }
    }
    const int src = __ffs(owner) - 1;
    bucket = __shfl_sync(kFullMask, bucket, src);
    before = __shfl_sync(kFullMask, before, src);
    in_bucket = __shfl_sync(kFullMask, in_bucket, src);
    need -= before;
    prefix |= static_cast<unsigned long long>(bucket) << shift;
    mask |= 0xffull << shift;
    __syncwarp();
    if (in_bucket == need) break;
  }
  // In place: a key moves to a position at or below its own, and every lane reads its key
  // before the ballot, so nothing is overwritten before it is read.
  int out = 0;
  unsigned long long mx = 0;
  for (int base = 0; base < n; base += 32) {
    const int i = base + lane;
    const unsigned long long key = i < n ? buf[i] : kNone;
    const bool keep = i < n && (key & mask) <= prefix;
    const unsigned bal = __ballot_sync(kFullMask, keep);
    if (keep) {
      buf[out + __popc(bal & lanemask_lt())] = key;
      mx = key > mx ? key : mx;
    }
    out += __popc(bal);
  }
  __syncwarp();
  return warp_max_u64(mx);
}

/// Appends `key` for the lanes with `pass` at buf[cnt + rank among passing lanes]; returns
/// the new count.
__device__ __forceinline__ int warp_append(unsigned long long* buf, int cnt, bool pass,
                                           unsigned long long key) {
  const unsigned bal = __ballot_sync(kFullMask, pass);
  if (pass) buf[cnt + __popc(bal & lanemask_lt())] = key;
  return cnt + __popc(bal);
}

__device__ void topk_row_task(const Tile& t, const TopKState& s, int r, int* hist) {
  const int lane = lane_id();
  const long long q = t.row0 + r, qs = q - t.q_base;
  const float* srow = t.s + r * t.lds;
  unsigned long long* buf = s.buf + qs * s.cap;
  int cnt = s.cnt[qs];
  unsigned long long thr = s.thr[qs];
  for (int c0 = 0; c0 < t.cols; c0 += 128 * kRowUnroll) {
    float4 v[kRowUnroll];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const int j = c0 + 128 * u + 4 * lane;
      v[u] = j < t.cols ? *reinterpret_cast<const float4*>(srow + j) : make_float4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      if (c0 + 128 * u >= t.cols) break;
      if (cnt + 128 > s.cap) {
        thr = warp_select_compact(buf, cnt, s.k, hist);
        cnt = s.k;
      }
      const float vals[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = c0 + 128 * u + 4 * lane + e;
        const long long g = t.col0 + j;
        const bool ok = j < t.cols && !(t.exclude_self && g == q);
        const unsigned long long key =
            ok ? make_key(tile_score(t, vals[e], q, g), static_cast<unsigned>(g)) : kNone;
        cnt = warp_append(buf, cnt, ok && key < thr, key);
      }
    }
  }
  // A buffer more than half full is cut back now, so that the query's next tile, possibly a
  // column pass (where an overflow costs a rescan), starts with a threshold and free space.
  if (cnt > s.k && cnt > (s.cap + s.k) / 2) {
    thr = warp_select_compact(buf, cnt, s.k, hist);
    cnt = s.k;
  }
  if (lane == 0) {
    s.cnt[qs] = cnt;
    s.thr[qs] = thr;
  }
}

struct ColShared {
  int cnt[kColQueries];
  int cnt0[kColQueries];
  int over[kColQueries];
  unsigned long long thr[kColQueries];
  long long before[kColQueries];
};

/// Column queries j0 .. j0 + 31 of an off-diagonal tile: lane l of a warp reads 4 columns
/// (4 * (l % 8)) of row 4 * (warp + 16 * step) + l / 8, so a warp instruction covers 4 rows
/// of the 32 columns with 16-byte loads.
__device__ void topk_col_task(const Tile& t, const TopKState& s, int j0, int* hist, ColShared& sh) {
  const int tid = threadIdx.x, lane = lane_id(), warp = tid / 32;
  if (tid < kColQueries) {
    const int j = j0 + tid;
    const bool valid = j < t.cols;
    const long long qs = t.col0 + j - t.q_base;
    sh.cnt[tid] = valid ? s.cnt[qs] : 0;
    sh.cnt0[tid] = sh.cnt[tid];
    sh.thr[tid] = valid ? s.thr[qs] : 0ull;  // 0: nothing passes
    sh.over[tid] = 0;
  }
  __syncthreads();
  const int qg = lane & 7, rsub = lane >> 3;
  unsigned long long thr[4];
  long long qidx[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    thr[e] = sh.thr[4 * qg + e];
    qidx[e] = t.col0 + j0 + 4 * qg + e;
  }
  const float* base = t.s + j0 + 4 * qg;
  for (int rb = 4 * warp; rb < t.rows; rb += 4 * kSelectWarps * kColUnroll) {
    float4 v[kColUnroll];
#pragma unroll
    for (int u = 0; u < kColUnroll; ++u) {
      const int r = rb + 4 * kSelectWarps * u + rsub;
      v[u] = r < t.rows ? *reinterpret_cast<const float4*>(base + r * t.lds) : make_float4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kColUnroll; ++u) {
      const int r = rb + 4 * kSelectWarps * u + rsub;
      if (r >= t.rows) continue;
      const long long g = t.row0 + r;
      const float vals[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (thr[e] == 0ull) continue;  // a column past the tile, or nothing can pass
        const unsigned long long key = make_key(tile_score(t, vals[e], qidx[e], g), static_cast<unsigned>(g));
        if (key < thr[e]) {
          const int qq = 4 * qg + e;
          const int slot = atomicAdd(&sh.cnt[qq], 1);
          if (slot < s.cap) s.buf[(qidx[e] - t.q_base) * s.cap + slot] = key;
          else sh.over[qq] = 1;
        }
      }
    }
  }
  __syncthreads();
  // Per query: an overflow drops this tile's entries and rescans the column with compactions
  // (the tile is still in L2); a nearly full buffer is compacted.
  for (int qq = warp; qq < kColQueries; qq += kSelectWarps) {
    const int j = j0 + qq;
    if (j >= t.cols) continue;
    const long long q = t.col0 + j, qs = q - t.q_base;
    unsigned long long* buf = s.buf + qs * s.cap;
    int cnt = sh.cnt[qq];
    unsigned long long th = sh.thr[qq];
    if (sh.over[qq]) {
      cnt = sh.cnt0[qq];
      for (int r0 = 0; r0 < t.rows; r0 += 32) {
        if (cnt + 32 > s.cap) {
          th = warp_select_compact(buf, cnt, s.k, hist);
          cnt = s.k;
        }
        const int r = r0 + lane;
        const bool ok = r < t.rows;
        const long long g = t.row0 + r;
        const unsigned long long key =
            ok ? make_key(tile_score(t, t.s[r * t.lds + j], q, g), static_cast<unsigned>(g)) : kNone;
        cnt = warp_append(buf, cnt, ok && key < th, key);
      }
    } else if (cnt > s.k && cnt > (s.cap + s.k) / 2) {
      th = warp_select_compact(buf, cnt, s.k, hist);
      cnt = s.k;
    }
    if (lane == 0) {
      s.cnt[qs] = cnt;
      s.thr[qs] = th;
    }
  }
}

NC_KERNEL void __launch_bounds__(kSelectThreads, 2) select_topk_tile(Tile t, TopKState s) {
  __shared__ int hist[kSelectWarps][256];
  __shared__ ColShared sh;
  const int warp = threadIdx.x / 32;
  if (static_cast<int>(blockIdx.x) < t.row_blocks) {
    const int r = blockIdx.x * kSelectWarps + warp;
    if (r < t.rows) topk_row_task(t, s, r, hist[warp]);
  } else {
    topk_col_task(t, s, (blockIdx.x - t.row_blocks) * kColQueries, hist[warp], sh);
  }
}

// ---------------------------------------------------------------------------------------
// Rank counting for the retrieval metrics (the GPU form of detail/knn/rank_count.hpp).
// Query q has positives p_0 < p_1 < ... (keys, best first; scored beforehand), `live` of
// them still able to matter, and cnt[m] = negatives ranked after exactly m positives. A
// negative is counted when it ranks before the last live positive (the threshold); live
// positives whose rank reaches limit = max(max K, R) retire.

struct RankState {
  const unsigned long long* pos;  // positive keys, sorted per query
  const unsigned long long* off;  // [Q + 1] segment offsets into pos / cnt
  int* cnt;
  int* live;
  long long* before;  // negatives ranked before the last live positive
  unsigned long long* thr;
  const long long* limit;
  const int* qlabel;
  const int* glabel;
};

__device__ __forceinline__ int count_below(const unsigned long long* p, int a, unsigned long long key) {
  int lo = 0, hi = a;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (p[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/// Retires live positives whose rank reached the limit; returns the new live count and
/// updates `before`. Run by one lane.
__device__ __forceinline__ int retire(const int* cnt, int a, long long& before, long long limit) {
  while (a > 1 && (a - 1) + before >= limit) before -= cnt[--a];
  return a;
}

__device__ void rank_row_task(const Tile& t, const RankState& s, int r) {
  const int lane = lane_id();
  const long long q = t.row0 + r, qs = q - t.q_base;
  int a = s.live[qs];
  if (a == 0) return;
  long long before = s.before[qs];
  unsigned long long thr = s.thr[qs];
  const int ql = s.qlabel[q];
  const long long lim = s.limit[qs];
  const unsigned long long* p = s.pos + s.off[qs];
  int* cn = s.cnt + s.off[qs];
  const float* srow = t.s + r * t.lds;
  for (int c0 = 0; c0 < t.cols; c0 += 128 * kRowUnroll) {
    float4 v[kRowUnroll];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const int j = c0 + 128 * u + 4 * lane;
      v[u] = j < t.cols ? *reinterpret_cast<const float4*>(srow + j) : make_float4(0, 0, 0, 0);
    }
    // With one live positive (only the first positive's rank still matters) every negative
    // counted lands in cnt[0]: lanes count in registers instead of one atomic each.
    int passed = 0;
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const float vals[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = c0 + 128 * u + 4 * lane + e;
        const long long g = t.col0 + j;
        if (j >= t.cols || (t.exclude_self && g == q)) continue;
        const unsigned long long key = make_key(tile_score(t, vals[e], q, g), static_cast<unsigned>(g));
        if (key < thr && s.glabel[g] != ql) {
          if (a > 1) atomicAdd(&cn[count_below(p, a, key)], 1);
          ++passed;
        }
      }
    }
    passed = warp_sum(passed);
    if (passed && a == 1 && lane == 0) atomicAdd(&cn[0], passed);
    if (passed) {
      before += passed;
      __syncwarp();
      int na = a;
      long long nb = before;
      if (lane == 0) na = retire(cn, a, nb, lim);
      na = __shfl_sync(kFullMask, na, 0);
      nb = __shfl_sync(kFullMask, nb, 0);
      if (na != a) {
        a = na;
        thr = p[a - 1];
      }
      before = nb;
    }
  }
  if (lane == 0) {
    s.live[qs] = a;
    s.before[qs] = before;
    s.thr[qs] = thr;
  }
}

__device__ void rank_col_task(const Tile& t, const RankState& s, int j0, ColShared& sh) {
  const int tid = threadIdx.x, lane = lane_id(), warp = tid / 32;
  if (tid < kColQueries) {
    const int j = j0 + tid;
    const long long qs = t.col0 + j - t.q_base;
    const bool valid = j < t.cols && s.live[qs] > 0;
    sh.thr[tid] = valid ? s.thr[qs] : 0ull;
    sh.before[tid] = 0;
  }
  __syncthreads();
  const int qg = lane & 7, rsub = lane >> 3;
  unsigned long long thr[4];
  long long qidx[4];
  const unsigned long long* p[4];
  int* cn[4];
  int a[4], ql[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    thr[e] = sh.thr[4 * qg + e];
    qidx[e] = t.col0 + j0 + 4 * qg + e;
    const bool valid = thr[e] != 0ull;
    const long long qs = qidx[e] - t.q_base;
    a[e] = valid ? s.live[qs] : 0;
    ql[e] = valid ? s.qlabel[qidx[e]] : -1;
    p[e] = valid ? s.pos + s.off[qs] : nullptr;
    cn[e] = valid ? s.cnt + s.off[qs] : nullptr;
  }
  int passed[4] = {0, 0, 0, 0};
  const float* base = t.s + j0 + 4 * qg;
  for (int rb = 4 * warp; rb < t.rows; rb += 4 * kSelectWarps * kColUnroll) {
    float4 v[kColUnroll];
#pragma unroll
    for (int u = 0; u < kColUnroll; ++u) {
      const int r = rb + 4 * kSelectWarps * u + rsub;
      v[u] = r < t.rows ? *reinterpret_cast<const float4*>(base + r * t.lds) : make_float4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kColUnroll; ++u) {
      const int r = rb + 4 * kSelectWarps * u + rsub;
      if (r >= t.rows) continue;
      const long long g = t.row0 + r;
      const float vals[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (thr[e] == 0ull) continue;  // a column past the tile, or a lone query
        const unsigned long long key = make_key(tile_score(t, vals[e], qidx[e], g), static_cast<unsigned>(g));
        if (key < thr[e] && s.glabel[g] != ql[e]) {
          if (a[e] > 1) atomicAdd(&cn[e][count_below(p[e], a[e], key)], 1);  // else cnt[0], below
          ++passed[e];
        }
      }
    }
  }
#pragma unroll
  for (int e = 0; e < 4; ++e)
    if (passed[e]) {
      if (a[e] == 1) atomicAdd(&cn[e][0], passed[e]);
      atomicAdd(reinterpret_cast<unsigned long long*>(&sh.before[4 * qg + e]),
                static_cast<unsigned long long>(passed[e]));
    }
  __syncthreads();
  if (tid < kColQueries) {
    const int j = j0 + tid;
    if (j < t.cols && sh.thr[tid] != 0ull) {
      const long long qs = t.col0 + j - t.q_base;
      long long before = s.before[qs] + sh.before[tid];
      const int a0 = s.live[qs];
      const int na = retire(s.cnt + s.off[qs], a0, before, s.limit[qs]);
      s.live[qs] = na;
      s.before[qs] = before;
      if (na != a0) s.thr[qs] = s.pos[s.off[qs] + na - 1];
    }
  }
}

NC_KERNEL void __launch_bounds__(kSelectThreads, 2) select_rank_tile(Tile t, RankState s) {
  __shared__ ColShared sh;
  const int warp = threadIdx.x / 32;
  if (static_cast<int>(blockIdx.x) < t.row_blocks) {
    const int r = blockIdx.x * kSelectWarps + warp;
    if (r < t.rows) rank_row_task(t, s, r);
  } else {
    rank_col_task(t, s, (blockIdx.x - t.row_blocks) * kColQueries, sh);
  }
}

// ---------------------------------------------------------------------------------------
// After the last tile.

NC_KERNEL void init_topk_state(int* cnt, unsigned long long* thr, long long count) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    cnt[i] = 0;
    thr[i] = kNone;
  }
}

/// Reduces every buffer to its k best keys (one warp per query).
NC_KERNEL void __launch_bounds__(256) topk_compact_all(TopKState s, long long count) {
  __shared__ int hist[8][256];
  const int warp = threadIdx.x / 32;
  const long long warps = static_cast<long long>(gridDim.x) * 8;
  for (long long qs = blockIdx.x * 8ll + warp; qs < count; qs += warps) {
    const int cnt = s.cnt[qs];
    if (cnt > s.k) {
      const unsigned long long th = warp_select_compact(s.buf + qs * s.cap, cnt, s.k, hist[warp]);
      if (lane_id() == 0) {
        s.cnt[qs] = s.k;
        s.thr[qs] = th;
      }
    }
  }
}

/// Exact float32 scores for the candidates of low-precision modes: each key of query q's
/// first `kk` entries is rebuilt from the original rows (normalized as the CPU does for
/// cosine: float(x / ||x||) in float64), then the buffer keeps the k best.
struct RescoreArgs {
  const float* qx;
  long long ldq;
  const float* gx;
  long long ldg;
  int d;
  int similarity;  // 0 cosine, 1 inner product, 2 neg squared L2
  const double* qnorm;
  const double* gnorm;
  long long q0;  // query index of state entry 0
};

NC_KERNEL void __launch_bounds__(256) rescore_candidates(TopKState s, long long count, int kk,
                                                          RescoreArgs a) {
  __shared__ int hist[8][256];
  const int warp = threadIdx.x / 32, lane = lane_id();
  const long long warps = static_cast<long long>(gridDim.x) * 8;
  for (long long qs = blockIdx.x * 8ll + warp; qs < count; qs += warps) {
    const long long q = a.q0 + qs;
    unsigned long long* buf = s.buf + qs * s.cap;
    const float* qr = a.qx + q * a.ldq;
    const int n = min(kk, s.cnt[qs]);
    for (int j = 0; j < n; ++j) {
      const unsigned g = key_index(buf[j]);
      const float* gr = a.gx + static_cast<long long>(g) * a.ldg;
      float dot = 0.0f;
      double qd = 0, gd = 0;
      for (int col = lane; col < a.d; col += 32) {
        float xq = qr[col], xg = gr[col];
        if (a.similarity == 0) {
          xq = a.qnorm[q] > 0 ? static_cast<float>(static_cast<double>(xq) / a.qnorm[q]) : 0.0f;
          xg = a.gnorm[g] > 0 ? static_cast<float>(static_cast<double>(xg) / a.gnorm[g]) : 0.0f;
        }
        dot = fmaf(xq, xg, dot);
        qd += static_cast<double>(xq) * xq;
        gd += static_cast<double>(xg) * xg;
      }
      dot = warp_sum(dot);
      float score = dot;
      if (a.similarity == 2) {
        qd = warp_sum(qd);
        gd = warp_sum(gd);
        score = l2_score(dot, static_cast<float>(qd), static_cast<float>(gd));
      }
      if (lane == 0) buf[j] = make_key(score, g);
    }
    __syncwarp();
    if (n > s.k) {
      const unsigned long long th = warp_select_compact(buf, n, s.k, hist[warp]);
      if (lane == 0) s.thr[qs] = th;
    }
    if (lane == 0) s.cnt[qs] = min(n, s.k);
  }
}

/// indices[q, j] and scores[q, j] from the sorted keys of the first k entries.
NC_KERNEL void emit_topk(const unsigned long long* __restrict__ buf, int cap, int k, long long count,
                          long long q0, long long* __restrict__ indices, long long ldi,
                          float* __restrict__ scores, long long ldsc) {
  const long long total = count * k;
  for (long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long qs = t / k, j = t % k;
    const unsigned long long key = buf[qs * cap + j];
    if (indices) indices[(q0 + qs) * ldi + j] = key_index(key);
    if (scores) scores[(q0 + qs) * ldsc + j] = key_score(key);
  }
}

}  // namespace nc::cuda::kernels
