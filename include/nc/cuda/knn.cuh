// ncml GPU path: exact k-nearest-neighbour search with selection fused on each score tile.
//
//   nc::KnnResult r = nc::cuda::knn(queries, gallery, k);                    // Eigen in and out
//   nc::cuda::Workspace ws;                                                 // device, 2 phases
//   nc::cuda::knn_async(d_q, ldq, Q, d_g, ldg, G, D, k, d_idx, k, d_sc, k, ws);   // size
//   ... allocate ws.bytes ...
//   nc::cuda::knn_async(d_q, ldq, Q, d_g, ldg, G, D, k, d_idx, k, d_sc, k, ws, opts, stream);
//
// Ranking and conventions are those of nc::knn (include/nc/knn.hpp): score descending, ties
// by gallery index ascending; exclude_self removes gallery row i from query i's ranking by
// index; cosine normalizes rows in float64 and rounds them to float; -L2 is formed as
// -max(||q||^2 + ||g||^2 - 2 q.g, 0).
//
// Method: queries and gallery are cut into tiles (2048 x 2048 by default); cuBLAS computes
// one tile of scores at a time into a buffer that stays in L2, and a selection kernel reads
// it once and updates per-query top-k state (kernels/ncml_knn.cuh). For one set against
// itself (the same device pointer, leading dimension and rows) the score matrix is
// symmetric: only tiles I <= J are computed and each off-diagonal tile feeds the queries of
// its rows and of its columns, half the GEMM work. The Q x G score matrix never exists:
// extra memory is the tile, Q * (2k + 128) 8-byte candidate keys (queries run in batches
// beyond `max_state_bytes`, without the symmetric halving), a normalized or bf16 copy of
// the inputs when the mode needs one, and 32 MiB for cuBLAS.
//
// Precision: fp32 (default) multiplies in float32 like the CPU; results equal the CPU's up
// to the rounding of the dot products (summation order), i.e. identical except among
// scores within about 1e-6 of each other. tf32 / bf16 multiply on tensor cores with float32
// accumulation (scores to about 1e-3 / 1e-2 relative); with `rerank`, they select
// `rerank_candidates` (default max(2k, k + 32)) candidates and re-score them exactly in
// float32, which returns the fp32 answer whenever the true k best are among the candidates.
#pragma once

#include <Eigen/Core>
#include <cuda_bf16.h>

#include <ncml_knn.cuh>

#include <cstdint>
#include <vector>

#include "../knn.hpp"
#include "common.cuh"

