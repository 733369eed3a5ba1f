// GPU k-nearest-neighbour search and retrieval evaluation against the CPU evaluator and a
// float64 brute-force reference. Ties are made harmless by comparing scores and accepting
// any index of an equal score; on data whose products are exact in float (entries +-1, with
// norms that are powers of two) GPU and CPU scores are bitwise equal and results must be
// identical. Without a CUDA device the program exits with 77 (ctest: skipped). Tests tagged
// [small] are the ones compute-sanitizer runs.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include <nc/cuda/knn.cuh>
#include <nc/cuda/retrieval.cuh>
#include <nc/knn.hpp>
#include <nc/metrics/retrieval.hpp>

#include "support.hpp"

using namespace nct;
using nc::Similarity;
using nc::cuda::DeviceBuffer;
using nc::cuda::Precision;

namespace {

const bool kGpuPresent = [] {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("no CUDA device: the GPU tests are skipped\n");
    std::exit(77);
  }
  return true;
}();

MatrixF gaussian_rows(Index n, Index d, uint64_t seed, float offset = 0.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  MatrixF x(n, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = g(rng) + offset;
  return x;
}

/// Entries +-1 with d a power of 4: normalized rows are +-2^-k exactly, so every score is
/// exact in float whatever the summation order (many exact ties).
MatrixF sign_rows(Index n, Index d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution b(0.5);
  MatrixF x(n, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = b(rng) ? 1.0f : -1.0f;
  return x;
}

/// Rows as the CPU multiplies them (normalized in float64 and rounded for cosine), in double.
MatrixD operand(const MatrixF& x, Similarity sim) {
  MatrixD out = x.cast<double>();
  if (sim == Similarity::cosine)
    for (Index i = 0; i < x.rows(); ++i) {
      const double n = out.row(i).norm();
      if (n > 0) out.row(i) = (out.row(i) / n).cast<float>().cast<double>();
    }
  return out;
}

/// All scores [Q, G] in float64.
MatrixD true_scores(const MatrixF& q, const MatrixF& g, Similarity sim) {
  const MatrixD a = operand(q, sim), b = operand(g, sim);
  MatrixD s = a * b.transpose();
  if (sim == Similarity::neg_squared_l2)
    for (Index i = 0; i < s.rows(); ++i)
      for (Index j = 0; j < s.cols(); ++j) s(i, j) = -(a.row(i) - b.row(j)).squaredNorm();
  return s;
}

double tol_of(double s) { return 2e-5 * (1.0 + std::abs(s)); }

/// The GPU lists are a valid answer: the j-th score is the true j-th best within tolerance,
/// each index carries its score, order and tie-breaking hold, indices are distinct; and
/// wherever the true scores around position j are separated, the index equals the CPU's.
void check_knn(const nc::KnnResult& got, const nc::KnnResult& cpu, const MatrixD& s, bool exclude_self) {
  const Index Q = s.rows(), G = s.cols(), k = cpu.indices.cols();
  REQUIRE(got.indices.rows() == Q);
  REQUIRE(got.indices.cols() == k);
  Index exact = 0, checked = 0;
  for (Index i = 0; i < Q; ++i) {
    std::vector<double> row;
    for (Index j = 0; j < G; ++j)
      if (!(exclude_self && j == i)) row.push_back(s(i, j));
    std::sort(row.begin(), row.end(), std::greater<double>());
    std::vector<int64_t> seen;
    for (Index j = 0; j < k; ++j) {
      const int64_t g = got.indices(i, j);
      const float sc = got.scores(i, j);
      INFO("query " << i << " position " << j << " index " << g << " score " << sc);
      REQUIRE(g >= 0);
      REQUIRE(g < G);
      REQUIRE(!(exclude_self && g == i));
      seen.push_back(g);
      REQUIRE(std::abs(sc - row[j]) <= tol_of(row[j]));
      REQUIRE(std::abs(s(i, g) - sc) <= tol_of(sc));
      if (j > 0) {
        REQUIRE(got.scores(i, j - 1) >= sc);
        if (got.scores(i, j - 1) == sc) REQUIRE(got.indices(i, j - 1) < g);
      }
      const bool isolated = (j == 0 || row[j - 1] - row[j] > 2 * tol_of(row[j])) &&
                            (j + 1 >= static_cast<Index>(row.size()) || row[j] - row[j + 1] > 2 * tol_of(row[j]));
      if (isolated) {
        ++checked;
        if (g == cpu.indices(i, j)) ++exact;
      }
    }
    std::sort(seen.begin(), seen.end());
    REQUIRE(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
  }
  CHECK(exact == checked);
}

nc::KnnResult cpu_knn(const MatrixF& q, const MatrixF& g, bool same, Index k, Similarity sim, bool exclude_self) {
  nc::KnnOptions o;
  o.similarity = sim;
  o.exclude_self = exclude_self;
  return same ? nc::knn(q, q, k, o) : nc::knn(q, g, k, o);
}

nc::KnnResult gpu_knn(const MatrixF& q, const MatrixF& g, bool same, Index k, const nc::cuda::KnnOptions& o) {
  return same ? nc::cuda::knn(q, q, k, o) : nc::cuda::knn(q, g, k, o);
}

void check_report(const nc::RetrievalReport& got, const nc::RetrievalReport& ref, double tol) {
  REQUIRE(got.num_queries == ref.num_queries);
  REQUIRE(got.num_lone_queries == ref.num_lone_queries);
  REQUIRE(got.num_classes_evaluated == ref.num_classes_evaluated);
  for (std::size_t i = 0; i < ref.ks.size(); ++i) {
    INFO("K = " << ref.ks[i]);
    CHECK(std::abs(got.recall_at_k[i] - ref.recall_at_k[i]) <= tol);
    CHECK(std::abs(got.precision_at_k[i] - ref.precision_at_k[i]) <= tol);
    CHECK(std::abs(got.class_avg_recall_at_k[i] - ref.class_avg_recall_at_k[i]) <= tol);
  }
  CHECK(std::abs(got.map_at_r - ref.map_at_r) <= tol);
  CHECK(std::abs(got.r_precision - ref.r_precision) <= tol);
  CHECK(std::abs(got.mrr - ref.mrr) <= tol);
  CHECK(std::abs(got.class_avg_map_at_r - ref.class_avg_map_at_r) <= tol);
  CHECK(got.class_num_queries == ref.class_num_queries);
  CHECK(got.class_num_lone_queries == ref.class_num_lone_queries);
  if (ref.class_map_at_r.size()) {
    const Eigen::ArrayXd a = got.class_map_at_r, b = ref.class_map_at_r;
    CHECK(((a - b).abs() <= tol || (a.isNaN() && b.isNaN())).all());
  }
}

std::vector<int> random_labels(Index n, int classes, uint64_t seed, int lone = 0) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> pick(0, classes - 1);
  std::vector<int> y(static_cast<std::size_t>(n));
  for (auto& v : y) v = pick(rng);
  for (int i = 0; i < lone; ++i) y[i] = classes + i;  // classes with one member
  return y;
}

}  // namespace

TEST_CASE("knn matches the CPU: one set against itself", "[knn][small]") {
  const Index n = 1500, d = 64;
  const MatrixF x = gaussian_rows(n, d, 1, 0.3f);
  for (Similarity sim : {Similarity::cosine, Similarity::inner_product, Similarity::neg_squared_l2}) {
    const MatrixD s = true_scores(x, x, sim);
    for (bool excl : {true, false})
      for (Index k : {Index(1), Index(8), Index(100), n - 1}) {
        const nc::KnnResult cpu = cpu_knn(x, x, true, k, sim, excl);
        for (Index tile : {Index(0), Index(256)}) {
          nc::cuda::KnnOptions o;
          o.similarity = sim;
          o.exclude_self = excl;
          o.tile = tile;
          INFO("similarity " << nc::to_string(sim) << " exclude_self " << excl << " k " << k << " tile " << tile);
          check_knn(gpu_knn(x, x, true, k, o), cpu, s, excl);
        }
      }
  }
}

TEST_CASE("knn matches the CPU: queries against a gallery", "[knn][small]") {
  struct Case {
    Index q, g, d, k;
  };
  for (const Case& c : {Case{700, 2100, 3, 8}, Case{700, 2100, 3, 100}, Case{50, 400, 1, 1}, Case{1, 2, 5, 1},
                        Case{1, 2, 5, 2}, Case{300, 3000, 128, 1000}, Case{33, 257, 2048, 16}}) {
    const MatrixF q = gaussian_rows(c.q, c.d, c.q + 7), g = gaussian_rows(c.g, c.d, c.g + 9);
    for (Similarity sim : {Similarity::cosine, Similarity::neg_squared_l2}) {
      const MatrixD s = true_scores(q, g, sim);
      nc::cuda::KnnOptions o;
      o.similarity = sim;
      o.tile = 128;
      INFO("Q " << c.q << " G " << c.g << " d " << c.d << " k " << c.k << " " << nc::to_string(sim));
      check_knn(gpu_knn(q, g, false, c.k, o), cpu_knn(q, g, false, c.k, sim, false), s, false);
    }
  }
}

TEST_CASE("knn: query batches without the symmetric pass", "[knn][small]") {
  const Index n = 1200, d = 16, k = 20;
  const MatrixF x = gaussian_rows(n, d, 3);
  const MatrixD s = true_scores(x, x, Similarity::cosine);
  nc::cuda::KnnOptions o;
  o.exclude_self = true;
  o.tile = 96;
  o.max_state_bytes = 100 * (8 * (2 * k + 128) + 12);  // about 100 queries per batch
  check_knn(gpu_knn(x, x, true, k, o), cpu_knn(x, x, true, k, Similarity::cosine, true), s, true);
}

TEST_CASE("knn: exact ties and duplicates break by index as on the CPU", "[knn][small]") {
  MatrixF x = sign_rows(2000, 16, 5);
  x.middleRows(1000, 200) = x.topRows(200);  // planted duplicates
  for (Similarity sim : {Similarity::cosine, Similarity::inner_product, Similarity::neg_squared_l2})
    for (Index k : {Index(1), Index(30), Index(1999)}) {
      nc::cuda::KnnOptions o;
      o.similarity = sim;
      o.exclude_self = true;
      o.tile = 512;
      const nc::KnnResult got = gpu_knn(x, x, true, k, o);
      const nc::KnnResult cpu = cpu_knn(x, x, true, k, sim, true);
      INFO(nc::to_string(sim) << " k " << k);
      CHECK((got.indices.array() == cpu.indices.array()).all());
      CHECK((got.scores.array() == cpu.scores.array()).all());
    }
}

TEST_CASE("knn: k beyond one block's sort (global network)", "[knn]") {
  const Index q = 3, g = 20000, d = 8;
  const MatrixF qx = gaussian_rows(q, d, 11), gx = gaussian_rows(g, d, 12);
  const MatrixD s = true_scores(qx, gx, Similarity::cosine);
  for (Index k : {Index(10000), g}) {
    nc::cuda::KnnOptions o;
    check_knn(gpu_knn(qx, gx, false, k, o), cpu_knn(qx, gx, false, k, Similarity::cosine, false), s, false);
  }
}

TEST_CASE("knn: misaligned rows, ld > d, non-default stream, device API", "[knn][small]") {
  cudaStream_t st;
  NC_CUDA_TRY(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  {
    const Index nq = 300, ng = 900, d = 50, k = 12, ld = 53;
    const MatrixF q = gaussian_rows(nq, d, 21), g = gaussian_rows(ng, d, 22);
    DeviceBuffer<float> bq(static_cast<std::size_t>(nq) * ld + 1, st), bg(static_cast<std::size_t>(ng) * ld + 1, st);
    float* dq = bq.data() + 1;
    float* dg = bg.data() + 1;
    NC_CUDA_TRY(cudaMemcpy2DAsync(dq, ld * 4, q.data(), d * 4, d * 4, nq, cudaMemcpyHostToDevice, st));
    NC_CUDA_TRY(cudaMemcpy2DAsync(dg, ld * 4, g.data(), d * 4, d * 4, ng, cudaMemcpyHostToDevice, st));
    DeviceBuffer<int64_t> di(static_cast<std::size_t>(nq) * (k + 2), st);
    DeviceBuffer<float> ds(static_cast<std::size_t>(nq) * (k + 1), st);
    nc::cuda::KnnOptions o;
    o.similarity = Similarity::inner_product;
    nc::cuda::Workspace ws;
    nc::cuda::knn_async(dq, ld, nq, dg, ld, ng, d, k, di.data(), k + 2, ds.data(), k + 1, ws, o, st);
    DeviceBuffer<char> wbuf(ws.bytes, st);
    ws.data = wbuf.data();
    nc::cuda::knn_async(dq, ld, nq, dg, ld, ng, d, k, di.data(), k + 2, ds.data(), k + 1, ws, o, st);
    nc::cuda::check_inputs(ws, st);
    std::vector<int64_t> hi(di.size());
    std::vector<float> hs(ds.size());
    NC_CUDA_TRY(cudaMemcpyAsync(hi.data(), di.data(), hi.size() * 8, cudaMemcpyDeviceToHost, st));
    NC_CUDA_TRY(cudaMemcpyAsync(hs.data(), ds.data(), hs.size() * 4, cudaMemcpyDeviceToHost, st));
    NC_CUDA_TRY(cudaStreamSynchronize(st));
    nc::KnnResult got;
    got.indices.resize(nq, k);
    got.scores.resize(nq, k);
    for (Index i = 0; i < nq; ++i)
      for (Index j = 0; j < k; ++j) {
        got.indices(i, j) = hi[i * (k + 2) + j];
        got.scores(i, j) = hs[i * (k + 1) + j];
      }
    check_knn(got, cpu_knn(q, g, false, k, Similarity::inner_product, false),
              true_scores(q, g, Similarity::inner_product), false);
  }
  NC_CUDA_TRY(cudaStreamDestroy(st));
}

TEST_CASE("knn: low-precision modes and exact re-ranking", "[knn][small]") {
  const Index n = 3000, d = 64, k = 10;
  const MatrixF x = gaussian_rows(n, d, 31);
  const MatrixD s = true_scores(x, x, Similarity::cosine);
  nc::cuda::KnnOptions o;
  o.exclude_self = true;
  const nc::KnnResult exact = gpu_knn(x, x, true, k, o);
  for (Precision p : {Precision::tf32, Precision::bf16})
    for (bool rerank : {false, true}) {
      o.precision = p;
      o.rerank = rerank;
      const nc::KnnResult got = gpu_knn(x, x, true, k, o);
      Index hits = 0;
      for (Index i = 0; i < n; ++i)
        for (Index j = 0; j < k; ++j)
          for (Index m = 0; m < k; ++m) hits += got.indices(i, j) == exact.indices(i, m);
      const double agreement = double(hits) / double(n * k);
      INFO("precision " << int(p) << " rerank " << rerank << " agreement " << agreement);
      CHECK(agreement >= (rerank ? 0.999 : (p == Precision::tf32 ? 0.95 : 0.8)));
      if (rerank)
        for (Index i = 0; i < n; ++i)
          for (Index j = 0; j < k; ++j) CHECK(std::abs(s(i, got.indices(i, j)) - got.scores(i, j)) <= 1e-5);
    }
}

TEST_CASE("knn rejects invalid input", "[knn][errors][small]") {
  MatrixF q = gaussian_rows(40, 6, 1), g = gaussian_rows(50, 6, 2);
  CHECK_THROWS_WITH(nc::cuda::knn(q, g, 51), Catch::Contains("larger than the gallery"));
  g(17, 3) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(nc::cuda::knn(q, g, 5), Catch::Contains("gallery has a non-finite value inf at row 17, column 3"));
  q(4, 1) = std::nanf("");
  CHECK_THROWS_WITH(nc::cuda::knn(q, q, 5), Catch::Contains("queries has a non-finite value") && Catch::Contains("row 4"));
}

TEST_CASE("evaluate_retrieval equals the CPU on exact scores", "[retrieval][small]") {
  const Index n = 1500, d = 16;
  const MatrixF x = sign_rows(n, d, 7);
  const std::vector<int> y = random_labels(n, 40, 3, 5);
  for (Similarity sim : {Similarity::cosine, Similarity::inner_product, Similarity::neg_squared_l2})
    for (Index tile : {Index(0), Index(256)}) {
      nc::RetrievalOptions co;
      co.ks = {1, 2, 4, 8, 100};
      co.similarity = sim;
      co.per_class = true;
      nc::cuda::RetrievalOptions go;
      go.ks = co.ks;
      go.similarity = sim;
      go.per_class = true;
      go.tile = tile;
      INFO(nc::to_string(sim) << " tile " << tile);
      check_report(nc::cuda::evaluate_retrieval(x, y, go), nc::evaluate_retrieval(x, y, co), 1e-12);
      // Query vs gallery: the first 500 rows against the rest.
      const MatrixF q = x.topRows(500), g = x.bottomRows(n - 500);
      const std::vector<int> yq(y.begin(), y.begin() + 500), yg(y.begin() + 500, y.end());
      check_report(nc::cuda::evaluate_retrieval(q, yq, g, yg, go), nc::evaluate_retrieval(q, yq, g, yg, co), 1e-12);
    }
}

TEST_CASE("evaluate_retrieval matches the CPU on random data", "[retrieval][small]") {
  std::vector<int> y;
  const MatrixF x = mixture(3000, 32, 60, y, 5, 2.0, 1.0).cast<float>();
  nc::RetrievalOptions co;
  co.ks = {1, 10, 100, 1000};
  nc::cuda::RetrievalOptions go;
  go.ks = co.ks;
  go.tile = 512;
  check_report(nc::cuda::evaluate_retrieval(x, y, go), nc::evaluate_retrieval(x, y, co), 2e-3);
  for (Precision p : {Precision::tf32, Precision::bf16}) {
    go.precision = p;
    const nc::RetrievalReport r = nc::cuda::evaluate_retrieval(x, y, go);
    const nc::RetrievalReport ref = nc::evaluate_retrieval(x, y, co);
    INFO("precision " << int(p));
    CHECK(std::abs(r.recall_at_k[0] - ref.recall_at_k[0]) <= 0.02);
    CHECK(std::abs(r.map_at_r - ref.map_at_r) <= 0.02);
  }
}

TEST_CASE("evaluate_retrieval rejects invalid input", "[retrieval][errors][small]") {
  MatrixF x = gaussian_rows(100, 4, 1);
  std::vector<int> y = random_labels(100, 5, 2);
  y[9] = -1;
  CHECK_THROWS_WITH(nc::cuda::evaluate_retrieval(x, y), Catch::Contains("negative label -1 at row 9"));
  y[9] = 0;
  x(3, 2) = std::nanf("");
  CHECK_THROWS_WITH(nc::cuda::evaluate_retrieval(x, y), Catch::Contains("row 3, column 2"));
  nc::cuda::RetrievalOptions o;
  o.ks = {100};
  CHECK_THROWS_AS(nc::cuda::evaluate_retrieval(gaussian_rows(100, 4, 1), y, o), nc::error);
}

TEST_CASE("evaluate_retrieval on MNIST and Omniglot pixels", "[retrieval][real]") {
  for (const RealData& data : {load_mnist(5000), load_omniglot()}) {
    const MatrixF x = data.x.cast<float>();
    nc::RetrievalOptions co;
    co.ks = {1, 2, 4, 8};
    nc::cuda::RetrievalOptions go;
    go.ks = co.ks;
    check_report(nc::cuda::evaluate_retrieval(x, data.labels, go), nc::evaluate_retrieval(x, data.labels, co), 2e-3);
    const nc::KnnResult cpu = cpu_knn(x, x, true, 8, Similarity::cosine, true);
    nc::cuda::KnnOptions o;
    o.exclude_self = true;
    check_knn(gpu_knn(x, x, true, 8, o), cpu, true_scores(x, x, Similarity::cosine), true);
  }
}

TEST_CASE("knn at scale: a million gallery rows", "[knn][large]") {
  const Index q = 64, g = 1000000, d = 64, k = 100;
  const MatrixF qx = gaussian_rows(q, d, 1), gx = gaussian_rows(g, d, 2);
  const nc::KnnResult got = gpu_knn(qx, gx, false, k, {});
  const nc::KnnResult cpu = cpu_knn(qx, gx, false, k, Similarity::cosine, false);
  Index same = 0;
  for (Index i = 0; i < q; ++i)
    for (Index j = 0; j < k; ++j) {
      CHECK(std::abs(got.scores(i, j) - cpu.scores(i, j)) <= 1e-5);
      same += got.indices(i, j) == cpu.indices(i, j);
    }
  CHECK(double(same) / double(q * k) >= 0.99);
}

TEST_CASE("sanitizer smoke: every search kernel at small sizes", "[race][small]") {
  const Index n = 300, d = 20;
  const MatrixF x = gaussian_rows(n, d, 41);
  const MatrixD s = true_scores(x, x, Similarity::neg_squared_l2);
  for (Index k : {Index(5), Index(100)}) {  // compactions, and column overflows with rescans
    nc::cuda::KnnOptions o;
    o.similarity = Similarity::neg_squared_l2;
    o.exclude_self = true;
    o.tile = 64;
    check_knn(gpu_knn(x, x, true, k, o), cpu_knn(x, x, true, k, Similarity::neg_squared_l2, true), s, true);
  }
  const MatrixF q = x.topRows(50);
  nc::cuda::KnnOptions o;
  o.tile = 64;
  o.precision = Precision::bf16;
  o.rerank = true;
  check_knn(gpu_knn(q, x, false, 7, o), cpu_knn(q, x, false, 7, Similarity::cosine, false),
            true_scores(q, x, Similarity::cosine), false);
  const MatrixF g = gaussian_rows(9000, 2, 42), q1 = gaussian_rows(1, 2, 43);  // the global sort network
  check_knn(gpu_knn(q1, g, false, 8500, {}), cpu_knn(q1, g, false, 8500, Similarity::cosine, false),
            true_scores(q1, g, Similarity::cosine), false);
  const std::vector<int> y = random_labels(n, 12, 4, 3);
  nc::RetrievalOptions co;
  co.ks = {1, 5};
  nc::cuda::RetrievalOptions go;
  go.ks = co.ks;
  go.tile = 64;
  check_report(nc::cuda::evaluate_retrieval(x, y, go), nc::evaluate_retrieval(x, y, co), 2e-2);
  const std::vector<int> yq(y.begin(), y.begin() + 50);
  check_report(nc::cuda::evaluate_retrieval(q, yq, x, y, go), nc::evaluate_retrieval(q, yq, x, y, co), 2e-2);
}
