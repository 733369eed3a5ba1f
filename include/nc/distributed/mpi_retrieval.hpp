// ncml: exact k-nearest neighbours and retrieval metrics over embeddings sharded across MPI
// ranks.
//
// Needs MPI (link MPI::MPI_CXX). Every call is collective: each rank of `comm` passes its own
// shard of the queries and of the gallery (either may be empty on a rank: pass a 0 x D matrix
// and an empty label vector). Rows are numbered globally in rank order: rank 0's rows first,
// then rank 1's, and so on, separately for queries and gallery.
//
//   // This rank's neighbours among the gallery rows of all ranks (global gallery indices).
//   nc::KnnResult nn = nc::mpi::knn(my_queries, my_gallery, 10, MPI_COMM_WORLD);
//   // Leave-one-out over the union of the shards; the same report on every rank.
//   nc::RetrievalReport r = nc::mpi::evaluate_retrieval(my_emb, my_labels, MPI_COMM_WORLD);
//   // Query vs gallery.
//   nc::RetrievalReport s = nc::mpi::evaluate_retrieval(my_q, my_ql, my_g, my_gl, MPI_COMM_WORLD, opt);
//
// Exactness: the results are those of nc::knn and nc::evaluate_retrieval on the concatenated
// data: indices identical, scores and metrics bitwise identical (same float scores, same
// rank counts, float64 sums in the same order), for any number of ranks, any split and any
// thread count, as long as every rank runs the same build on the same kind of CPU (the score
// of a pair comes from the same packed GEMM kernel, detail/knn/gemm.hpp).
//
// Method: the queries of each rank are processed in blocks, owner by owner in rank order.
// A block (prepared float rows) is broadcast by its owner; every rank scores it against its
// own gallery shard with the engine of nc::knn.
//   knn: each rank keeps its local top-min(k, G_r) (global indices) and the owner merges the
//     candidate lists (score descending, global index ascending): the global top-k is in the
//     union of the local ones.
//   evaluate_retrieval: each rank scores the block's same-class pairs with its gallery shard
//     (the kernel of the single-process pre-pass), the positives are all-gathered so that
//     every rank holds each query's global positives sorted best first, and every rank counts
//     its negatives ranked before each positive (the rank-counting sink of the single-process
//     evaluator, keyed by global gallery index; leave-one-out drops the query's own row by
//     global row id). The integer counts are summed on every rank (exact), and every rank
//     computes each query's metrics with the single-process per-query function and adds
//     them in global query order, as one process does, so every rank forms the same report.
// See docs/distributed.md ("Sharded retrieval") for communication volume and memory.
//
// Errors: invalid input on any rank (NaN or Inf, a label vector of the wrong length, negative
// labels, ranks disagreeing on the dimension or on the options, k or a K larger than the
// gallery of all ranks together) makes every rank throw nc::error; no rank is left waiting.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/check.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "../detail/knn/engine.hpp"
#include "../detail/knn/rank_count.hpp"
#include "../detail/knn/topk.hpp"
#include "../knn.hpp"
#include "../metrics/retrieval.hpp"
#include "mpi.hpp"