namespace nc::cuda {

struct KnnOptions {
  Similarity similarity = Similarity::cosine;
  /// Remove gallery row i from the ranking of query i (queries and gallery of equal rows).
  bool exclude_self = false;
  Precision precision = Precision::fp32;
  /// tf32 / bf16: re-score candidates exactly in float32.
  bool rerank = false;
  /// Candidates per query for rerank (0: max(2k, k + 32), at most the gallery).
  Index rerank_candidates = 0;
  /// Rows and columns per score tile (0: 2048; rounded up to a multiple of 32).
  Index tile = 0;
  /// Bound on the per-query candidate state; above it queries run in batches.
  std::size_t max_state_bytes = std::size_t(4) << 30;
  cublasHandle_t cublas = nullptr;
};

namespace detail {

/// One side (queries or gallery) as the GEMMs read it.
struct Side {
  const float* x = nullptr;  // the caller's rows
  Index ld = 0, rows = 0;
  float* f = nullptr;        // normalized float copy (cosine), else null (multiply x)
  Index ldf = 0;
  __nv_bfloat16* h = nullptr;  // bf16 copy (Precision::bf16)
  Index ldh = 0;
  float* sq = nullptr;     // squared norms of the rows as multiplied (-L2)
  double* norm = nullptr;  // norms of the raw rows (exact cosine rescoring)
  const float* fx() const { return f ? f : x; }
  Index fld() const { return f ? ldf : ld; }
};

inline Side plan_side(Carver& c, const float* x, Index ld, Index rows, Index d, Similarity sim,
                      Precision prec, bool rerank) {
  Side s;
  s.x = x;
  s.ld = ld;
  s.rows = rows;
  const bool cosine = sim == Similarity::cosine;
  if (prec == Precision::bf16) {
    s.ldh = static_cast<Index>(round_up(static_cast<std::size_t>(d), 8));
    s.h = c.take<__nv_bfloat16>(static_cast<std::size_t>(rows) * s.ldh);
  } else if (cosine) {
    s.ldf = static_cast<Index>(round_up(static_cast<std::size_t>(d), 4));
    s.f = c.take<float>(static_cast<std::size_t>(rows) * s.ldf);
  }
  if (sim == Similarity::neg_squared_l2) s.sq = c.take<float>(static_cast<std::size_t>(rows));
  if (rerank && cosine) s.norm = c.take<double>(static_cast<std::size_t>(rows));
  return s;
}

inline void run_side(const Side& s, Index d, bool cosine, int slot, kernels::DeviceStatus* st,
                     cudaStream_t stream) {
  kernels::PrepArgs a{s.x, s.ld, s.rows, int(d), slot, st, cosine ? 1 : 0, s.f, s.ldf, s.h, s.ldh, s.sq, s.norm};
  kernels::prepare_rows<<<wide_grid(s.rows, 8), 256, 0, stream>>>(a);
  NC_CUDA_CHECK_LAUNCH();
}

/// tile [rows, lds] = scores of queries q0 .. q0 + rows against gallery g0 .. g0 + cols.
inline void tile_gemm(cublasHandle_t h, Precision prec, const Side& q, Index q0, int rows,
                      const Side& g, Index g0, int cols, Index d, float* tile, Index lds) {
  const float one = 1.0f, zero = 0.0f;
  if (prec == Precision::bf16) {
    NC_CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, cols, rows, int(d), &one, g.h + g0 * g.ldh,
                               CUDA_R_16BF, int(g.ldh), q.h + q0 * q.ldh, CUDA_R_16BF, int(q.ldh), &zero,
                               tile, CUDA_R_32F, int(lds), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  const cublasComputeType_t ct = prec == Precision::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  NC_CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, cols, rows, int(d), &one, g.fx() + g0 * g.fld(),
                             CUDA_R_32F, int(g.fld()), q.fx() + q0 * q.fld(), CUDA_R_32F, int(q.fld()),
                             &zero, tile, CUDA_R_32F, int(lds), ct, CUBLAS_GEMM_DEFAULT));
}

/// The tile schedule shared by knn and the retrieval evaluator: calls sel(tile, rows_meta)
/// after each GEMM. Symmetric: tiles I <= J of one set; otherwise gallery tiles outer,
/// query tiles of [qb, qb + nq) inner.
struct TileLoop {
  Index tq = 0, tg = 0, lds = 0;
  float* tile = nullptr;
};

inline TileLoop plan_tiles(Carver& c, Index q_rows, Index g_rows, Index requested) {
  TileLoop t;
  const Index T = requested > 0 ? static_cast<Index>(round_up(static_cast<std::size_t>(requested), 32)) : 2048;
  t.tq = std::min<Index>(T, static_cast<Index>(round_up(static_cast<std::size_t>(q_rows), 32)));
  t.tg = std::min<Index>(T, static_cast<Index>(round_up(static_cast<std::size_t>(g_rows), 32)));
  t.lds = t.tg;
  t.tile = c.take<float>(static_cast<std::size_t>(t.tq) * t.lds);
  return t;
}

template <class Select>
void run_tiles(const TileLoop& t, cublasHandle_t h, Precision prec, const Side& q, Index qb, Index nq,
               const Side& g, Index d, bool symmetric, Select&& select) {
  if (symmetric) {
    // Diagonal tiles first: every query meets its first candidates as a row (where buffers
    // are compacted in place) before any column pass (where an overflow costs a rescan).
    const Index n = q.rows, nt = (n + t.tq - 1) / t.tq;
    for (Index step = 0; step < nt; ++step)
      for (Index I = 0; I + step < nt; ++I) {
        const Index J = I + step;
        const int rows = int(std::min(t.tq, n - I * t.tq)), cols = int(std::min(t.tq, n - J * t.tq));
        tile_gemm(h, prec, q, I * t.tq, rows, q, J * t.tq, cols, d, t.tile, t.lds);
        select(I * t.tq, rows, J * t.tq, cols, I != J);
      }
    return;
  }
  for (Index g0 = 0; g0 < g.rows; g0 += t.tg) {
    const int cols = int(std::min(t.tg, g.rows - g0));
    for (Index q0 = qb; q0 < qb + nq; q0 += t.tq) {
      const int rows = int(std::min(t.tq, qb + nq - q0));
      tile_gemm(h, prec, q, q0, rows, g, g0, cols, d, t.tile, t.lds);
      select(q0, rows, g0, cols, false);
    }
  }
}

inline kernels::Tile make_tile(const TileLoop& t, Index row0, int rows, Index col0, int cols,
                               bool exclude_self, const Side& q, const Side& g, Index q_base) {
  kernels::Tile k{};
  k.s = t.tile;
  k.lds = t.lds;
  k.rows = rows;
  k.cols = cols;
  k.row0 = row0;
  k.col0 = col0;
  k.exclude_self = exclude_self ? 1 : 0;
  k.l2 = q.sq != nullptr ? 1 : 0;
  k.qn = q.sq;
  k.gn = g.sq;
  k.row_blocks = (rows + kernels::kSelectWarps - 1) / kernels::kSelectWarps;
  k.q_base = q_base;
  return k;
}

inline unsigned select_grid(const kernels::Tile& k, bool columns) {
  return static_cast<unsigned>(k.row_blocks + (columns ? (k.cols + kernels::kColQueries - 1) / kernels::kColQueries : 0));
}

inline bool same_rows(const float* a, Index lda, Index na, const float* b, Index ldb, Index nb) {
  return a == b && lda == ldb && na == nb;
}

struct KnnPlan {
  StatusBlock* status = nullptr;
  Side q, g;
  bool symmetric = false;
  Index k = 0, kk = 0, batch = 0;
  int cap = 0;
  TileLoop tiles;
  unsigned long long* buf = nullptr;
  int* cnt = nullptr;
  unsigned long long* thr = nullptr;
  void* cublas_ws = nullptr;
};

inline KnnPlan plan_knn(Carver& c, const float* dq, Index ldq, Index Q, const float* dg, Index ldg, Index G,
                        Index d, Index k, const KnnOptions& o) {
  KnnPlan p;
  p.status = c.take<StatusBlock>(1);
  const bool low = o.precision != Precision::fp32;
  const bool rerank = o.rerank && low;
  const Index avail = G - (o.exclude_self ? 1 : 0);
  p.k = k;
  p.kk = rerank ? std::min(avail, o.rerank_candidates > 0 ? std::max(o.rerank_candidates, k)
                                                           : std::max<Index>(2 * k, k + 32))
                : k;
  p.cap = static_cast<int>(round_up(static_cast<std::size_t>(2 * p.kk + 128), 32));
  const std::size_t per_query = static_cast<std::size_t>(p.cap) * 8 + 12;
  const bool same = same_rows(dq, ldq, Q, dg, ldg, G);
  p.symmetric = same && static_cast<std::size_t>(Q) * per_query <= o.max_state_bytes;
  p.batch = p.symmetric ? Q : std::max<Index>(1, std::min<Index>(Q, static_cast<Index>(o.max_state_bytes / per_query)));
  p.q = plan_side(c, dq, ldq, Q, d, o.similarity, o.precision, rerank);
  p.g = same ? p.q : plan_side(c, dg, ldg, G, d, o.similarity, o.precision, rerank);
  p.tiles = plan_tiles(c, p.symmetric ? Q : p.batch, G, o.tile);
  p.buf = c.take<unsigned long long>(static_cast<std::size_t>(p.batch) * p.cap);
  p.cnt = c.take<int>(static_cast<std::size_t>(p.batch));
  p.thr = c.take<unsigned long long>(static_cast<std::size_t>(p.batch));
  p.cublas_ws = c.take<char>(kCublasWorkspace);
  return p;
}

inline void check_search_args(const float* dq, Index ldq, Index Q, const float* dg, Index ldg, Index G,
                              Index d) {
  check_matrix(dq, Q, d, ldq, "queries");
  check_matrix(dg, G, d, ldg, "gallery");
  NC_EXPECTS(G < (Index(1) << 32) - 1, "the gallery has " << G << " rows; at most 2^32 - 2 are supported");
}

inline void check_similarity(Similarity s) {
  NC_EXPECTS(s == Similarity::cosine || s == Similarity::inner_product || s == Similarity::neg_squared_l2,
             "similarity has an invalid value " << static_cast<int>(s));
}

}  // namespace detail

