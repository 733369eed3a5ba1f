// Sharded kNN and retrieval metrics (nc/distributed/mpi_retrieval.hpp) against the
// single-process nc::knn and nc::evaluate_retrieval on the concatenated data, which every
// rank builds deterministically: indices identical, scores and metrics bitwise identical.
#include <catch2/catch.hpp>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <nc/distributed/mpi_retrieval.hpp>
#include <nc/knn.hpp>
#include <nc/metrics/retrieval.hpp>

#include "mpi/mpi_support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_mpi_retrieval {

using namespace nct;

namespace {
// The mirror split: rank 0 holds no rows with 3 or more ranks, the largest share comes first.
std::pair<Index, Index> shard_rev(Index n, int r, int p) {
  const auto [b, e] = shard(n, p - 1 - r, p);
  return {n - e, n - b};
}

struct Data {
  MatrixD x;
  std::vector<int> y;
};

// Overlapping Gaussian classes (metrics well inside (0, 1)) with the hard cases planted:
// class C-2 only in rows 0..5 (all on rank 0 under shard()), class C-1 a single row (a lone
// query in leave-one-out), exact duplicates of rows 1 and 2 at the end of the data (another
// rank) with the same and with a different label, and two zero rows (cosine ties with
// everything). `grid`: values rounded to multiples of 1/4 in small dimension, so that inner
// products and distances tie exactly and ties are broken by global index across ranks.
Data make_data(Index n, Index d, Index C, uint64_t seed, bool grid = false) {
  Data s;
  s.x = mixture(n, d, C - 2, s.y, seed, 1.5, 1.0);
  for (Index i = 0; i < 6; ++i) {
    s.y[i] = int(C - 2);
    s.x.row(i).array() += 1.0;
  }
  s.y[n / 2] = int(C - 1);
  s.x.row(n - 1) = s.x.row(1);
  s.y[n - 1] = s.y[1];
  s.x.row(n - 2) = s.x.row(2);
  s.y[n - 2] = (s.y[2] + 1) % int(C - 2);
  s.x.row(n / 3).setZero();
  s.x.row(2 * n / 3).setZero();
  if (grid) s.x = (s.x.array() * 4).round() / 4;
  return s;
}

template <class M>
M rows_of(const M& x, std::pair<Index, Index> r) {
  return x.middleRows(r.first, r.second - r.first);
}
std::vector<int> rows_of(const std::vector<int>& y, std::pair<Index, Index> r) {
  return std::vector<int>(y.begin() + r.first, y.begin() + r.second);
}

bool same(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }
bool same(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!same(a[i], b[i])) return false;
  return true;
}
template <class D1, class D2>
bool same(const Eigen::DenseBase<D1>& a, const Eigen::DenseBase<D2>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j)
      if (!same(double(a(i, j)), double(b(i, j)))) return false;
  return true;
}

// Every field bitwise equal (NaN equals NaN).
void check_same_report(const nc::RetrievalReport& a, const nc::RetrievalReport& b) {
  CHECK(a.ks == b.ks);
  CHECK(same(a.recall_at_k, b.recall_at_k));
  CHECK(same(a.precision_at_k, b.precision_at_k));
  CHECK(same(a.map_at_r, b.map_at_r));
  CHECK(same(a.r_precision, b.r_precision));
  CHECK(same(a.mrr, b.mrr));
  CHECK(a.num_queries == b.num_queries);
  CHECK(a.num_lone_queries == b.num_lone_queries);
  CHECK(same(a.class_avg_recall_at_k, b.class_avg_recall_at_k));
  CHECK(same(a.class_avg_precision_at_k, b.class_avg_precision_at_k));
  CHECK(same(a.class_avg_map_at_r, b.class_avg_map_at_r));
  CHECK(same(a.class_avg_r_precision, b.class_avg_r_precision));
  CHECK(same(a.class_avg_mrr, b.class_avg_mrr));
  CHECK(a.num_classes_evaluated == b.num_classes_evaluated);
  CHECK(a.class_num_queries == b.class_num_queries);
  CHECK(a.class_num_lone_queries == b.class_num_lone_queries);
  CHECK(same(a.class_recall_at_k, b.class_recall_at_k));
  CHECK(same(a.class_precision_at_k, b.class_precision_at_k));
  CHECK(same(a.class_map_at_r, b.class_map_at_r));
  CHECK(same(a.class_r_precision, b.class_r_precision));
  CHECK(same(a.class_mrr, b.class_mrr));
}