namespace nc::mpi {

/// How the queries are cut into blocks (each block is one round of messages; its size bounds
/// the per-rank memory of a call). Results do not depend on these values.
struct BlockOptions {
  /// Most queries per block.
  Index queries = 4096;
  /// Most entries held per block: positive pairs (evaluate_retrieval; 8 bytes each, a few
  /// copies) or candidate neighbours from all ranks (knn; 16 bytes each, at the owner). A
  /// single query may exceed it (it is then a block of its own).
  Index entries = Index(1) << 22;
};

// Helpers of this header, in their own namespace (the detail helpers of mpi.hpp are found
// from here).
namespace detail::sharded {

inline int size_of(MPI_Comm comm) {
  int p = 1;
  check_mpi(MPI_Comm_size(comm, &p), "MPI_Comm_size");
  return p;
}

/// `n` as an MPI count.
inline int as_count(Index n, const char* what) {
  NC_EXPECTS(n >= 0 && n <= Index(INT_MAX),
             what << " needs " << n << " elements in one MPI message, more than an int count holds");
  return static_cast<int>(n);
}

/// agree(), also turning other exceptions (allocation failures) into an agreed nc::error.
template <class F>
void agree_all(MPI_Comm comm, F&& f) {
  agree(comm, [&] {
    try {
      f();
    } catch (const ::nc::error&) {
      throw;
    } catch (const std::exception& e) {
      throw ::nc::error(std::string("ncml: ") + e.what());
    }
  });
}

/// Runs f; returns the message of the exception it throws ("" if none).
template <class F>
std::string capture(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    const std::string what = e.what();
    return what.empty() ? std::string("ncml: unknown error") : what;
  }
  return {};
}

/// Called on every rank once some rank is known to have failed (`failure` non-empty there):
/// every rank throws the agreed message of the lowest failing rank.
[[noreturn]] inline void rethrow_agreed(const std::string& failure, MPI_Comm comm) {
  agree(comm, [&] {
    if (!failure.empty()) throw ::nc::error(failure.rfind("ncml: ", 0) == 0 ? failure : "ncml: " + failure);
  });
  NC_FAIL("internal: a rank reported a failure but none was found");
}

/// Marks a positive that a rank stopped counting, in the summed counts (real counts stay
/// below 2^40, and the sum of the marks of all ranks below 2^63).
constexpr int64_t kDropped = int64_t(1) << 40;

/// values[r * n + i] = `mine[i]` of rank r (every rank passes n values).
inline std::vector<int64_t> allgather(const std::vector<int64_t>& mine, MPI_Comm comm) {
  const int n = static_cast<int>(mine.size());
  std::vector<int64_t> out(static_cast<std::size_t>(n) * size_of(comm));
  check_mpi(MPI_Allgather(mine.data(), n, MPI_INT64_T, out.data(), n, MPI_INT64_T, comm), "MPI_Allgather");
  return out;
}

template <class T>
MPI_Datatype datatype_of();
template <>
inline MPI_Datatype datatype_of<float>() { return MPI_FLOAT; }
template <>
inline MPI_Datatype datatype_of<double>() { return MPI_DOUBLE; }
template <>
inline MPI_Datatype datatype_of<int64_t>() { return MPI_INT64_T; }

/// MPI_Bcast of a buffer of any length (in pieces of 2^28).
constexpr Index kPiece = Index(1) << 28;
template <class T>
void bcast(T* x, Index n, int root, MPI_Comm comm) {
  for (Index off = 0; off < n; off += kPiece)
    check_mpi(MPI_Bcast(x + off, int(std::min(kPiece, n - off)), datatype_of<T>(), root, comm), "MPI_Bcast");
}
/// A committed MPI datatype of `bytes` contiguous bytes (one candidate key).
class BytesType {
 public:
  explicit BytesType(int bytes) {
    check_mpi(MPI_Type_contiguous(bytes, MPI_BYTE, &type_), "MPI_Type_contiguous");
    check_mpi(MPI_Type_commit(&type_), "MPI_Type_commit");
  }
  ~BytesType() { MPI_Type_free(&type_); }
  BytesType(const BytesType&) = delete;
  BytesType& operator=(const BytesType&) = delete;
  MPI_Datatype get() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

/// Row counts of every rank and the global index of each rank's first row.
struct Shards {
  std::vector<int64_t> rows, first;
  int64_t total = 0;
};

inline Shards make_shards(const std::vector<int64_t>& header, int stride, int field, int ranks) {
  Shards s;
  s.rows.resize(ranks);
  s.first.resize(ranks);
  for (int r = 0; r < ranks; ++r) {
    s.rows[r] = header[std::size_t(r) * stride + field];
    s.first[r] = s.total;
    s.total += s.rows[r];
  }
  return s;
}

/// Throws (on every rank: `header` is the same everywhere) unless field `field` of the
/// all-gathered header is the same on every rank.
inline void check_field(const std::vector<int64_t>& header, int stride, int field, int ranks, const char* what) {
  bool same = true;
  for (int r = 1; r < ranks; ++r) same = same && header[std::size_t(r) * stride + field] == header[field];
  if (same) return;
  std::vector<int64_t> v(ranks);
  for (int r = 0; r < ranks; ++r) v[r] = header[std::size_t(r) * stride + field];
  NC_FAIL("ranks disagree on " << what << " (by rank: " << ::nc::detail::join_indices(v) << ")");
}

/// Sizes of consecutive blocks of `n` queries: at most `max_queries` each and, unless a
/// single query exceeds it, at most `max_cost` total cost(i).
template <class Cost>
std::vector<Index> plan_blocks(Index n, Index max_queries, int64_t max_cost, Cost&& cost) {
  std::vector<Index> blocks;
  for (Index i = 0; i < n;) {
    Index m = 0;
    int64_t c = 0;
    while (i + m < n && m < max_queries) {
      const int64_t ci = cost(i + m);
      if (m > 0 && c + ci > max_cost) break;
      c += ci;
      ++m;
    }
    blocks.push_back(m);
    i += m;
  }
  return blocks;
}

/// Most queries per block for the dimension (so that a block's rows fit one MPI message).
inline Index max_block_queries(const BlockOptions& b, Index dim) {
  return std::max<Index>(1, std::min<Index>(b.queries, kPiece / std::max<Index>(1, dim)));
}

inline void check_block_options(const BlockOptions& b) {
  NC_EXPECTS(b.queries > 0, "BlockOptions::queries must be positive, got " << b.queries);
  NC_EXPECTS(b.entries > 0, "BlockOptions::entries must be positive, got " << b.entries);
}

/// The block sizes of `owner`'s queries (`mine` on the owner), on every rank.
inline std::vector<int64_t> owner_blocks(const std::vector<Index>& mine, int owner, MPI_Comm comm) {
  const bool at_owner = rank_of(comm) == owner;
  int64_t n = at_owner ? int64_t(mine.size()) : 0;
  bcast(&n, 1, owner, comm);
  std::vector<int64_t> blocks(static_cast<std::size_t>(n));
  if (at_owner) std::copy(mine.begin(), mine.end(), blocks.begin());
  bcast(blocks.data(), n, owner, comm);
  return blocks;
}

/// The queries of a block, prepared (float, normalized for cosine, padded) by their owner
/// and broadcast to every rank.
template <class T>
MatrixF broadcast_block(const ConstRowsRef<T>& q, Index start, Index nb, bool normalize, int owner,
                        MPI_Comm comm) {
  MatrixF qf;
  if (rank_of(comm) == owner) {
    const ConstRowsRef<T> rows(q.middleRows(start, nb));
    qf = ::nc::detail::knn::padded_rows(rows, normalize);
  } else {
    qf = MatrixF::Zero(::nc::detail::knn::round_up(nb, ::nc::detail::knn::kRowAlign), q.cols());
  }
  bcast(qf.data(), nb * qf.cols(), owner, comm);  // the real rows are the first nb (row-major)
  return qf;
}

/// The gallery shard, prepared and packed as left operand (as in the single-process engine).
struct GalleryShard {
  MatrixF rows;
  ::nc::detail::knn::Operand op;
};

template <class T>
GalleryShard prepare_gallery(const ConstRowsRef<T>& g, bool normalize, bool l2, MPI_Comm comm) {
  GalleryShard s;
  agree_all(comm, [&] {
    s.rows = ::nc::detail::knn::padded_rows(g, normalize);
    if (g.rows() > 0) s.op = ::nc::detail::knn::make_operand(s.rows, g.rows(), true, false, l2);
  });
  return s;
}

// ---------------------------------------------------------------------------------------------
// knn

/// TopK sink that never takes the query's own row (global ids; leave-one-out).
template <class P>
struct ExcludingTopK {
  ::nc::detail::knn::TopK<P>& top;
  const std::vector<Index>& own;  // local gallery row of each query's own row, or -1
  const float* thresholds() const { return top.thresholds(); }
  void accept(Index q, Index g, float s) {
    if (g != own[q]) top.accept(q, g, s);
  }
};

template <class P, class TQ, class TG>
KnnResult knn_sharded(const ConstRowsRef<TQ>& q, const ConstRowsRef<TG>& g, Index k, const Shards& qs,
                      const Shards& gs, const KnnOptions& o, const BlockOptions& bo, MPI_Comm comm) {
  namespace kn = ::nc::detail::knn;
  const int me = rank_of(comm), ranks = size_of(comm);
  const bool normalize = o.similarity == Similarity::cosine;
  const bool l2 = o.similarity == Similarity::neg_squared_l2;
  const int threads = ::nc::detail::resolve_threads(o.threads);
  const Index d = q.cols(), gfirst = gs.first[me], grows = g.rows();
  const GalleryShard gallery = prepare_gallery(g, normalize, l2, comm);

  // Candidates per query from each rank: its local top-min(k, G_r).
  std::vector<Index> kr(ranks);
  Index per_query = 0;
  for (int r = 0; r < ranks; ++r) per_query += kr[r] = std::min<Index>(k, gs.rows[r]);
  const Index kk = kr[me];
  const std::vector<Index> blocks = plan_blocks(q.rows(), max_block_queries(bo, d), bo.entries,
                                                [&](Index) { return int64_t(per_query); });

  using Cand = kn::Candidate<int64_t>;
  const BytesType cand_type(int(sizeof(Cand)));
  KnnResult out;
  out.indices.resize(q.rows(), k);
  out.scores.resize(q.rows(), k);
  int64_t done = 0;
  for (int owner = 0; owner < ranks; ++owner) {
    Index start = 0;
    for (const int64_t nb : owner_blocks(blocks, owner, comm)) {
      const MatrixF qf = broadcast_block(q, start, nb, normalize, owner, comm);
      const int64_t qfirst = qs.first[owner] + start;  // global id of the block's first query

      // Local top-kk of every query of the block, global gallery indices; -1 marks a slot
      // left empty (the query's own row was excluded from a shard of kk rows).
      std::vector<float> sc(std::size_t(nb * kk), std::numeric_limits<float>::quiet_NaN());
      std::vector<int64_t> ix(std::size_t(nb * kk), -1);
      agree_all(comm, [&] {
        // The progress callback runs here too, so that an exception from it is agreed.
        if (o.progress) o.progress(double(done + nb) / double(qs.total));
        if (kk == 0) return;
        const kn::Operand qop = kn::make_operand(qf, nb, false, true, l2);
        const kn::EngineOptions e = kn::engine_options(o.similarity, false, o.threads, o.query_tile,
                                                       o.gallery_tile, qop.padded_rows, gallery.op.padded_rows,
                                                       nullptr);
        kn::TopK<P> top(nb, kk);
        if (o.exclude_self) {
          std::vector<Index> own(std::size_t(nb), -1);
          for (Index i = 0; i < nb; ++i) {
            const int64_t local = qfirst + i - gfirst;
            if (local >= 0 && local < grows) own[i] = Index(local);
          }
          ExcludingTopK<P> sink{top, own};
          kn::run(qop, &gallery.op, sink, e);
        } else {
          kn::run(qop, &gallery.op, top, e);
        }
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
        {
          std::vector<typename P::Key> scratch;
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
          for (Index i = 0; i < nb; ++i) top.finish(i, sc.data() + i * kk, ix.data() + i * kk, scratch);
        }
        for (int64_t& v : ix)
          if (v >= 0) v += gfirst;
      });

      // Gather the candidates at the owner and merge: score descending, global index ascending.
      std::vector<Cand> mine(sc.size());
      for (std::size_t j = 0; j < sc.size(); ++j) mine[j] = Cand{sc[j], ix[j]};
      std::vector<int> counts(ranks), displs(ranks);
      Index total = 0;
      for (int r = 0; r < ranks; ++r) {
        displs[r] = as_count(total, "knn candidates of a block");
        counts[r] = as_count(nb * kr[r], "knn candidates of a block");
        total += nb * kr[r];
      }
      as_count(total, "knn candidates of a block");
      std::vector<Cand> all(me == owner ? static_cast<std::size_t>(total) : 0);
      check_mpi(MPI_Gatherv(mine.data(), counts[me], cand_type.get(), all.data(), counts.data(), displs.data(),
                            cand_type.get(), owner, comm),
                "MPI_Gatherv");
      if (me == owner) {
        auto better = [](const Cand& a, const Cand& b) { return kn::ranks_before(a, b); };
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
        {
          std::vector<Cand> cand;
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
          for (Index i = 0; i < nb; ++i) {
            cand.clear();
            for (int r = 0; r < ranks; ++r)
              for (Index j = 0; j < kr[r]; ++j) {
                const Cand& c = all[static_cast<std::size_t>(displs[r] + i * kr[r] + j)];
                if (c.index >= 0) cand.push_back(c);
              }
            // cand.size() >= k: validated (k <= global gallery, minus the query itself).
            std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), better);
            for (Index j = 0; j < k; ++j) {
              out.scores(start + i, j) = cand[j].score;
              out.indices(start + i, j) = cand[j].index;
            }
          }
        }
      }
      start += nb;
      done += nb;
    }
  }
  (void)threads;
  if (o.progress) o.progress(1.0);
  return out;
}