/// The k nearest gallery rows of every query: d_indices [Q, ldi] (int64) and d_scores
/// [Q, lds] (float), best first; either may be null. queries [Q, ldq] and gallery [G, ldg]
/// are float rows of dimension d. ws.data == nullptr: sets ws.bytes and returns.
/// Non-finite inputs are recorded in the workspace (check_inputs).
inline void knn_async(const float* d_queries, Index ldq, Index Q, const float* d_gallery, Index ldg, Index G,
                      Index d, Index k, int64_t* d_indices, Index ldi, float* d_scores, Index lds,
                      Workspace& ws, const KnnOptions& options = {}, cudaStream_t stream = 0) {
  using namespace detail;
  check_search_args(d_queries, ldq, Q, d_gallery, ldg, G, d);
  check_similarity(options.similarity);
  NC_EXPECTS(k > 0, "k must be positive, got k = " << k);
  if (options.exclude_self)
    NC_EXPECTS(Q == G, "exclude_self needs queries and gallery of the same rows, got " << Q << " queries and "
                                                                                       << G << " gallery rows");
  const Index avail = G - (options.exclude_self ? 1 : 0);
  NC_EXPECTS(k <= avail, "k = " << k << " is larger than the gallery (" << avail << " rows"
                                << (options.exclude_self ? " besides the query" : "") << ")");
  NC_EXPECTS(d_indices || d_scores, "knn: both outputs are null");
  NC_EXPECTS(!d_indices || ldi >= k, "knn: ldi = " << ldi << " is smaller than k = " << k);
  NC_EXPECTS(!d_scores || lds >= k, "knn: lds = " << lds << " is smaller than k = " << k);
  NC_EXPECTS(options.tile >= 0, "tile must be >= 0 (0: automatic), got " << options.tile);

  Carver c(ws.data, ws.bytes);
  const KnnPlan p = plan_knn(c, d_queries, ldq, Q, d_gallery, ldg, G, d, k, options);
  if (c.sizing()) {
    ws.bytes = c.bytes();
    return;
  }
  init_status(p.status, kOpSearch, stream);
  const bool cosine = options.similarity == Similarity::cosine;
  const bool same = same_rows(d_queries, ldq, Q, d_gallery, ldg, G);
  run_side(p.q, d, cosine, 0, &p.status->s, stream);
  if (!same) run_side(p.g, d, cosine, 1, &p.status->s, stream);
  CublasScope blas(options.cublas ? options.cublas : default_cublas(), stream, p.cublas_ws, kCublasWorkspace);
  for (Index qb = 0; qb < Q; qb += p.batch) {
    const Index nq = std::min(p.batch, Q - qb);
    kernels::TopKState s{p.buf, p.cnt, p.thr, p.cap, int(p.kk)};
    kernels::init_topk_state<<<wide_grid(nq, 256), 256, 0, stream>>>(p.cnt, p.thr, nq);
    NC_CUDA_CHECK_LAUNCH();
    const Index q_base = p.symmetric ? 0 : qb;
    run_tiles(p.tiles, blas.get(), options.precision, p.q, qb, nq, p.g, d, p.symmetric,
              [&](Index row0, int rows, Index col0, int cols, bool columns) {
                const kernels::Tile t = make_tile(p.tiles, row0, rows, col0, cols, options.exclude_self,
                                                  p.q, p.g, q_base);
                kernels::select_topk_tile<<<select_grid(t, columns), kernels::kSelectThreads, 0, stream>>>(t, s);
                NC_CUDA_CHECK_LAUNCH();
              });
    kernels::topk_compact_all<<<wide_grid(nq, 8), 256, 0, stream>>>(s, nq);
    NC_CUDA_CHECK_LAUNCH();
    if (p.kk > k) {
      kernels::TopKState fin = s;
      fin.k = int(k);
      const kernels::RescoreArgs ra{d_queries, ldq, d_gallery, ldg, int(d),
                                    static_cast<int>(options.similarity), p.q.norm, p.g.norm, qb};
      kernels::rescore_candidates<<<wide_grid(nq, 8), 256, 0, stream>>>(fin, nq, int(p.kk), ra);
      NC_CUDA_CHECK_LAUNCH();
    }
    sort_segments(kernels::Segments{p.buf, nullptr, p.cap, k, nq}, k, stream);
    kernels::emit_topk<<<wide_grid(nq * k, 256), 256, 0, stream>>>(
        p.buf, p.cap, int(k), nq, qb, reinterpret_cast<long long*>(d_indices), ldi, d_scores, lds);
    NC_CUDA_CHECK_LAUNCH();
  }
  finish_status(p.status, d_queries, ldq, d, same ? nullptr : d_gallery, ldg, d, nullptr, 0, nullptr, 0, stream);
}

