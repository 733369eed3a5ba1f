// ncml GPU path: exact retrieval evaluation (Recall@K, Precision@K, MAP@R, R-Precision, MRR),
// the conventions of nc::evaluate_retrieval (include/nc/metrics/retrieval.hpp).
//
//   nc::RetrievalReport r = nc::cuda::evaluate_retrieval(embeddings, labels);   // leave-one-out
//   nc::RetrievalReport s = nc::cuda::evaluate_retrieval(q, ql, g, gl, {{1, 10, 20, 30}});
//
// The metrics need only the rank of each positive (gallery item of the query's class), so no
// top-K list is kept. A pre-pass scores every same-class pair (tiles of 32 x 32 pairs per
// class) and sorts each query's positives; the main pass is the tile loop of nc::cuda::knn
// (cuBLAS GEMM into an L2-resident tile, symmetric halving for leave-one-out) with a
// selection kernel that counts, per positive, the negatives ranked before it while that rank
// can still matter (kernels/ncml_knn.cuh, rank counting). Per-query metrics are computed on
// the device and averaged on the host in query order, as the CPU does.
//
// Memory: 12 bytes per (query, positive) pair, O(Q) state, the score tile and the copies the
// precision mode needs; never Q x G. The scratch depends on the labels (the number of
// positive pairs), so these calls take a DeviceAllocator rather than a size query.
//
// Precision: fp32 scores equal the CPU's up to the rounding of dot products (a positive and
// a negative within about 1e-6 may swap, which moves the metrics only within such ties).
// tf32 / bf16 score both passes in that precision (approximate metrics; gpu-check reports the
// measured agreement). Exact re-ranking applies to nc::cuda::knn only.
#pragma once

#include <Eigen/Core>

#include <ncml_retrieval.cuh>

#include <cmath>
#include <vector>

#include "../metrics/retrieval.hpp"
#include "common.cuh"
#include "knn.cuh"