// ---------------------------------------------------------------------------------------------
// evaluate_retrieval

/// The rank-counting sink of detail/knn/rank_count.hpp, keyed by global gallery rows for a
/// gallery shard (gallery row g of the shard is global row first + g), so ties between
/// shards are broken as in one process. Each rank counts only its own
/// negatives; a positive it stops counting (its rank on this rank alone already reaches L)
/// has a global rank >= L as well, so the sums over ranks are exact for every positive
/// still counted on all ranks.
using ::nc::detail::knn::RankCounter;
using ::nc::detail::knn::MetricSums;

/// `self`: leave-one-out, the queries are the gallery (same rows, same global numbering);
/// the pair (global i, global i) is removed.
template <class P, class TQ, class TG>
RetrievalReport evaluate_sharded(const ConstRowsRef<TQ>& q, const std::vector<int64_t>& ql,
                                 const ConstRowsRef<TG>& g, const std::vector<int64_t>& gl, bool self,
                                 Index num_classes, const Shards& qs, const Shards& gs,
                                 const RetrievalOptions& o, const BlockOptions& bo, MPI_Comm comm) {
  namespace kn = ::nc::detail::knn;
  using Key = typename P::Key;
  const int me = rank_of(comm), ranks = size_of(comm);
  const bool normalize = o.similarity == Similarity::cosine;
  const bool l2 = o.similarity == Similarity::neg_squared_l2;
  const int threads = ::nc::detail::resolve_threads(o.threads);
  const Index d = q.cols(), gfirst = gs.first[me], grows = g.rows();
  const int kmax = *std::max_element(o.ks.begin(), o.ks.end());

  // Gallery items per class over all ranks: R of every query, known everywhere.
  std::vector<int64_t> class_size(std::size_t(num_classes), 0);
  for (int64_t y : gl) ++class_size[y];
  sum_everywhere_chunked(class_size.data(), num_classes, comm);
  auto relevant = [&](int64_t label) { return class_size[label] - (self ? 1 : 0); };
  const int64_t largest = *std::max_element(class_size.begin(), class_size.end());
  NC_EXPECTS(largest < INT_MAX, "a class has " << largest << " gallery items, more than one MPI message holds");

  const GalleryShard gallery = prepare_gallery(g, normalize, l2, comm);
  const std::vector<Index> blocks = plan_blocks(q.rows(), max_block_queries(bo, d), bo.entries,
                                                [&](Index i) { return relevant(ql[i]); });
  const BytesType key_type(int(sizeof(Key)));
  MetricSums sums(o.ks.size(), num_classes);
  int64_t done = 0;
  for (int owner = 0; owner < ranks; ++owner) {
    // The owner's query labels, then its queries block by block.
    std::vector<int64_t> owner_labels(static_cast<std::size_t>(qs.rows[owner]));
    if (me == owner) owner_labels = ql;
    bcast(owner_labels.data(), qs.rows[owner], owner, comm);
    Index start = 0;
    for (const int64_t nb : owner_blocks(blocks, owner, comm)) {
      const MatrixF qf = broadcast_block(q, start, nb, normalize, owner, comm);
      const std::vector<int64_t> bl(owner_labels.begin() + start, owner_labels.begin() + start + nb);
      const int64_t qfirst = qs.first[owner] + start;

      // Each query's positives: R, their offsets and the rank limit L = max(max K, R).
      std::vector<int64_t> offsets(static_cast<std::size_t>(nb) + 1, 0), limit(static_cast<std::size_t>(nb));
      for (Index i = 0; i < nb; ++i) {
        const int64_t r = relevant(bl[i]);
        offsets[i + 1] = offsets[i] + r;
        limit[i] = std::max<int64_t>(kmax, r);
      }
      const int64_t total = offsets[nb];

      // 1. This shard's positives of every query (global indices, best first), without the
      //    query's own row. mine[i]: how many; mine[nb]: 1 if this rank failed.
      kn::Operand qop;
      std::vector<int64_t> mine(static_cast<std::size_t>(nb) + 1, 0);
      std::vector<Key> local;
      std::string failure = capture([&] {
        qop = kn::make_operand(qf, nb, false, true, l2);
        if (grows == 0 || total == 0) return;
        std::vector<int64_t> loff;
        const Index tile = kn::resolve_tile(o.query_tile, qop.padded_rows, kn::kAutoTile);
        // The rows are prepared already: read them as they are (no second normalization).
        const kn::RowSource qs(ConstRowsRef<float>(qf.topRows(nb)), false);
        const kn::RowSource gs(ConstRowsRef<float>(gallery.rows.topRows(grows)), false);
        const std::vector<Key> pos = kn::positive_lists<P>(qs, bl, gs, gl, num_classes, false, l2, tile,
                                                           threads, loff);
        local.reserve(pos.size());
        for (Index i = 0; i < nb; ++i)
          for (int64_t j = loff[i]; j < loff[i + 1]; ++j) {
            const Index global = gfirst + P::index(pos[j]);
            if (self && global == qfirst + i) continue;
            local.push_back(P::make(P::score(pos[j]), global));
            ++mine[i];
          }
      });
      if (!failure.empty()) {
        local.clear();
        std::fill(mine.begin(), mine.end(), 0);
        mine[nb] = 1;
      }

      // 2. Every rank gets every query's positives, merged best first.
      const std::vector<int64_t> all = allgather(mine, comm);  // all[r * (nb + 1) + i]
      const std::size_t row = static_cast<std::size_t>(nb) + 1;
      for (int r = 0; r < ranks; ++r)
        if (all[r * row + nb] != 0) rethrow_agreed(failure, comm);
      std::vector<int> counts(ranks), displs(ranks);
      int64_t gathered = 0;
      for (int r = 0; r < ranks; ++r) {
        int64_t n = 0;
        for (Index i = 0; i < nb; ++i) n += all[r * row + i];
        displs[r] = as_count(gathered, "positives of a block");
        counts[r] = as_count(n, "positives of a block");
        gathered += n;
      }
      NC_EXPECTS(gathered == total, "internal: " << gathered << " positives gathered, expected " << total);
      std::vector<Key> received(static_cast<std::size_t>(total)), merged(static_cast<std::size_t>(total));
      check_mpi(MPI_Allgatherv(local.data(), counts[me], key_type.get(), received.data(), counts.data(),
                               displs.data(), key_type.get(), comm),
                "MPI_Allgatherv");
      local = std::vector<Key>();
      {
        std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
        std::size_t at = 0;
        for (int r = 0; r < ranks; ++r)
          for (Index i = 0; i < nb; ++i)
            for (int64_t j = 0; j < all[r * row + i]; ++j) merged[fill[i]++] = received[at++];
        received = std::vector<Key>();
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(dynamic, 64)
#endif
        for (Index i = 0; i < nb; ++i)
          std::sort(merged.begin() + offsets[i], merged.begin() + offsets[i + 1], typename P::Better());
      }

      // 3. Every rank counts its negatives ranked before each positive; the counts are summed
      //    on every rank. A positive this rank stopped counting (its rank already reaches L)
      //    is marked by kDropped; the last entry is the failure flag.
      std::vector<int64_t> cnt(static_cast<std::size_t>(total) + 1, 0);
      failure = capture([&] {
        // The progress callback runs here too, so that an exception from it is agreed.
        if (o.progress) o.progress(double(done + nb) / double(qs.total));
        if (grows == 0 || total == 0) return;
        const kn::EngineOptions e = kn::engine_options(o.similarity, false, o.threads, o.query_tile,
                                                       o.gallery_tile, qop.padded_rows, gallery.op.padded_rows,
                                                       nullptr);
        RankCounter<P> counter(offsets, merged, limit, bl.data(), gl.data(), gfirst);
        kn::run(qop, &gallery.op, counter, e);
        const std::vector<int64_t>& c = counter.counts();
        const std::vector<int64_t>& live = counter.live();
        for (Index i = 0; i < nb; ++i)
          for (int64_t j = 0; j < offsets[i + 1] - offsets[i]; ++j)
            cnt[offsets[i] + j] = j < live[i] ? c[offsets[i] + j] : kDropped;
      });
      cnt[total] = failure.empty() ? 0 : 1;
      sum_everywhere_chunked(cnt.data(), total + 1, comm);
      if (cnt[total] != 0) rethrow_agreed(failure, comm);

      // 4. Every rank adds the block's per-query metrics, in global query order.
      std::vector<int64_t> rk;
      kn::QueryMetrics qm;
      for (Index i = 0; i < nb; ++i) {
        const int64_t r = offsets[i + 1] - offsets[i];
        if (r == 0) {
          sums.lone(bl[i]);
          continue;
        }
        // Positives counted on every rank have exact global ranks; the others rank at L or
        // later, where no metric looks (as in the single-process evaluator).
        rk.clear();
        int64_t negatives = 0;
        for (int64_t j = 0; j < r && cnt[offsets[i] + j] < kDropped; ++j) {
          negatives += cnt[offsets[i] + j];
          rk.push_back(j + negatives);
        }
        kn::query_metrics(rk, r, o.ks, qm);
        sums.add(bl[i], qm);
      }
      start += nb;
      done += nb;
    }
  }
  RetrievalReport rep = sums.report(o.ks, o.per_class);
  if (o.progress) o.progress(1.0);
  return rep;
}

