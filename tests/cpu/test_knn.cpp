#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <nc/knn.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_knn {

using namespace nct;
using nc::Similarity;

namespace {

// Float64 brute force: the full score matrix, each query's gallery order by a stable sort
// of ascending indices on score descending (so ties go to the lower index).
struct Reference {
  MatrixD scores;                         // [Q, G]
  std::vector<std::vector<Index>> order;  // per query, self removed when asked
};

MatrixD normalized(const MatrixD& x) {
  MatrixD y = x;
  for (Index i = 0; i < y.rows(); ++i) {
    const double n = y.row(i).norm();
    if (n > 0) y.row(i) /= n;
  }
  return y;
}

Reference reference(const MatrixD& q, const MatrixD& g, Similarity sim, bool exclude_self) {
  Reference r;
  if (sim == Similarity::cosine) {
    r.scores = normalized(q) * normalized(g).transpose();
  } else if (sim == Similarity::inner_product) {
    r.scores = q * g.transpose();
  } else {
    r.scores.resize(q.rows(), g.rows());
    for (Index i = 0; i < q.rows(); ++i)
      for (Index j = 0; j < g.rows(); ++j) r.scores(i, j) = -(q.row(i) - g.row(j)).squaredNorm();
  }
  r.order.resize(q.rows());
  for (Index i = 0; i < q.rows(); ++i) {
    std::vector<Index>& o = r.order[i];
    for (Index j = 0; j < g.rows(); ++j)
      if (!(exclude_self && j == i)) o.push_back(j);
    std::stable_sort(o.begin(), o.end(), [&](Index a, Index b) { return r.scores(i, a) > r.scores(i, b); });
  }
  return r;
}

// Checks a kNN result against the reference: scores match to `tol` and are sorted (ties by
// index); `strict`: the neighbour at each rank is the reference's. Otherwise, where float
// rounding can reorder (or break a tie of distinct rows that is exact in double), any item
// whose reference score is within `tol` of the reference's item is accepted. Returns the
// number of such accepted swaps.
int check_against(const nc::KnnResult& res, const Reference& ref, Index k, double tol,
                  bool exclude_self, bool strict) {
  const Index nq = static_cast<Index>(ref.order.size());
  REQUIRE(res.indices.rows() == nq);
  REQUIRE(res.indices.cols() == k);
  REQUIRE(res.scores.rows() == nq);
  REQUIRE(res.scores.cols() == k);
  int swaps = 0;
  for (Index i = 0; i < nq; ++i) {
    std::vector<int64_t> seen;
    for (Index r = 0; r < k; ++r) {
      const int64_t idx = res.indices(i, r);
      REQUIRE(idx >= 0);
      REQUIRE(idx < ref.scores.cols());
      if (exclude_self) REQUIRE(idx != i);
      seen.push_back(idx);
      const double want = ref.scores(i, ref.order[i][r]);
      INFO("query " << i << " rank " << r << " got " << idx << " want " << ref.order[i][r]);
      REQUIRE(std::abs(res.scores(i, r) - ref.scores(i, idx)) <= tol);
      REQUIRE(std::abs(ref.scores(i, idx) - want) <= tol);
      if (strict) REQUIRE(idx == ref.order[i][r]);
      if (idx != ref.order[i][r]) ++swaps;
      if (r > 0) {
        const bool ordered = res.scores(i, r - 1) > res.scores(i, r) ||
                             (res.scores(i, r - 1) == res.scores(i, r) && res.indices(i, r - 1) < idx);
        REQUIRE(ordered);
      }
    }
    std::sort(seen.begin(), seen.end());
    REQUIRE(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
  }
  return swaps;
}

// Small integers: every product is exact in float and double, and scores tie massively.
MatrixD integer_data(Index n, Index d, int range, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> u(-range, range);
  MatrixD x(n, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = u(rng);
  return x;
}

// Gaussian rows with exact duplicates planted: rows 1..5 copy row 0, every 7th row copies
// the row before it, and the last row copies row 10.
MatrixD with_duplicates(Index n, Index d, uint64_t seed) {
  std::vector<int> y;
  MatrixD x = mixture(n, d, 5, y, seed);
  for (Index i = 1; i <= 5; ++i) x.row(i) = x.row(0);
  for (Index i = 7; i < n; i += 7) x.row(i) = x.row(i - 1);
  x.row(n - 1) = x.row(10);
  return x;
}

bool identical(const nc::KnnResult& a, const nc::KnnResult& b) {
  return a.indices == b.indices && a.scores == b.scores;
}

}  // namespace

TEST_CASE("knn matches a float64 brute force on integer data with exact ties", "[knn]") {
  const MatrixD x = integer_data(300, 8, 2, 11);
  const MatrixD q = integer_data(50, 8, 2, 12);
  for (Similarity sim : {Similarity::inner_product, Similarity::neg_squared_l2}) {
    INFO("similarity " << nc::to_string(sim));
    for (Index k : {Index(1), Index(7), Index(40), Index(299)}) {
      const auto loo = nc::knn(x, x, k, {sim, true});
      check_against(loo, reference(x, x, sim, true), k, 0.0, true, true);
    }
    const auto qg = nc::knn(q, x, 25, {sim});
    check_against(qg, reference(q, x, sim, false), 25, 0.0, false, true);
  }
  // Cosine of integer rows: mathematically tied scores may round apart, in float and in
  // double alike; accept either order inside such near-tie sets.
  const auto cos = nc::knn(x, x, 20, {Similarity::cosine, true});
  check_against(cos, reference(x, x, Similarity::cosine, true), 20, 1e-6, true, false);
}

TEST_CASE("knn: planted duplicates are ranked by index and never removed as 'self'", "[knn]") {
  const MatrixD x = with_duplicates(400, 24, 21);
  for (Similarity sim : {Similarity::cosine, Similarity::inner_product, Similarity::neg_squared_l2}) {
    INFO("similarity " << nc::to_string(sim));
    const double tol = sim == Similarity::cosine ? 1e-5 : 1e-4 * (1 + x.rowwise().squaredNorm().maxCoeff());
    const auto r = nc::knn(x, x, 10, {sim, true});
    check_against(r, reference(x, x, sim, true), 10, tol, true, true);
    // Query 0 has five exact copies (rows 1..5): they come first, by index, and query 1's
    // list holds row 0 and rows 2..5 but not row 1 (itself).
    for (Index j = 0; j < 5; ++j) CHECK(r.indices(0, j) == j + 1);
    CHECK(r.indices(1, 0) == 0);
    for (Index j = 1; j < 5; ++j) CHECK(r.indices(1, j) == j + 1);
    CHECK(r.scores(0, 0) == r.scores(0, 4));
    // The last row is a copy of row 10: each is the other's first neighbour (under inner
    // product a longer row may beat a copy).
    if (sim != Similarity::inner_product) {
      CHECK(r.indices(10, 0) == x.rows() - 1);
      CHECK(r.indices(x.rows() - 1, 0) == 10);
    }
  }
}

TEST_CASE("knn matches a float64 brute force on random data, both paths, all similarities", "[knn]") {
  std::vector<int> y;
  const MatrixD x = mixture(700, 40, 9, y, 31, 2.0, 1.0);
  const MatrixD q = mixture(130, 40, 9, y, 32, 2.0, 1.0);
  for (Similarity sim : {Similarity::cosine, Similarity::inner_product, Similarity::neg_squared_l2}) {
    INFO("similarity " << nc::to_string(sim));
    const double scale = sim == Similarity::cosine ? 1.0 : x.rowwise().squaredNorm().maxCoeff();
    const double tol = 2e-6 * scale;
    // Float rounding may swap neighbours whose scores differ by less than its error, at most
    // a handful here; everywhere else the lists are identical.
    int swaps = 0;
    for (Index k : {Index(1), Index(8), Index(100)}) {
      swaps += check_against(nc::knn(x, x, k, {sim, true}), reference(x, x, sim, true), k, tol, true, false);
      swaps += check_against(nc::knn(q, x, k, {sim}), reference(q, x, sim, false), k, tol, false, false);
    }
    CHECK(swaps <= 4);
    // Without exclude_self, a row finds itself first.
    const auto self = nc::knn(x, x, 3, {sim});
    check_against(self, reference(x, x, sim, false), 3, tol, false, true);
  }
}

TEST_CASE("knn on real data: Omniglot pixels and an MNIST subset", "[knn][data]") {
  {
    const RealData om = load_omniglot();
    const MatrixF xf = om.x.cast<float>();
    const MatrixD xd = xf.cast<double>();
    const Index k = 10;
    const auto r = nc::knn(xf, xf, k, {Similarity::cosine, true});
    const int swaps = check_against(r, reference(xd, xd, Similarity::cosine, true), k, 1e-5, true, false);
    INFO("Omniglot near-tie swaps: " << swaps);
    CHECK(swaps <= 5);
  }
  {
    const RealData mn = load_mnist(2000);
    const MatrixD q = mn.x.topRows(500), g = mn.x.bottomRows(1500);
    const Index k = 16;
    for (Similarity sim : {Similarity::cosine, Similarity::neg_squared_l2}) {
      const double tol = sim == Similarity::cosine ? 1e-5 : 1e-5 * g.rowwise().squaredNorm().maxCoeff();
      const auto r = nc::knn(q, g, k, {sim});
      const int swaps = check_against(r, reference(q, g, sim, false), k, tol, false, false);
      INFO("MNIST near-tie swaps: " << swaps);
      CHECK(swaps <= 5);
    }
  }
}

TEST_CASE("knn: identical results for any thread count, tile size and path", "[knn]") {
  const MatrixF x = with_duplicates(1000, 48, 41).cast<float>();
  const MatrixF copy = x;  // same values, other memory: the non-symmetric path
  for (Similarity sim : {Similarity::cosine, Similarity::neg_squared_l2}) {
    for (Index k : {Index(1), Index(9), Index(120)}) {
      nc::KnnOptions o;
      o.similarity = sim;
      o.exclude_self = true;
      o.threads = 1;
      const auto base = nc::knn(x, x, k, o);
      o.threads = 2;
      CHECK(identical(base, nc::knn(x, x, k, o)));
      for (Index tile : {Index(1), Index(48), Index(100), Index(333), Index(5000)}) {
        o.query_tile = tile;
        o.gallery_tile = 0;
        CHECK(identical(base, nc::knn(x, x, k, o)));
        CHECK(identical(base, nc::knn(x, copy, k, o)));
        o.gallery_tile = tile * 2 + 1;
        CHECK(identical(base, nc::knn(x, copy, k, o)));
      }
      // A query block against the whole gallery gives the same rows.
      const auto part = nc::knn(copy.middleRows(100, 300), x, k, {sim});
      const auto all = nc::knn(copy, x, k, {sim});
      CHECK(part.indices == all.indices.middleRows(100, 300));
      CHECK(part.scores == all.scores.middleRows(100, 300));
    }
  }
}

TEST_CASE("knn: packing tile by tile (small pack budget) gives identical results", "[knn]") {
  const MatrixD xd = with_duplicates(700, 40, 43);
  const MatrixF x = xd.cast<float>();
  const MatrixF q = x.topRows(260);  // other memory: the non-symmetric path
  const std::size_t side = std::size_t(nc::detail::knn::round_up(700, nc::detail::knn::kRowAlign)) * 40 * 4;
  for (Similarity sim : {Similarity::cosine, Similarity::inner_product, Similarity::neg_squared_l2}) {
    nc::KnnOptions o;
    o.similarity = sim;
    o.exclude_self = true;
    const auto self = nc::knn(x, x, 7, o);
    const auto self_d = nc::knn(xd, xd, 7, o);
    o.exclude_self = false;
    const auto cross = nc::knn(q, x, 7, o);
    // 1 byte: every side tile by tile; `side`: only the smaller side (the queries) whole.
    for (std::size_t budget : {std::size_t(1), side}) {
      for (Index tile : {Index(0), Index(48), Index(200)}) {
        for (int threads : {1, 2}) {
          o.pack_budget_bytes = budget;
          o.query_tile = tile;
          o.gallery_tile = tile == 0 ? 0 : tile + 96;
          o.threads = threads;
          o.exclude_self = true;
          CHECK(identical(self, nc::knn(x, x, 7, o)));
          CHECK(identical(self_d, nc::knn(xd, xd, 7, o)));
          o.exclude_self = false;
          CHECK(identical(cross, nc::knn(q, x, 7, o)));
        }
      }
    }
  }
}

TEST_CASE("knn: double input, expressions, progress", "[knn]") {
  std::vector<int> y;
  const MatrixD x = mixture(300, 16, 4, y, 51);
  const auto a = nc::knn(x, x, 5, {Similarity::inner_product, true});
  const auto b = nc::knn(x.cast<float>(), x.cast<float>(), 5, {Similarity::inner_product, true});
  CHECK(identical(a, b));
  // Progress is reported by the calling thread after each of its tasks, and 1 at the end.
  // With one thread every task reports; with more, the calling thread may get few tasks on a
  // loaded machine, so only order and the final value are certain.
  for (int threads : {1, 2}) {
    std::vector<double> seen;
    nc::KnnOptions o;
    o.query_tile = 48;
    o.threads = threads;
    o.progress = [&](double f) { seen.push_back(f); };
    nc::knn(x, x, 5, o);
    REQUIRE(seen.size() >= (threads == 1 ? 2u : 1u));
    CHECK(seen.back() == 1.0);
    CHECK(std::is_sorted(seen.begin(), seen.end()));
    CHECK(seen.front() >= 0.0);
  }
}

TEST_CASE("knn: bad input throws nc::error naming the problem", "[knn][errors]") {
  std::vector<int> y;
  MatrixF x = mixture(50, 6, 3, y, 61).cast<float>();
  const MatrixF q = x.topRows(10);
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const nc::error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  using Catch::Matchers::Contains;
  CHECK_THAT(message([&] { nc::knn(q, x, 0); }), Contains("k must be positive"));
  CHECK_THAT(message([&] { nc::knn(q, x, 51); }), Contains("k = 51"));
  CHECK_THAT(message([&] { nc::knn(x, x, 50, {Similarity::cosine, true}); }), Contains("k = 50"));
  CHECK_NOTHROW(nc::knn(x, x, 49, {Similarity::cosine, true}));
  CHECK_THAT(message([&] { nc::knn(q, x, 3, {Similarity::cosine, true}); }), Contains("exclude_self"));
  CHECK_THAT(message([&] { nc::knn(MatrixF(q.leftCols(5)), x, 3); }), Contains("dimension mismatch"));
  CHECK_THAT(message([&] { nc::knn(MatrixF(0, 6), x, 3); }), Contains("queries is empty"));
  MatrixF bad = x;
  bad(7, 2) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THAT(message([&] { nc::knn(q, bad, 3); }), Contains("gallery has a non-finite value") && Contains("row 7"));
  bad(7, 2) = std::numeric_limits<float>::infinity();
  CHECK_THAT(message([&] { nc::knn(bad, x, 3); }), Contains("queries has a non-finite value") && Contains("row 7"));
  nc::KnnOptions o;
  o.query_tile = -1;
  CHECK_THAT(message([&] { nc::knn(q, x, 3, o); }), Contains("query_tile"));
  o = {};
  o.threads = -2;
  CHECK_THAT(message([&] { nc::knn(q, x, 3, o); }), Contains("threads"));
}

}  // namespace test_knn
