#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nc/knn.hpp>
#include <nc/metrics/retrieval.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_retrieval {

using namespace nct;
using nc::Similarity;

namespace {

// Float64 reference written from the definitions: the full score matrix, each query's
// gallery order by a stable sort on score descending (ties: lower index first), the query's
// own row removed by index, metrics read off the ordered relevance list.
struct RefReport {
  std::vector<double> recall, precision;
  double map = 0, rp = 0, mrr = 0;
  int64_t n = 0, lone = 0;
  std::map<int64_t, std::vector<double>> cls;  // per class: recall..., precision..., map, rp, mrr
  std::map<int64_t, int64_t> cls_n, cls_amb;
  // Queries whose ranking has two items of different relevance closer than the float error
  // of the library's scores, where it matters: the library may order them either way.
  int64_t ambiguous = 0;
};

MatrixD scores(const MatrixD& q, const MatrixD& g, Similarity sim) {
  auto unit = [](MatrixD x) {
    for (Index i = 0; i < x.rows(); ++i)
      if (x.row(i).norm() > 0) x.row(i) /= x.row(i).norm();
    return x;
  };
  if (sim == Similarity::cosine) return unit(q) * unit(g).transpose();
  if (sim == Similarity::inner_product) return q * g.transpose();
  MatrixD s(q.rows(), g.rows());
  for (Index i = 0; i < q.rows(); ++i)
    for (Index j = 0; j < g.rows(); ++j) s(i, j) = -(q.row(i) - g.row(j)).squaredNorm();
  return s;
}

template <class LQ, class LG>
RefReport reference(const MatrixD& s, const LQ& ql, const LG& gl, bool loo,
                    const std::vector<int>& ks, double tol) {
  const std::size_t nk = ks.size();
  const int kmax = *std::max_element(ks.begin(), ks.end());
  RefReport r;
  r.recall.assign(nk, 0);
  r.precision.assign(nk, 0);
  for (Index i = 0; i < s.rows(); ++i) {
    std::vector<Index> order;
    for (Index j = 0; j < s.cols(); ++j)
      if (!(loo && j == i)) order.push_back(j);
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return s(i, a) > s(i, b); });
    std::vector<int> rel(order.size());
    Index R = 0, first = -1;
    for (std::size_t p = 0; p < order.size(); ++p) {
      rel[p] = gl[order[p]] == ql[i];
      R += rel[p];
      if (rel[p] && first < 0) first = static_cast<Index>(p);
    }
    if (R == 0) {
      ++r.lone;
      continue;
    }
    std::vector<double> m;
    for (std::size_t k = 0; k < nk; ++k) m.push_back(first < ks[k] ? 1.0 : 0.0);
    for (std::size_t k = 0; k < nk; ++k) {
      int hits = 0;
      for (int p = 0; p < ks[k]; ++p) hits += rel[p];
      m.push_back(double(hits) / ks[k]);
    }
    double ap = 0;
    int hits = 0;
    for (Index p = 0; p < R; ++p) {
      hits += rel[p];
      if (rel[p]) ap += double(hits) / double(p + 1);
    }
    m.push_back(ap / R);
    m.push_back(double(hits) / R);
    m.push_back(1.0 / double(first + 1));
    const Index window = std::max<Index>({Index(kmax), R, first + 1});
    bool amb = false;
    for (Index p = 0; p + 1 < static_cast<Index>(order.size()) && p < window; ++p) {
      const double gap = s(i, order[p]) - s(i, order[p + 1]);
      if (rel[p] != rel[p + 1] && gap > 0 && gap <= tol) amb = true;
    }
    r.ambiguous += amb;
    const int64_t c = ql[i];
    r.cls_amb[c] += amb;
    ++r.n;
    ++r.cls_n[c];
    auto& acc = r.cls[c];
    acc.resize(m.size(), 0.0);
    for (std::size_t t = 0; t < m.size(); ++t) acc[t] += m[t];
    for (std::size_t k = 0; k < nk; ++k) {
      r.recall[k] += m[k];
      r.precision[k] += m[nk + k];
    }
    r.map += m[2 * nk];
    r.rp += m[2 * nk + 1];
    r.mrr += m[2 * nk + 2];
  }
  for (std::size_t k = 0; k < nk; ++k) {
    r.recall[k] /= r.n;
    r.precision[k] /= r.n;
  }
  r.map /= r.n;
  r.rp /= r.n;
  r.mrr /= r.n;
  for (auto& kv : r.cls)
    for (double& v : kv.second) v /= double(r.cls_n[kv.first]);
  return r;
}