/// Checks shared by both evaluate_retrieval overloads: options equal on every rank, one
/// dimension, K within the gallery of all ranks. `header` rows (one per rank): queries,
/// gallery rows, query dim, gallery dim, classes (max label + 1), similarity, per_class,
/// number of ks.
inline void check_retrieval_header(const std::vector<int64_t>& header, int ranks, const RetrievalOptions& o,
                                   bool self, MPI_Comm comm) {
  constexpr int stride = 8;
  check_field(header, stride, 2, ranks, "the feature dimension");
  check_field(header, stride, 3, ranks, "the feature dimension");
  NC_EXPECTS(header[2] == header[3], "gallery has " << header[3] << " columns but queries have " << header[2]
                                                    << " (dimension mismatch)");
  check_field(header, stride, 5, ranks, "the similarity");
  check_field(header, stride, 6, ranks, "per_class");
  check_field(header, stride, 7, ranks, "the number of ks");
  std::vector<int64_t> ks(o.ks.begin(), o.ks.end());
  check_same(comm, ks, "ks");
  const Shards qs = make_shards(header, stride, 0, ranks), gs = make_shards(header, stride, 1, ranks);
  NC_EXPECTS(qs.total > 0, (self ? "features" : "queries") << " are empty on every rank");
  NC_EXPECTS(gs.total > 0, "gallery is empty on every rank");
  NC_EXPECTS(gs.total < kDropped && ranks < (1 << 22),
             "the sharded evaluator supports up to 2^40 gallery rows and 2^22 ranks, got "
                 << gs.total << " rows and " << ranks << " ranks");
  ::nc::detail::knn::check_ks(o.ks, gs.total - (self ? 1 : 0), self);
}