// Rows [r.first, r.second) of the single-process result equal the sharded result.
void check_same_knn(const nc::KnnResult& dist, const nc::KnnResult& one, std::pair<Index, Index> r) {
  REQUIRE(dist.indices.rows() == r.second - r.first);
  REQUIRE(dist.indices.cols() == one.indices.cols());
  CHECK(dist.indices == one.indices.middleRows(r.first, r.second - r.first));
  CHECK(same(dist.scores, one.scores.middleRows(r.first, r.second - r.first)));
}

// A sample of block settings: the default (one block per rank here) and small blocks, cut by
// the query count or by the entries' budget (positives: about 40 per query here).
std::vector<nc::mpi::BlockOptions> block_settings() {
  nc::mpi::BlockOptions small;
  small.queries = 16;
  small.entries = 500;
  return {nc::mpi::BlockOptions{}, small};
}

// Cosine, leave-one-out.
nc::KnnOptions loo() {
  nc::KnnOptions o;
  o.exclude_self = true;
  return o;
}

const nc::Similarity kSims[] = {nc::Similarity::cosine, nc::Similarity::inner_product,
                                nc::Similarity::neg_squared_l2};
}  // namespace

TEST_CASE("sharded knn equals nc::knn on the concatenated data", "[mpi][knn]") {
  const int me = rank(), p = size();
  const Data g = make_data(240, 6, 9, 41, true), q = make_data(90, 6, 9, 42, true);
  const auto gr = shard(g.x.rows(), me, p), qr = shard_rev(q.x.rows(), me, p);
  const MatrixD my_g = rows_of(g.x, gr), my_q = rows_of(q.x, qr);
  for (const auto& blocks : block_settings()) {
    for (nc::Similarity sim : kSims) {
      INFO("similarity " << nc::to_string(sim) << ", block queries " << blocks.queries);
      nc::KnnOptions o;
      o.similarity = sim;
      // Query vs gallery; k larger than some ranks' gallery shards.
      for (Index k : {Index(1), Index(9), Index(100)}) {
        const nc::KnnResult one = nc::knn(q.x, g.x, k, o);
        check_same_knn(nc::mpi::knn(my_q, my_g, k, MPI_COMM_WORLD, o, blocks), one, qr);
      }
      // Leave-one-out, rows split the same way for queries and gallery; then k = all others.
      o.exclude_self = true;
      for (Index k : {Index(5), g.x.rows() - 1}) {
        const nc::KnnResult one = nc::knn(g.x, g.x, k, o);
        check_same_knn(nc::mpi::knn(my_g, my_g, k, MPI_COMM_WORLD, o, blocks), one, gr);
      }
      // Leave-one-out with the queries split differently from the gallery (global ids).
      const auto gq = shard_rev(g.x.rows(), me, p);
      const MatrixD my_gq = rows_of(g.x, gq);
      check_same_knn(nc::mpi::knn(my_gq, my_g, 12, MPI_COMM_WORLD, o, blocks), nc::knn(g.x, g.x, 12, o), gq);
    }
  }
  // Float input, cosine, and threads/tiles that differ between ranks.
  const nc::MatrixF gf = g.x.cast<float>(), my_gf = rows_of(gf, gr);
  nc::KnnOptions o;
  o.threads = 1 + me % 2;
  o.query_tile = me == 0 ? 48 : 0;
  const nc::KnnResult one = nc::knn(gf, gf, 10, loo());
  o.exclude_self = true;
  check_same_knn(nc::mpi::knn(my_gf, my_gf, 10, MPI_COMM_WORLD, o), one, gr);
}