// The report agrees with the reference: exactly (to summation rounding) when no query is
// ambiguous, else within the share of ambiguous queries.
void check_report(const nc::RetrievalReport& rep, const RefReport& ref) {
  const std::size_t nk = rep.ks.size();
  INFO("ambiguous queries: " << ref.ambiguous << " of " << ref.n);
  CHECK(rep.num_queries == ref.n);
  CHECK(rep.num_lone_queries == ref.lone);
  const double bound = double(ref.ambiguous) / double(ref.n) + 1e-12;
  for (std::size_t k = 0; k < nk; ++k) {
    INFO("K = " << rep.ks[k]);
    CHECK(std::abs(rep.recall_at_k[k] - ref.recall[k]) <= bound);
    CHECK(std::abs(rep.precision_at_k[k] - ref.precision[k]) <= bound);
  }
  CHECK(std::abs(rep.map_at_r - ref.map) <= bound);
  CHECK(std::abs(rep.r_precision - ref.rp) <= bound);
  CHECK(std::abs(rep.mrr - ref.mrr) <= bound);
  // Per class and the average of the per-class averages.
  std::vector<double> avg(2 * nk + 3, 0.0);
  double avg_bound = 0;
  for (const auto& kv : ref.cls) {
    for (std::size_t t = 0; t < avg.size(); ++t) avg[t] += kv.second[t] / double(ref.cls.size());
    avg_bound += double(ref.cls_amb.at(kv.first)) / double(ref.cls_n.at(kv.first)) / double(ref.cls.size());
  }
  avg_bound += 1e-12;
  CHECK(rep.num_classes_evaluated == static_cast<int64_t>(ref.cls.size()));
  for (std::size_t k = 0; k < nk; ++k) {
    CHECK(std::abs(rep.class_avg_recall_at_k[k] - avg[k]) <= avg_bound);
    CHECK(std::abs(rep.class_avg_precision_at_k[k] - avg[nk + k]) <= avg_bound);
  }
  CHECK(std::abs(rep.class_avg_map_at_r - avg[2 * nk]) <= avg_bound);
  CHECK(std::abs(rep.class_avg_r_precision - avg[2 * nk + 1]) <= avg_bound);
  CHECK(std::abs(rep.class_avg_mrr - avg[2 * nk + 2]) <= avg_bound);
  if (rep.class_num_queries.empty()) return;
  for (Index c = 0; c < static_cast<Index>(rep.class_num_queries.size()); ++c) {
    const auto it = ref.cls.find(c);
    if (it == ref.cls.end()) {
      CHECK(rep.class_num_queries[c] == 0);
      CHECK(std::isnan(rep.class_map_at_r[c]));
      continue;
    }
    INFO("class " << c);
    CHECK(rep.class_num_queries[c] == ref.cls_n.at(c));
    const double b = double(ref.cls_amb.at(c)) / double(ref.cls_n.at(c)) + 1e-12;
    for (std::size_t k = 0; k < nk; ++k) {
      CHECK(std::abs(rep.class_recall_at_k(c, k) - it->second[k]) <= b);
      CHECK(std::abs(rep.class_precision_at_k(c, k) - it->second[nk + k]) <= b);
    }
    CHECK(std::abs(rep.class_map_at_r[c] - it->second[2 * nk]) <= b);
    CHECK(std::abs(rep.class_r_precision[c] - it->second[2 * nk + 1]) <= b);
    CHECK(std::abs(rep.class_mrr[c] - it->second[2 * nk + 2]) <= b);
  }
}