template <class TQ, class TG>
RetrievalReport evaluate_dispatch(const ConstRowsRef<TQ>& q, const std::vector<int64_t>& ql,
                                  const ConstRowsRef<TG>& g, const std::vector<int64_t>& gl, bool self,
                                  int64_t local_classes, const RetrievalOptions& o, const BlockOptions& b,
                                  MPI_Comm comm) {
  const int ranks = size_of(comm);
  const std::vector<int64_t> header =
      allgather({int64_t(q.rows()), int64_t(g.rows()), int64_t(q.cols()), int64_t(g.cols()), local_classes,
                 int64_t(o.similarity), int64_t(o.per_class), int64_t(o.ks.size())},
                comm);
  check_retrieval_header(header, ranks, o, self, comm);
  int64_t classes = 0;
  for (int r = 0; r < ranks; ++r) classes = std::max(classes, header[std::size_t(r) * 8 + 4]);
  const Shards qs = make_shards(header, 8, 0, ranks), gs = make_shards(header, 8, 1, ranks);
  if (gs.total < int64_t(std::numeric_limits<uint32_t>::max()))
    return evaluate_sharded<::nc::detail::knn::Packed32>(q, ql, g, gl, self, Index(classes), qs, gs, o, b, comm);
  return evaluate_sharded<::nc::detail::knn::Wide>(q, ql, g, gl, self, Index(classes), qs, gs, o, b, comm);
}

}  // namespace detail::sharded