TEST_CASE("sharded leave-one-out evaluate_retrieval equals the single-process evaluator", "[mpi][retrieval]") {
  const int me = rank(), p = size();
  for (bool grid : {false, true}) {
    const Data s = make_data(300, grid ? 5 : 12, 8, 51 + grid, grid);
    const auto r = shard(s.x.rows(), me, p);
    const MatrixD mine = rows_of(s.x, r);
    const std::vector<int> my_y = rows_of(s.y, r);
    for (const auto& blocks : block_settings()) {
      for (nc::Similarity sim : kSims) {
        INFO("grid " << grid << ", similarity " << nc::to_string(sim) << ", block queries " << blocks.queries);
        nc::RetrievalOptions o;
        o.similarity = sim;
        o.ks = {1, 2, 4, 8, 32};
        o.per_class = true;
        const nc::RetrievalReport one = nc::evaluate_retrieval(s.x, s.y, o);
        const nc::RetrievalReport dist = nc::mpi::evaluate_retrieval(mine, my_y, MPI_COMM_WORLD, o, blocks);
        CHECK(one.num_lone_queries == 1);
        CHECK(one.recall_at_k[0] > 0.2);
        CHECK(one.recall_at_k[0] < 0.95);
        check_same_report(dist, one);
      }
    }
  }
  // Blocks of one query (every query's positives exceed the budget).
  {
    const Data t = make_data(40, 3, 4, 54);
    const auto r = shard(t.x.rows(), me, p);
    nc::mpi::BlockOptions one_by_one;
    one_by_one.entries = 1;
    nc::RetrievalOptions o;
    o.ks = {1, 3};
    check_same_report(nc::mpi::evaluate_retrieval(rows_of(t.x, r), rows_of(t.y, r), MPI_COMM_WORLD, o, one_by_one),
                      nc::evaluate_retrieval(t.x, t.y, o));
    const nc::KnnOptions k = loo();
    check_same_knn(nc::mpi::knn(rows_of(t.x, r), rows_of(t.x, r), 3, MPI_COMM_WORLD, k, one_by_one),
                   nc::knn(t.x, t.x, 3, k), r);
  }
  // Float input, a K beyond every class size (R < K), ranks with different thread counts.
  const Data s = make_data(200, 10, 6, 53);
  const nc::MatrixF xf = s.x.cast<float>();
  const auto r = shard(s.x.rows(), me, p);
  nc::RetrievalOptions o;
  o.ks = {1, 5, 150};
  const nc::RetrievalReport one = nc::evaluate_retrieval(xf, s.y, o);
  o.threads = 1 + me % 2;
  check_same_report(nc::mpi::evaluate_retrieval(rows_of(xf, r), rows_of(s.y, r), MPI_COMM_WORLD, o), one);

  // The report is bitwise the same on every rank.
  double v[2] = {one.map_at_r, one.mrr};
  MPI_Bcast(v, 2, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  CHECK(v[0] == one.map_at_r);
  CHECK(v[1] == one.mrr);
}

TEST_CASE("sharded query-vs-gallery evaluate_retrieval equals the single-process evaluator", "[mpi][retrieval]") {
  const int me = rank(), p = size();
  const Data g = make_data(260, 6, 9, 61, true);
  Data q = make_data(110, 6, 9, 62, true);
  // Query classes absent from the gallery (lone queries), on the middle rows.
  for (Index i = 50; i < 54; ++i) q.y[i] = 9;
  const auto gr = shard(g.x.rows(), me, p), qr = shard_rev(q.x.rows(), me, p);
  for (const auto& blocks : block_settings()) {
    for (nc::Similarity sim : kSims) {
      INFO("similarity " << nc::to_string(sim) << ", block queries " << blocks.queries);
      nc::RetrievalOptions o;
      o.similarity = sim;
      o.ks = {1, 3, 10, 100};
      o.per_class = true;
      const nc::RetrievalReport one = nc::evaluate_retrieval(q.x, q.y, g.x, g.y, o);
      CHECK(one.num_lone_queries == 4);
      const nc::RetrievalReport dist = nc::mpi::evaluate_retrieval(
          rows_of(q.x, qr), rows_of(q.y, qr), rows_of(g.x, gr), rows_of(g.y, gr), MPI_COMM_WORLD, o, blocks);
      check_same_report(dist, one);
    }
  }
  // Every query on one rank, the gallery on the others (with 3+ ranks), int64 labels.
  const int holder = p - 1;
  const std::pair<Index, Index> all_q = me == holder ? std::pair<Index, Index>{0, q.x.rows()}
                                                     : std::pair<Index, Index>{0, 0};
  const std::pair<Index, Index> some_g = p >= 3 ? (me == holder ? std::pair<Index, Index>{0, 0}
                                                                : shard(g.x.rows(), me, p - 1))
                                                : gr;
  std::vector<int64_t> qy(q.y.begin(), q.y.end()), gy(g.y.begin(), g.y.end());
  std::vector<int64_t> my_qy(qy.begin() + all_q.first, qy.begin() + all_q.second);
  std::vector<int64_t> my_gy(gy.begin() + some_g.first, gy.begin() + some_g.second);
  nc::RetrievalOptions o;
  o.ks = {1, 2, 4};
  check_same_report(nc::mpi::evaluate_retrieval(rows_of(q.x, all_q), my_qy, rows_of(g.x, some_g), my_gy,
                                                MPI_COMM_WORLD, o),
                    nc::evaluate_retrieval(q.x, qy, g.x, gy, o));
}

TEST_CASE("sharded retrieval on Omniglot pixels equals the single-process results", "[mpi][retrieval][real]") {
  const int me = rank(), p = size();
  const RealData data = load_omniglot();
  // Every fourth image (5 per character, 242 characters), in a seeded random order so that
  // every character is spread over the ranks.
  std::vector<Index> pick;
  for (Index i = 0; i < data.x.rows(); i += 4) pick.push_back(i);
  std::mt19937_64 rng(7);
  for (std::size_t i = pick.size() - 1; i > 0; --i) std::swap(pick[i], pick[rng() % (i + 1)]);
  const Index n = Index(pick.size());
  nc::MatrixF x(n, data.x.cols());
  std::vector<int> y(n);
  for (Index i = 0; i < n; ++i) {
    x.row(i) = data.x.row(pick[i]).cast<float>();
    y[i] = data.labels[pick[i]];
  }
  const auto r = shard(n, me, p);
  const nc::MatrixF mine = rows_of(x, r);
  const std::vector<int> my_y = rows_of(y, r);

  nc::RetrievalOptions o;
  o.ks = {1, 2, 4, 8};
  o.per_class = true;
  const nc::RetrievalReport one = nc::evaluate_retrieval(x, y, o);
  CHECK(one.num_queries == n);
  check_same_report(nc::mpi::evaluate_retrieval(mine, my_y, MPI_COMM_WORLD, o), one);

  const nc::KnnOptions k = loo();
  check_same_knn(nc::mpi::knn(mine, mine, 5, MPI_COMM_WORLD, k), nc::knn(x, x, 5, k), r);
}

TEST_CASE("sharded retrieval: bad input on one rank is an error on every rank, no hang", "[mpi][errors]") {
  const int me = rank(), p = size(), last = p - 1;
  const Data s = make_data(60, 4, 5, 71);
  const auto r = shard(s.x.rows(), me, p);
  MatrixD mine = rows_of(s.x, r);
  std::vector<int> my_y = rows_of(s.y, r);
  const std::string last_rank = "rank " + std::to_string(last);

  // NaN on one rank (rank 0 holds rows under shard(); put it on rank 0's row 2).
  MatrixD bad = mine;
  if (me == 0) bad(2, 1) = NAN;
  CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(bad, my_y, MPI_COMM_WORLD),
                    Catch::Contains("rank 0") && Catch::Contains("row 2"));
  CHECK_THROWS_WITH(nc::mpi::knn(bad, mine, 3, MPI_COMM_WORLD), Catch::Contains("rank 0") && Catch::Contains("row 2"));
  CHECK_THROWS_WITH(nc::mpi::knn(mine, bad, 3, MPI_COMM_WORLD), Catch::Contains("gallery"));

  if (p > 1) {
    // Dimension differing between ranks (the last rank's empty matrix has another width too).
    const MatrixD wide = MatrixD::Ones(me == last ? 2 : 3, me == last ? 5 : 4);
    const std::vector<int> wy(std::size_t(wide.rows()), 0);
    CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(wide, wy, MPI_COMM_WORLD), Catch::Contains("dimension"));
    CHECK_THROWS_WITH(nc::mpi::knn(wide, wide, 1, MPI_COMM_WORLD), Catch::Contains("dimension"));
    CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(wide, wy, MPI_COMM_WORLD), Catch::Contains("by rank"));
  }

  // k and K larger than the gallery of all ranks together (k larger than one shard is fine).
  CHECK_THROWS_WITH(nc::mpi::knn(mine, mine, 60, MPI_COMM_WORLD, loo()),
                    Catch::Contains("larger than the gallery"));
  CHECK_NOTHROW(nc::mpi::knn(mine, mine, 59, MPI_COMM_WORLD, loo()));
  nc::RetrievalOptions big;
  big.ks = {1, 60};
  CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(mine, my_y, MPI_COMM_WORLD, big),
                    Catch::Contains("larger than the gallery"));

  // Labels of the wrong length on the last rank.
  std::vector<int> short_y = my_y;
  if (me == last) short_y.push_back(0);
  CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(mine, short_y, MPI_COMM_WORLD),
                    Catch::Contains(last_rank) && Catch::Contains("entries, expected"));
  CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(mine, my_y, mine, short_y, MPI_COMM_WORLD),
                    Catch::Contains(last_rank) && Catch::Contains("gallery_labels"));
  std::vector<int> negative = my_y;
  if (me == 0) negative[0] = -1;
  CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(mine, negative, MPI_COMM_WORLD), Catch::Contains("negative"));

  if (p > 1) {  // options differing between ranks
    nc::RetrievalOptions ks;
    ks.ks = me == last ? std::vector<int>{1, 3} : std::vector<int>{1, 2};
    CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(mine, my_y, MPI_COMM_WORLD, ks), Catch::Contains("ranks disagree"));
    ks.ks = me == last ? std::vector<int>{1} : std::vector<int>{1, 2};
    CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(mine, my_y, MPI_COMM_WORLD, ks), Catch::Contains("ranks disagree"));
    nc::KnnOptions sim;
    sim.similarity = me == last ? nc::Similarity::inner_product : nc::Similarity::cosine;
    CHECK_THROWS_WITH(nc::mpi::knn(mine, mine, 2, MPI_COMM_WORLD, sim), Catch::Contains("ranks disagree"));
    CHECK_THROWS_WITH(nc::mpi::knn(mine, mine, me == 0 ? 2 : 3, MPI_COMM_WORLD), Catch::Contains("ranks disagree"));
  }
  nc::mpi::BlockOptions zero;
  zero.queries = me == last ? 0 : 4;
  CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(mine, my_y, MPI_COMM_WORLD, {}, zero), Catch::Contains(last_rank));

  // exclude_self with different totals; no rows anywhere.
  const MatrixD fewer = mine.topRows(mine.rows() > 0 ? mine.rows() - 1 : 0);
  CHECK_THROWS_WITH(nc::mpi::knn(fewer, mine, 1, MPI_COMM_WORLD, loo()),
                    Catch::Contains("exclude_self"));
  const MatrixD none(0, 4);
  CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(none, std::vector<int>{}, MPI_COMM_WORLD), Catch::Contains("empty"));
  CHECK_THROWS_WITH(nc::mpi::knn(mine, none, 1, MPI_COMM_WORLD), Catch::Contains("empty"));

  // A failure in the middle of the work (here: a progress callback that throws on the last
  // rank) is an error on every rank too.
  nc::RetrievalOptions stop;
  stop.progress = [&](double f) {
    if (me == last && f >= 0) throw std::runtime_error("stopped by the callback");
  };
  CHECK_THROWS_WITH(nc::mpi::evaluate_retrieval(mine, my_y, MPI_COMM_WORLD, stop),
                    Catch::Contains(last_rank) && Catch::Contains("stopped by the callback"));
  nc::KnnOptions kstop;
  kstop.progress = stop.progress;
  CHECK_THROWS_WITH(nc::mpi::knn(mine, mine, 2, MPI_COMM_WORLD, kstop),
                    Catch::Contains(last_rank) && Catch::Contains("stopped by the callback"));

  // The communicator is still in step: a valid call afterwards gives the right answer.
  nc::RetrievalOptions o;
  o.ks = {1, 4};
  check_same_report(nc::mpi::evaluate_retrieval(mine, my_y, MPI_COMM_WORLD, o), nc::evaluate_retrieval(s.x, s.y, o));
}

}  // namespace test_mpi_retrieval