/// Synchronous knn with scratch from `alloc`; throws nc::error for non-finite input.
inline void knn(const float* d_queries, Index ldq, Index Q, const float* d_gallery, Index ldg, Index G, Index d,
                Index k, int64_t* d_indices, Index ldi, float* d_scores, Index lds,
                const KnnOptions& options = {}, cudaStream_t stream = 0,
                DeviceAllocator& alloc = default_allocator()) {
  Workspace ws;
  knn_async(d_queries, ldq, Q, d_gallery, ldg, G, d, k, d_indices, ldi, d_scores, lds, ws, options, stream);
  DeviceBuffer<char> buf(ws.bytes, stream, alloc);
  ws.data = buf.data();
  knn_async(d_queries, ldq, Q, d_gallery, ldg, G, d, k, d_indices, ldi, d_scores, lds, ws, options, stream);
  check_inputs(ws, stream);
}

/// knn of host matrices (float32 on the GPU): queries [Q, D], gallery [G, D] -> [Q, k].
/// When both arguments are the same object, the set is searched against itself (symmetric
/// tiles); combine with exclude_self for leave-one-out.
template <class DQ, class DG>
KnnResult knn(const Eigen::MatrixBase<DQ>& queries, const Eigen::MatrixBase<DG>& gallery, Index k,
              const KnnOptions& options = {}, cudaStream_t stream = 0) {
  const bool same = static_cast<const void*>(&queries.derived()) == static_cast<const void*>(&gallery.derived());
  NC_EXPECTS(gallery.cols() == queries.cols(), "gallery has " << gallery.cols() << " columns but queries have "
                                                              << queries.cols() << " (dimension mismatch)");
  detail::check_rows(queries.rows(), "queries");
  detail::check_rows(gallery.rows(), "gallery");
  const Index Q = queries.rows(), G = gallery.rows(), d = queries.cols();
  NC_EXPECTS(d > 0, "queries have no columns");
  const MatrixF q = detail::to_float_rows(queries);
  DeviceBuffer<float> dq(q.size(), stream);
  detail::upload(dq.data(), q.data(), q.size(), stream);
  DeviceBuffer<float> dg;
  if (!same) {
    const MatrixF g = detail::to_float_rows(gallery);
    dg = DeviceBuffer<float>(g.size(), stream);
    detail::upload(dg.data(), g.data(), g.size(), stream);
  }
  NC_EXPECTS(k > 0, "k must be positive, got k = " << k);
  DeviceBuffer<int64_t> di(static_cast<std::size_t>(Q) * k, stream);
  DeviceBuffer<float> ds(static_cast<std::size_t>(Q) * k, stream);
  knn(dq.data(), d, Q, same ? dq.data() : dg.data(), d, G, d, k, di.data(), k, ds.data(), k, options, stream);
  KnnResult r;
  r.indices.resize(Q, k);
  r.scores.resize(Q, k);
  detail::download(r.indices.data(), di.data(), di.size(), stream);
  detail::download(r.scores.data(), ds.data(), ds.size(), stream);
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  return r;
}

}  // namespace nc::cuda