/// The k nearest gallery rows, among the gallery shards of all ranks, of this rank's queries.
/// Returns indices [Q_local, k] (int64, GLOBAL gallery indices: rank 0's gallery rows first)
/// and scores [Q_local, k], equal to the rows of nc::knn on the concatenated queries and
/// gallery. exclude_self: query with global id i never gets gallery row i (the query and
/// gallery sets must have the same total size; each rank usually passes the same rows as both).
/// Collective; k, similarity and exclude_self must be the same on every rank.
template <class DQ, class DG>
KnnResult knn(const Eigen::MatrixBase<DQ>& local_queries, const Eigen::MatrixBase<DG>& local_gallery, Index k,
              MPI_Comm comm, const KnnOptions& options = {}, const BlockOptions& blocks = {}) {
  using TQ = typename DQ::Scalar;
  using TG = typename DG::Scalar;
  static_assert(::nc::detail::is_supported_scalar<TQ>::value, "queries must be float or double");
  static_assert(::nc::detail::is_supported_scalar<TG>::value, "gallery must be float or double");
  const ConstRowsRef<TQ> q(local_queries);
  const ConstRowsRef<TG> g(local_gallery);
  detail::sharded::agree_all(comm, [&] {
    ::nc::detail::knn::check_similarity(options.similarity);
    ::nc::detail::knn::check_engine_options(options.threads, options.query_tile, options.gallery_tile);
    detail::sharded::check_block_options(blocks);
    NC_EXPECTS(k > 0, "k must be positive, got k = " << k);
    if (q.rows() > 0) ::nc::detail::check_features(q, "queries");
    if (g.rows() > 0) ::nc::detail::check_features(g, "gallery");
  });
  const int ranks = detail::sharded::size_of(comm);
  constexpr int stride = 6;
  const std::vector<int64_t> header = detail::sharded::allgather(
      {int64_t(q.rows()), int64_t(g.rows()), int64_t(q.cols()), int64_t(g.cols()), int64_t(k),
       int64_t(options.similarity) * 2 + int64_t(options.exclude_self)},
      comm);
  detail::sharded::check_field(header, stride, 2, ranks, "the feature dimension");
  detail::sharded::check_field(header, stride, 3, ranks, "the feature dimension");
  NC_EXPECTS(header[2] == header[3], "gallery has " << header[3] << " columns but queries have " << header[2]
                                                    << " (dimension mismatch)");
  detail::sharded::check_field(header, stride, 4, ranks, "k");
  detail::sharded::check_field(header, stride, 5, ranks, "(similarity, exclude_self)");
  const detail::sharded::Shards qs = detail::sharded::make_shards(header, stride, 0, ranks);
  const detail::sharded::Shards gs = detail::sharded::make_shards(header, stride, 1, ranks);
  NC_EXPECTS(qs.total > 0, "queries are empty on every rank");
  NC_EXPECTS(gs.total > 0, "gallery is empty on every rank");
  if (options.exclude_self)
    NC_EXPECTS(qs.total == gs.total, "exclude_self needs queries and gallery of the same rows, got "
                                         << qs.total << " queries and " << gs.total
                                         << " gallery rows over all ranks");
  const int64_t available = gs.total - (options.exclude_self ? 1 : 0);
  NC_EXPECTS(k <= available, "k = " << k << " is larger than the gallery of all ranks (" << available << " rows"
                                    << (options.exclude_self ? " besides the query" : "") << ")");
  if (gs.total < int64_t(std::numeric_limits<uint32_t>::max()))
    return detail::sharded::knn_sharded<::nc::detail::knn::Packed32>(q, g, k, qs, gs, options, blocks, comm);
  return detail::sharded::knn_sharded<::nc::detail::knn::Wide>(q, g, k, qs, gs, options, blocks, comm);
}