bool same_value(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

bool identical(const nc::RetrievalReport& a, const nc::RetrievalReport& b) {
  auto vec = [](const auto& x, const auto& y) {
    if (x.size() != y.size()) return false;
    for (Index i = 0; i < static_cast<Index>(x.size()); ++i)
      if (!same_value(double(x.data()[i]), double(y.data()[i]))) return false;
    return true;
  };
  return a.ks == b.ks && vec(a.recall_at_k, b.recall_at_k) && vec(a.precision_at_k, b.precision_at_k) &&
         same_value(a.map_at_r, b.map_at_r) && same_value(a.r_precision, b.r_precision) &&
         same_value(a.mrr, b.mrr) && a.num_queries == b.num_queries &&
         a.num_lone_queries == b.num_lone_queries &&
         vec(a.class_avg_recall_at_k, b.class_avg_recall_at_k) &&
         same_value(a.class_avg_map_at_r, b.class_avg_map_at_r) &&
         a.class_num_queries == b.class_num_queries && vec(a.class_recall_at_k, b.class_recall_at_k) &&
         vec(a.class_precision_at_k, b.class_precision_at_k) && vec(a.class_map_at_r, b.class_map_at_r) &&
         vec(a.class_r_precision, b.class_r_precision) && vec(a.class_mrr, b.class_mrr);
}

MatrixD integer_data(Index n, Index d, int range, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> u(-range, range);
  MatrixD x(n, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = u(rng);
  return x;
}

// Class sizes 1 (lone), 2, 3, ... cycling, so R ranges from 0 to well above small K.
std::vector<int> staircase_labels(Index n) {
  std::vector<int> y;
  int c = 0;
  while (static_cast<Index>(y.size()) < n) {
    for (int i = 0; i <= c % 12 && static_cast<Index>(y.size()) < n; ++i) y.push_back(c);
    ++c;
  }
  std::shuffle(y.begin(), y.end(), std::mt19937_64(7));
  return y;
}

}  // namespace

TEST_CASE("evaluate_retrieval matches the float64 reference on integer data with exact ties", "[retrieval]") {
  const MatrixD x = integer_data(400, 6, 2, 3);
  const std::vector<int> y = staircase_labels(400);
  const std::vector<int> ks = {1, 2, 4, 8, 50};
  for (Similarity sim : {Similarity::inner_product, Similarity::neg_squared_l2}) {
    INFO("similarity " << nc::to_string(sim));
    nc::RetrievalOptions o;
    o.ks = ks;
    o.similarity = sim;
    o.per_class = true;
    const auto rep = nc::evaluate_retrieval(x, y, o);
    const RefReport ref = reference(scores(x, x, sim), y, y, true, ks, 0.0);
    REQUIRE(ref.ambiguous == 0);
    CHECK(rep.num_lone_queries > 0);
    check_report(rep, ref);
  }
}

TEST_CASE("evaluate_retrieval on Gaussian classes with duplicates; R above and below K", "[retrieval]") {
  std::vector<int> y;
  MatrixD x = mixture(900, 32, 12, y, 5, 2.5, 1.0);
  for (Index i = 10; i < 900; i += 11) x.row(i) = x.row(i - 3);  // exact duplicates
  y[899] = 40;                                                    // a lone query
  for (Similarity sim : {Similarity::cosine, Similarity::inner_product, Similarity::neg_squared_l2}) {
    INFO("similarity " << nc::to_string(sim));
    nc::RetrievalOptions o;
    o.ks = {1, 3, 10, 100};
    o.similarity = sim;
    o.per_class = true;
    const double scale = sim == Similarity::cosine ? 1.0 : x.rowwise().squaredNorm().maxCoeff();
    const auto rep = nc::evaluate_retrieval(x.cast<float>(), y, o);
    check_report(rep, reference(scores(x, x, sim), y, y, true, o.ks, 2e-6 * scale));
    CHECK(rep.num_lone_queries == 1);
  }
}

TEST_CASE("evaluate_retrieval query vs gallery, with classes missing from the gallery", "[retrieval]") {
  std::vector<int> yq, yg;
  const MatrixD q = mixture(250, 20, 8, yq, 8, 2.0, 1.0);
  const MatrixD g = mixture(600, 20, 7, yg, 9, 2.0, 1.0);  // class 7 only among queries
  std::vector<int64_t> yq64(yq.begin(), yq.end()), yg64(yg.begin(), yg.end());
  for (Similarity sim : {Similarity::cosine, Similarity::neg_squared_l2}) {
    nc::RetrievalOptions o;
    o.ks = {1, 5, 30};
    o.similarity = sim;
    o.per_class = true;
    const double scale = sim == Similarity::cosine ? 1.0 : g.rowwise().squaredNorm().maxCoeff();
    const auto rep = nc::evaluate_retrieval(q, yq64, g, yg64, o);
    check_report(rep, reference(scores(q, g, sim), yq64, yg64, false, o.ks, 2e-6 * scale));
    CHECK(rep.num_lone_queries == std::count(yq.begin(), yq.end(), 7));
  }
}

TEST_CASE("evaluate_retrieval on real data: Omniglot and an MNIST subset", "[retrieval][data]") {
  {
    const RealData om = load_omniglot();
    const MatrixF xf = om.x.cast<float>();
    const MatrixD xd = xf.cast<double>();
    nc::RetrievalOptions o;
    o.per_class = true;
    const auto rep = nc::evaluate_retrieval(xf, om.labels, o);
    const RefReport ref = reference(scores(xd, xd, Similarity::cosine), om.labels, om.labels, true, o.ks, 1e-6);
    check_report(rep, ref);
    CHECK(ref.ambiguous < ref.n / 100);  // a few near ties (gap <= 1e-6) between pixel images
    // Query vs gallery: the first 10 drawings of each character against the other 10.
    std::vector<Index> qi, gi;
    std::map<int, int> seen;
    for (Index i = 0; i < xf.rows(); ++i) (seen[om.labels[i]]++ < 10 ? qi : gi).push_back(i);
    MatrixF q(qi.size(), xf.cols()), g(gi.size(), xf.cols());
    std::vector<int> yq, yg;
    for (std::size_t i = 0; i < qi.size(); ++i) q.row(i) = xf.row(qi[i]), yq.push_back(om.labels[qi[i]]);
    for (std::size_t i = 0; i < gi.size(); ++i) g.row(i) = xf.row(gi[i]), yg.push_back(om.labels[gi[i]]);
    o.ks = {1, 10, 20, 30};
    const auto qg = nc::evaluate_retrieval(q, yq, g, yg, o);
    check_report(qg, reference(scores(q.cast<double>(), g.cast<double>(), Similarity::cosine), yq, yg,
                               false, o.ks, 1e-6));
  }
  {
    const RealData mn = load_mnist(2500);
    const MatrixF xf = mn.x.cast<float>();
    nc::RetrievalOptions o;
    o.ks = {1, 10, 100};
    o.per_class = true;
    const auto rep = nc::evaluate_retrieval(xf, mn.labels, o);  // R is about 250 > every K
    const MatrixD xd = xf.cast<double>();
    check_report(rep, reference(scores(xd, xd, Similarity::cosine), mn.labels, mn.labels, true, o.ks, 1e-6));
    CHECK(rep.recall_at_k[0] > 0.9);  // 1-NN on raw MNIST pixels is about 95% accurate
  }
}

TEST_CASE("evaluate_retrieval: identical for any threads and tiles; label types; agrees with knn", "[retrieval]") {
  std::vector<int> y;
  MatrixF x = mixture(1200, 24, 30, y, 13, 1.5, 1.0).cast<float>();
  for (Index i = 5; i < 1200; i += 17) x.row(i) = x.row(i - 1);
  nc::RetrievalOptions o;
  o.ks = {1, 2, 4, 8, 16};
  o.per_class = true;
  o.threads = 1;
  const auto base = nc::evaluate_retrieval(x, y, o);
  o.threads = 2;
  CHECK(identical(base, nc::evaluate_retrieval(x, y, o)));
  for (Index tile : {Index(1), Index(96), Index(250), Index(5000)}) {
    o.query_tile = tile;
    CHECK(identical(base, nc::evaluate_retrieval(x, y, o)));
    // Packed tile by tile instead of whole (a budget of one byte).
    o.pack_budget_bytes = 1;
    CHECK(identical(base, nc::evaluate_retrieval(x, y, o)));
    o.pack_budget_bytes = 0;
  }
  for (Similarity sim : {Similarity::inner_product, Similarity::neg_squared_l2}) {
    nc::RetrievalOptions a = o, b = o;
    a.similarity = b.similarity = sim;
    b.pack_budget_bytes = 1;
    b.query_tile = 96;
    CHECK(identical(nc::evaluate_retrieval(x, y, a), nc::evaluate_retrieval(x, y, b)));
    const MatrixF qx = x.topRows(500);
    const std::vector<int> qy(y.begin(), y.begin() + 500);
    CHECK(identical(nc::evaluate_retrieval(qx, qy, x, y, a), nc::evaluate_retrieval(qx, qy, x, y, b)));
  }
  const std::vector<int64_t> y64(y.begin(), y.end());
  const Eigen::VectorXi ye = Eigen::Map<const Eigen::VectorXi>(y.data(), y.size());
  CHECK(identical(base, nc::evaluate_retrieval(x, y64, o)));
  CHECK(identical(base, nc::evaluate_retrieval(x, ye, o)));

  // Recall@K from nc::knn's lists equals the evaluator's.
  const auto nn = nc::knn(x, x, 16, {Similarity::cosine, true});
  for (std::size_t k = 0; k < o.ks.size(); ++k) {
    double hits = 0;
    int64_t n = 0;
    for (Index i = 0; i < x.rows(); ++i) {
      if (std::count(y.begin(), y.end(), y[i]) < 2) continue;
      ++n;
      bool hit = false;
      for (int j = 0; j < o.ks[k]; ++j) hit |= y[nn.indices(i, j)] == y[i];
      hits += hit;
    }
    CHECK(hits / double(n) == base.recall_at_k[k]);
  }
}

TEST_CASE("evaluate_retrieval: bad input throws nc::error naming the problem", "[retrieval][errors]") {
  std::vector<int> y;
  MatrixF x = mixture(40, 5, 4, y, 17).cast<float>();
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const nc::error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  using Catch::Matchers::Contains;
  nc::RetrievalOptions o;
  o.ks = {1, 40};
  CHECK_THAT(message([&] { nc::evaluate_retrieval(x, y, o); }), Contains("K = 40"));
  o.ks = {1, 39};
  CHECK_NOTHROW(nc::evaluate_retrieval(x, y, o));
  o.ks = {0};
  CHECK_THAT(message([&] { nc::evaluate_retrieval(x, y, o); }), Contains("must be positive"));
  o.ks = {};
  CHECK_THAT(message([&] { nc::evaluate_retrieval(x, y, o); }), Contains("ks is empty"));
  o.ks = {1, 41};
  CHECK_THAT(message([&] { nc::evaluate_retrieval(x, y, x, y, o); }), Contains("K = 41"));
  std::vector<int> short_y(y.begin(), y.end() - 1);
  CHECK_THAT(message([&] { nc::evaluate_retrieval(x, short_y); }), Contains("labels has 39 entries, expected 40"));
  CHECK_THAT(message([&] { nc::evaluate_retrieval(x, y, x, short_y); }), Contains("gallery_labels has 39 entries"));
  CHECK_THAT(message([&] { nc::evaluate_retrieval(x, short_y, x, y); }), Contains("query_labels has 39 entries"));
  std::vector<int64_t> neg(y.begin(), y.end());
  neg[3] = -1;
  CHECK_THAT(message([&] { nc::evaluate_retrieval(x, neg); }), Contains("negative label -1 at row 3"));
  CHECK_THAT(message([&] { nc::evaluate_retrieval(MatrixF(x.leftCols(4)), y, x, y); }), Contains("dimension mismatch"));
  MatrixF bad = x;
  bad(11, 0) = -std::numeric_limits<float>::infinity();
  CHECK_THAT(message([&] { nc::evaluate_retrieval(bad, y); }), Contains("features has a non-finite value") && Contains("row 11"));
  CHECK_THAT(message([&] { nc::evaluate_retrieval(x, y, bad, y); }), Contains("gallery has a non-finite value") && Contains("row 11"));
}

TEST_CASE("evaluate_retrieval agrees with faiss IndexFlatIP and the AccuracyCalculator formulas", "[retrieval][faiss]") {
  const std::string python = "/usr/bin/python3";
  if (std::system((python + " -c 'import faiss, numpy' >/dev/null 2>&1").c_str()) != 0) {
    WARN("python3-faiss (Debian) is not installed: skipping the faiss cross-check");
    return;
  }
  // Well-separated float data: no near ties, so float rounding cannot reorder anything.
  std::vector<int> y;
  const MatrixF x = mixture(3000, 64, 25, y, 23, 3.0, 1.0).cast<float>();
  const std::string dir = NCML_TEST_TMP_DIR;
  const std::string fx = dir + "/faiss_x.f32", fy = dir + "/faiss_y.i64", fo = dir + "/faiss_out.txt";
  {
    std::ofstream f(fx, std::ios::binary);
    f.write(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float));
    std::ofstream g(fy, std::ios::binary);
    for (int v : y) {
      const int64_t w = v;
      g.write(reinterpret_cast<const char*>(&w), sizeof(w));
    }
  }
  const std::string script = std::string(NCML_DATA_DIR) + "/../tests/faiss_recall.py";
  const std::string cmd = python + " " + script + " " + fx + " " + fy + " 3000 64 1,2,4,8,32 " + fo;
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::map<std::string, double> faiss;
  std::ifstream in(fo);
  std::string name;
  double value;
  while (in >> name >> value) faiss[name] = value;
  nc::RetrievalOptions o;
  o.ks = {1, 2, 4, 8, 32};
  const auto rep = nc::evaluate_retrieval(x, y, o);
  for (std::size_t k = 0; k < o.ks.size(); ++k) {
    INFO("K = " << o.ks[k]);
    CHECK(rep.recall_at_k[k] == Approx(faiss.at("recall_at_" + std::to_string(o.ks[k]))).margin(1e-12));
  }
  CHECK(rep.precision_at_k[0] == Approx(faiss.at("precision_at_1")).margin(1e-12));
  CHECK(rep.r_precision == Approx(faiss.at("r_precision")).margin(1e-12));
  CHECK(rep.map_at_r == Approx(faiss.at("mean_average_precision_at_r")).margin(1e-12));
  CHECK(rep.recall_at_k[0] < 1.0);  // the data is not trivially separable
}

}  // namespace test_retrieval