namespace nc::cuda {

struct RetrievalOptions {
  /// The K of Recall@K and Precision@K (each >= 1 and at most the gallery size).
  std::vector<int> ks = {1, 2, 4, 8};
  Similarity similarity = Similarity::cosine;
  /// Also report every metric per class.
  bool per_class = false;
  Precision precision = Precision::fp32;
  /// Rows and columns per score tile (0: 2048).
  Index tile = 0;
  cublasHandle_t cublas = nullptr;
};

namespace detail {

/// The CPU evaluator's averaging, from per-query rows [recall (nk), precision (nk), map, rp,
/// mrr, R] and query class ids.
inline RetrievalReport aggregate(const std::vector<double>& m, const std::vector<int>& qclass,
                                 Index num_classes, const RetrievalOptions& o) {
  const std::size_t nk = o.ks.size(), width = 2 * nk + 4;
  const Index nq = static_cast<Index>(qclass.size());
  ::nc::detail::knn::MetricSums sums(nk, num_classes);
  for (Index i = 0; i < nq; ++i) {
    const double* row = m.data() + static_cast<std::size_t>(i) * width;
    const int64_t c = qclass[i];
    if (row[width - 1] == 0) {
      sums.lone(c);
      continue;
    }
    sums.add(c, row, row + nk, row[2 * nk], row[2 * nk + 1], row[2 * nk + 2]);
  }
  return sums.report(o.ks, o.per_class);
}

template <class LQ, class LG>
RetrievalReport evaluate_impl(const float* dq, Index ldq, const LQ* dql, Index nq, const float* dg, Index ldg,
                              const LG* dgl, Index ng, Index d, bool self, const RetrievalOptions& o,
                              cudaStream_t stream, DeviceAllocator& alloc) {
  check_label_type<LQ>();
  check_label_type<LG>();
  check_search_args(dq, ldq, nq, dg, ldg, ng, d);
  check_similarity(o.similarity);
  NC_EXPECTS(dql && dgl, "evaluate_retrieval: labels are a null device pointer");
  NC_EXPECTS(o.tile >= 0, "tile must be >= 0 (0: automatic), got " << o.tile);
  nc::detail::knn::check_ks(o.ks, self ? ng - 1 : ng, self);
  const int nk = static_cast<int>(o.ks.size());
  const int kmax = *std::max_element(o.ks.begin(), o.ks.end());

  // 1. Labels: validity and the number of classes.
  DeviceBuffer<StatusBlock> status(1, stream, alloc);
  init_status(status.data(), kOpSearch, stream);
  kernels::label_pass<LQ><<<grid_for(nq, 256, std::numeric_limits<int>::max()), 256, 0, stream>>>(
      dql, nq, 0, nullptr, nullptr, nullptr, &status.data()->s, 2);
  NC_CUDA_CHECK_LAUNCH();
  if (!self) {
    kernels::label_pass<LG><<<grid_for(ng, 256, std::numeric_limits<int>::max()), 256, 0, stream>>>(
        dgl, ng, 0, nullptr, nullptr, nullptr, &status.data()->s, 3);
    NC_CUDA_CHECK_LAUNCH();
  }
  finish_status(status.data(), nullptr, 0, 1, nullptr, 0, 1, dql, sizeof(LQ), self ? nullptr : dgl, sizeof(LG), stream);
  StatusBlock h = read_status(status.data(), stream);
  throw_status(h, -1);
  const Index C = std::max(h.s.max_label[0], h.s.max_label[1]) + 1;
  NC_EXPECTS(C < std::numeric_limits<int>::max(), "labels up to " << C - 1 << " are too large for the GPU path");

  // 2. Rows grouped by class, and the number of positive pairs.
  auto plan_groups = [&](Carver& c) {
    struct P {
      Grouping qg, gg;
      unsigned long long* cursor;
      void* scan;
      std::size_t scan_bytes;
    } p;
    p.qg = plan_grouping(c, nq, C, true, false);
    if (!self) p.gg = plan_grouping(c, ng, C, true, false);
    p.cursor = c.take<unsigned long long>(static_cast<std::size_t>(C) + 1);
    p.scan_bytes = scan_temp_bytes(std::max(C + 1, nq + 1));
    p.scan = c.take<char>(p.scan_bytes);
    return p;
  };
  Carver sz2;
  plan_groups(sz2);
  DeviceBuffer<char> buf2(sz2.bytes(), stream, alloc);
  Carver c2(buf2.data(), buf2.size());
  const auto g2 = plan_groups(c2);
  {
    Carver scan(g2.scan, g2.scan_bytes);
    run_grouping(g2.qg, dql, nq, C, &status.data()->s, 2, g2.cursor, scan, stream);
  }
  if (!self) {
    Carver scan(g2.scan, g2.scan_bytes);
    run_grouping(g2.gg, dgl, ng, C, &status.data()->s, 3, g2.cursor, scan, stream);
  }
  const Grouping& gq = g2.qg;
  const Grouping& gg = self ? g2.qg : g2.gg;
  std::vector<unsigned long long> qcount(static_cast<std::size_t>(C)), gcount(static_cast<std::size_t>(C));
  download(qcount.data(), gq.counts, qcount.size(), stream);
  download(gcount.data(), gg.counts, gcount.size(), stream);
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  unsigned long long pairs = 0, max_r = 0;
  for (Index c = 0; c < C; ++c) {
    const unsigned long long r = gcount[c] - (self && gcount[c] > 0 ? 1 : 0);
    pairs += qcount[c] * r;
    if (qcount[c] > 0) max_r = std::max(max_r, r);
  }

  // 3. Operands, positives, rank state and the tile loop.
  auto plan_main = [&](Carver& c) {
    struct P {
      Side q, g;
      unsigned long long *r, *off, *pos, *items, *item_start, *thr;
      int *cnt, *live, *ks;
      long long *before, *limit;
      double* metrics;
      TileLoop tiles;
      void* scan;
      std::size_t scan_bytes;
      void* cublas_ws;
    } p;
    p.q = plan_side(c, dq, ldq, nq, d, o.similarity, o.precision, false);
    p.g = self ? p.q : plan_side(c, dg, ldg, ng, d, o.similarity, o.precision, false);
    p.r = c.take<unsigned long long>(static_cast<std::size_t>(nq) + 1);
    p.off = c.take<unsigned long long>(static_cast<std::size_t>(nq) + 1);
    p.pos = c.take<unsigned long long>(std::max<unsigned long long>(pairs, 1));
    p.cnt = c.take<int>(std::max<unsigned long long>(pairs, 1));
    p.items = c.take<unsigned long long>(static_cast<std::size_t>(C) + 1);
    p.item_start = c.take<unsigned long long>(static_cast<std::size_t>(C) + 1);
    p.live = c.take<int>(static_cast<std::size_t>(nq));
    p.before = c.take<long long>(static_cast<std::size_t>(nq));
    p.thr = c.take<unsigned long long>(static_cast<std::size_t>(nq));
    p.limit = c.take<long long>(static_cast<std::size_t>(nq));
    p.metrics = c.take<double>(static_cast<std::size_t>(nq) * (2 * nk + 4));
    p.ks = c.take<int>(static_cast<std::size_t>(nk));
    p.tiles = plan_tiles(c, nq, ng, o.tile);
    p.scan_bytes = scan_temp_bytes(std::max(C + 1, nq + 1));
    p.scan = c.take<char>(p.scan_bytes);
    p.cublas_ws = c.take<char>(kCublasWorkspace);
    return p;
  };
  Carver sz3;
  plan_main(sz3);
  DeviceBuffer<char> buf3(sz3.bytes(), stream, alloc);
  Carver c3(buf3.data(), buf3.size());
  const auto p = plan_main(c3);
  const bool cosine = o.similarity == Similarity::cosine;
  run_side(p.q, d, cosine, 0, &status.data()->s, stream);
  if (!self) run_side(p.g, d, cosine, 1, &status.data()->s, stream);
  finish_status(status.data(), dq, ldq, d, self ? nullptr : dg, ldg, d, dql, sizeof(LQ), self ? nullptr : dgl,
                sizeof(LG), stream);
  throw_status(read_status(status.data(), stream), C);

  // Positives: offsets, scores of all same-class pairs, sorted per query.
  kernels::positives_per_query<<<wide_grid(nq, 256), 256, 0, stream>>>(gq.y32, nq, gg.counts, self ? 1 : 0, p.r);
  NC_CUDA_CHECK_LAUNCH();
  NC_CUDA_TRY(cudaMemsetAsync(p.r + nq, 0, sizeof(unsigned long long), stream));
  {
    Carver scan(p.scan, p.scan_bytes);
    exclusive_scan(p.r, p.off, nq + 1, scan, stream);
  }
  kernels::pair_tiles_per_class<<<wide_grid(C, 256), 256, 0, stream>>>(gq.counts, gg.counts, int(C), p.items);
  NC_CUDA_CHECK_LAUNCH();
  NC_CUDA_TRY(cudaMemsetAsync(p.items + C, 0, sizeof(unsigned long long), stream));
  {
    Carver scan(p.scan, p.scan_bytes);
    exclusive_scan(p.items, p.item_start, C + 1, scan, stream);
  }
  unsigned long long items = 0;
  download(&items, p.item_start + C, 1, stream);
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  if (items > 0) {
    kernels::PairArgs pa{};
    pa.qf = o.precision == Precision::bf16 ? nullptr : p.q.fx();
    pa.qh = p.q.h;
    pa.ldq = o.precision == Precision::bf16 ? p.q.ldh : p.q.fld();
    pa.gf = o.precision == Precision::bf16 ? nullptr : p.g.fx();
    pa.gh = p.g.h;
    pa.ldg = o.precision == Precision::bf16 ? p.g.ldh : p.g.fld();
    pa.d = int(d);
    pa.tf32 = o.precision == Precision::tf32 ? 1 : 0;
    pa.l2 = p.q.sq ? 1 : 0;
    pa.qn = p.q.sq;
    pa.gn = p.g.sq;
    pa.qorder = gq.order;
    pa.qstart = gq.start;
    pa.gorder = gg.order;
    pa.gstart = gg.start;
    pa.item_start = p.item_start;
    pa.num_classes = int(C);
    pa.self = self ? 1 : 0;
    pa.off = p.off;
    pa.pos = p.pos;
    kernels::positive_pairs<<<grid_for(static_cast<long long>(items), 1, 64ll * num_sms()), 256, 0, stream>>>(pa, items);
    NC_CUDA_CHECK_LAUNCH();
  }
  sort_segments(kernels::Segments{p.pos, p.off, 0, 0, nq}, static_cast<long long>(max_r), stream);
  NC_CUDA_TRY(cudaMemsetAsync(p.cnt, 0, sizeof(int) * std::max<unsigned long long>(pairs, 1), stream));
  kernels::init_rank_state<<<wide_grid(nq, 256), 256, 0, stream>>>(p.off, p.pos, nq, kmax, p.live, p.before,
                                                                   p.thr, p.limit);
  NC_CUDA_CHECK_LAUNCH();

  const kernels::RankState rs{p.pos, p.off, p.cnt, p.live, p.before, p.thr, p.limit, gq.y32, gg.y32};
  {
    CublasScope blas(o.cublas ? o.cublas : default_cublas(), stream, p.cublas_ws, kCublasWorkspace);
    run_tiles(p.tiles, blas.get(), o.precision, p.q, 0, nq, p.g, d, self,
              [&](Index row0, int rows, Index col0, int cols, bool columns) {
                const kernels::Tile t = make_tile(p.tiles, row0, rows, col0, cols, self, p.q, p.g, 0);
                kernels::select_rank_tile<<<select_grid(t, columns), kernels::kSelectThreads, 0, stream>>>(t, rs);
                NC_CUDA_CHECK_LAUNCH();
              });
  }
  upload(p.ks, o.ks.data(), o.ks.size(), stream);
  kernels::query_metrics<<<wide_grid(nq, 256), 256, 0, stream>>>(p.off, p.cnt, p.live, nq, p.ks, nk, p.metrics);
  NC_CUDA_CHECK_LAUNCH();
  std::vector<double> m(static_cast<std::size_t>(nq) * (2 * nk + 4));
  download(m.data(), p.metrics, m.size(), stream);
  std::vector<int> qclass(static_cast<std::size_t>(nq));
  download(qclass.data(), gq.y32, qclass.size(), stream);
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  return aggregate(m, qclass, C, o);
}

}  // namespace detail

/// Leave-one-out evaluation of `d_x` [n, ldx] (float) with labels [n] (int32/int64, >= 0).
template <class L>
RetrievalReport evaluate_retrieval(const float* d_x, Index ldx, const L* d_labels, Index n, Index d,
                                   const RetrievalOptions& options = {}, cudaStream_t stream = 0,
                                   DeviceAllocator& alloc = default_allocator()) {
  return detail::evaluate_impl(d_x, ldx, d_labels, n, d_x, ldx, d_labels, n, d, true, options, stream, alloc);
}

/// Query-vs-gallery evaluation; no row is removed (the sets are taken as disjoint).
template <class LQ, class LG>
RetrievalReport evaluate_retrieval(const float* d_queries, Index ldq, const LQ* d_query_labels, Index nq,
                                   const float* d_gallery, Index ldg, const LG* d_gallery_labels, Index ng,
                                   Index d, const RetrievalOptions& options = {}, cudaStream_t stream = 0,
                                   DeviceAllocator& alloc = default_allocator()) {
  return detail::evaluate_impl(d_queries, ldq, d_query_labels, nq, d_gallery, ldg, d_gallery_labels, ng, d,
                               false, options, stream, alloc);
}

/// Leave-one-out evaluation of host features [N, D] (float32 on the GPU) with labels [N].
template <class D, class Labels>
RetrievalReport evaluate_retrieval(const Eigen::MatrixBase<D>& features, const Labels& labels,
                                   const RetrievalOptions& options = {}, cudaStream_t stream = 0) {
  Index classes = -1;
  const detail::DeviceLabelledRows rows = detail::upload_labelled_rows(features, labels, classes, stream);
  return evaluate_retrieval(rows.x.data(), rows.d, rows.y.data(), rows.n, rows.d, options, stream);
}

/// Query-vs-gallery evaluation of host matrices.
template <class DQ, class LQ, class DG, class LG>
RetrievalReport evaluate_retrieval(const Eigen::MatrixBase<DQ>& queries, const LQ& query_labels,
                                   const Eigen::MatrixBase<DG>& gallery, const LG& gallery_labels,
                                   const RetrievalOptions& options = {}, cudaStream_t stream = 0) {
  const Index nq = queries.rows(), ng = gallery.rows(), d = queries.cols();
  detail::check_rows(nq, "queries");
  detail::check_rows(ng, "gallery");
  NC_EXPECTS(gallery.cols() == d, "gallery has " << gallery.cols() << " columns but queries have " << d
                                                 << " (dimension mismatch)");
  Index cq = -1, cg = -1;
  const std::vector<int64_t> yq = detail::to_int64_labels(query_labels, nq, cq, "query_labels");
  const std::vector<int64_t> yg = detail::to_int64_labels(gallery_labels, ng, cg, "gallery_labels");
  const MatrixF q = detail::to_float_rows(queries), g = detail::to_float_rows(gallery);
  DeviceBuffer<float> dq(q.size(), stream), dg(g.size(), stream);
  DeviceBuffer<int64_t> dyq(yq.size(), stream), dyg(yg.size(), stream);
  detail::upload(dq.data(), q.data(), q.size(), stream);
  detail::upload(dg.data(), g.data(), g.size(), stream);
  detail::upload(dyq.data(), yq.data(), yq.size(), stream);
  detail::upload(dyg.data(), yg.data(), yg.size(), stream);
  return evaluate_retrieval(dq.data(), d, dyq.data(), nq, dg.data(), d, dyg.data(), ng, d, options, stream);
}

}  // namespace nc::cuda