/// Leave-one-out evaluation over the union of all ranks' shards: every row (global id in rank
/// order) is a query against all other rows of all ranks. The same report on every rank,
/// equal to nc::evaluate_retrieval on the concatenated features and labels. Collective; the
/// options (ks, similarity, per_class) must be the same on every rank.
template <class D, class Labels>
RetrievalReport evaluate_retrieval(const Eigen::MatrixBase<D>& local_features, const Labels& local_labels,
                                   MPI_Comm comm, const RetrievalOptions& options = {},
                                   const BlockOptions& blocks = {}) {
  using T = typename D::Scalar;
  static_assert(::nc::detail::is_supported_scalar<T>::value, "features must be float or double");
  const ConstRowsRef<T> x(local_features);
  const auto y = label_view(local_labels);
  int64_t classes = 0;
  detail::sharded::agree_all(comm, [&] {
    ::nc::detail::knn::check_similarity(options.similarity);
    ::nc::detail::knn::check_engine_options(options.threads, options.query_tile, options.gallery_tile);
    detail::sharded::check_block_options(blocks);
    NC_EXPECTS(!options.ks.empty(), "ks is empty: give at least one K for Recall@K");
    if (x.rows() > 0) ::nc::detail::check_features(x, "features");
    classes = ::nc::detail::check_labels(y, x.rows(), -1, "labels");
  });
  const std::vector<int64_t> yl = ::nc::detail::knn::labels_as_int64(y);
  return detail::sharded::evaluate_dispatch<T, T>(x, yl, x, yl, true, classes, options, blocks, comm);
}

/// Query-vs-gallery evaluation: this rank's queries with their labels and this rank's
/// gallery shard with its labels; every query is ranked against the gallery rows of all
/// ranks. The same report on every rank, equal to nc::evaluate_retrieval on the concatenated
/// queries and gallery. Collective; the options must be the same on every rank.
template <class DQ, class LQ, class DG, class LG>
RetrievalReport evaluate_retrieval(const Eigen::MatrixBase<DQ>& local_queries, const LQ& local_query_labels,
                                   const Eigen::MatrixBase<DG>& local_gallery, const LG& local_gallery_labels,
                                   MPI_Comm comm, const RetrievalOptions& options = {},
                                   const BlockOptions& blocks = {}) {
  using TQ = typename DQ::Scalar;
  using TG = typename DG::Scalar;
  static_assert(::nc::detail::is_supported_scalar<TQ>::value, "queries must be float or double");
  static_assert(::nc::detail::is_supported_scalar<TG>::value, "gallery must be float or double");
  const ConstRowsRef<TQ> q(local_queries);
  const ConstRowsRef<TG> g(local_gallery);
  const auto yq = label_view(local_query_labels);
  const auto yg = label_view(local_gallery_labels);
  int64_t classes = 0;
  detail::sharded::agree_all(comm, [&] {
    ::nc::detail::knn::check_similarity(options.similarity);
    ::nc::detail::knn::check_engine_options(options.threads, options.query_tile, options.gallery_tile);
    detail::sharded::check_block_options(blocks);
    NC_EXPECTS(!options.ks.empty(), "ks is empty: give at least one K for Recall@K");
    if (q.rows() > 0) ::nc::detail::check_features(q, "queries");
    if (g.rows() > 0) ::nc::detail::check_features(g, "gallery");
    const Index cq = ::nc::detail::check_labels(yq, q.rows(), -1, "query_labels");
    const Index cg = ::nc::detail::check_labels(yg, g.rows(), -1, "gallery_labels");
    classes = std::max(cq, cg);
  });
  const std::vector<int64_t> lq = ::nc::detail::knn::labels_as_int64(yq);
  const std::vector<int64_t> lg = ::nc::detail::knn::labels_as_int64(yg);
  return detail::sharded::evaluate_dispatch<TQ, TG>(q, lq, g, lg, false, classes, options, blocks, comm);
}

}  // namespace nc::mpi
