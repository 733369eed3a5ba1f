// Determinism of the whole CPU pipeline: statistics, directions, every head initializer, the
// NC metrics, kNN, retrieval metrics, perturbation and the losses give bitwise identical outputs
// across repeated runs, thread counts (1, 2, 3 and "all") and kNN/retrieval tile sizes, on real
// data (Omniglot pixels reduced to 64 dimensions by a fixed random projection).
#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <nc/nc.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_determinism {

namespace {

using nc::Index;
using nc::MatrixD;
using nc::MatrixF;

/// Every output of one pipeline run, flattened to bytes with a name per piece.
struct Outputs {
  std::vector<std::string> names;
  std::vector<std::vector<unsigned char>> bytes;

  template <class T>
  void add(const std::string& name, const T* p, size_t n) {
    names.push_back(name);
    const auto* b = reinterpret_cast<const unsigned char*>(p);
    bytes.emplace_back(b, b + n * sizeof(T));
  }
  template <class M>
  void add_matrix(const std::string& name, const M& m) {
    using S = typename M::Scalar;
    Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> copy = m;  // any layout
    add(name, copy.data(), static_cast<size_t>(copy.size()));
  }
  void add_scalar(const std::string& name, double v) { add(name, &v, 1); }
  void add_vector(const std::string& name, const std::vector<double>& v) { add(name, v.data(), v.size()); }
};

struct Data {
  MatrixF x;                  // [N, 64]
  std::vector<int> labels;    // character labels, compacted to [0, C)
  Index classes = 0;
};

Data load() {
  const nct::RealData og = nct::load_omniglot();
  // Keep the first 60 characters (about 1200 images) so that the test stays fast.
  std::vector<Index> rows;
  for (size_t i = 0; i < og.labels.size(); ++i)
    if (og.labels[i] < 60) rows.push_back(static_cast<Index>(i));
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal;
  MatrixD proj(og.x.cols(), 64);
  for (Index i = 0; i < proj.size(); ++i) proj.data()[i] = normal(rng) / 28.0;
  Data d;
  d.x.resize(static_cast<Index>(rows.size()), 64);
  d.labels.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    d.x.row(static_cast<Index>(i)) = (og.x.row(rows[i]) * proj).cast<float>();
    d.labels[i] = og.labels[static_cast<size_t>(rows[i])];
  }
  d.classes = 60;
  return d;
}

void add_report(Outputs& out, const std::string& name, const nc::RetrievalReport& r) {
  out.add_vector(name + ".recall", r.recall_at_k);
  out.add_vector(name + ".precision", r.precision_at_k);
  out.add_vector(name + ".class_recall", r.class_avg_recall_at_k);
  out.add_scalar(name + ".map_at_r", r.map_at_r);
  out.add_scalar(name + ".r_precision", r.r_precision);
  out.add_scalar(name + ".mrr", r.mrr);
  out.add_scalar(name + ".class_map_at_r", r.class_avg_map_at_r);
  out.add_matrix(name + ".per_class_recall", r.class_recall_at_k);
  out.add_matrix(name + ".per_class_map", r.class_map_at_r);
}

/// One run of everything with `threads` threads (0: all) and kNN tiles `tile` (0: automatic).
Outputs run(const Data& d, int threads, Index tile) {
#if defined(_OPENMP)
  // The losses and Eigen's own products use the OpenMP default team size.
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads > 0 ? threads : omp_get_num_procs());
#endif
  Outputs out;
  const MatrixF& x = d.x;
  const auto& y = d.labels;

  // Statistics, in two batches and in one call.
  nc::StatsOptions so{true, threads};
  nc::ClassStats s(d.classes, x.cols(), so);
  s.add(x.topRows(500), nc::LabelView<int>{y.data(), 500});
  s.add(x.bottomRows(x.rows() - 500), nc::LabelView<int>{y.data() + 500, x.rows() - 500});
  out.add_matrix("stats.means", s.means());
  out.add_matrix("stats.within", s.within_covariance());
  out.add_matrix("stats.between", s.between_covariance());
  out.add_matrix("stats.variances", s.class_variances());
  const nc::ClassStats s1 = nc::class_stats(x, y, d.classes, so);
  out.add_matrix("stats1.within", s1.within_covariance());

  // Directions and heads.
  for (auto m : {nc::Direction::pc1, nc::Direction::mean, nc::Direction::centered_mean}) {
    nc::DirectionOptions o;
    o.method = m;
    o.threads = threads;
    out.add_matrix("directions." + std::to_string(static_cast<int>(m)), nc::nc_directions(x, y, o));
  }
  for (auto m : {nc::HeadInit::nc_pc1, nc::HeadInit::class_mean, nc::HeadInit::centered_mean,
                 nc::HeadInit::simplex_etf, nc::HeadInit::aligned_etf, nc::HeadInit::kaiming_normal,
                 nc::HeadInit::xavier_uniform}) {
    nc::HeadOptions o;
    o.method = m;
    o.seed = 5;
    o.threads = threads;
    out.add_matrix("head." + std::to_string(static_cast<int>(m)), nc::init_head(x, y, o));
  }
  const MatrixF W = nc::init_head(x, y);

  // NC metrics: report, NC1 paths, one-pass NC1, NC4.
  const nc::NCReport rep = nc::nc_metrics(s, W);
  for (double v : {rep.nc1, rep.trace_sw, rep.trace_sb, rep.cdnv, rep.nc2_etf_error, rep.nc2_equinorm,
                   rep.nc2_equiangularity, rep.nc2_max_angle, rep.nc3_self_duality, rep.nc3_etf_error})
    out.add_scalar("nc_metrics", v);
  nc::NC1Options exact;
  exact.path = nc::NC1Options::Path::exact;
  out.add_scalar("nc1.exact", nc::nc1(s, exact));
  const nc::ClassStats s_lite = nc::class_stats(x, y, d.classes, nc::StatsOptions{false, threads});
  out.add_scalar("nc1.one_pass", nc::nc1(x, y, s_lite));
  nc::NC4Options o4;
  o4.threads = threads;
  out.add_scalar("nc4", nc::nc4(x, y, s, W, o4));

  // kNN and retrieval, leave-one-out and query vs gallery, with the given tiles.
  for (auto sim : {nc::Similarity::cosine, nc::Similarity::inner_product, nc::Similarity::neg_squared_l2}) {
    nc::KnnOptions ko;
    ko.similarity = sim;
    ko.exclude_self = true;
    ko.threads = threads;
    ko.query_tile = tile;
    ko.gallery_tile = tile;
    const nc::KnnResult r = nc::knn(x, x, 10, ko);
    out.add_matrix("knn.indices", r.indices);
    out.add_matrix("knn.scores", r.scores);
  }
  nc::RetrievalOptions ro;
  ro.per_class = true;
  ro.threads = threads;
  ro.query_tile = tile;
  ro.gallery_tile = tile;
  add_report(out, "loo", nc::evaluate_retrieval(x, y, ro));
  const std::vector<int> yq(y.begin(), y.begin() + 300), yg(y.begin() + 300, y.end());
  add_report(out, "qg", nc::evaluate_retrieval(x.topRows(300), yq, x.bottomRows(x.rows() - 300), yg, ro));

  // Perturbation and the losses at the perturbed point.
  nc::PerturbOptions po;
  po.sigma = 1e-2;
  po.seed = 3;
  po.threads = threads;
  const nc::Perturbation pert(po);
  MatrixF P = W;
  const std::vector<int> yb(y.begin(), y.begin() + 256);
  {
    auto guard = pert.perturb(P, 7);
    out.add_matrix("perturbed", P);
    const nc::LossResult a = nc::norm_softmax_loss(x.topRows(256), yb, P);
    const nc::LossResult b = nc::proxy_anchor_loss(x.topRows(256), yb, P);
    out.add_scalar("norm_softmax", a.loss);
    out.add_matrix("norm_softmax.gx", a.grad_embeddings);
    out.add_matrix("norm_softmax.gw", a.grad_weights);
    out.add_scalar("proxy_anchor", b.loss);
    out.add_matrix("proxy_anchor.gx", b.grad_embeddings);
    out.add_matrix("proxy_anchor.gw", b.grad_weights);
  }
  out.add_matrix("restored", P);

  // Drift.
  nc::DriftTracker drift(nc::nc_directions(x, y));
  drift.update(W);
  drift.update(P);
  out.add_scalar("drift", drift.mean_squared_distance());
#if defined(_OPENMP)
  omp_set_num_threads(saved);
#endif
  return out;
}

void require_equal(const Outputs& a, const Outputs& b, const std::string& what) {
  REQUIRE(a.names == b.names);
  for (size_t i = 0; i < a.bytes.size(); ++i) {
    INFO(what << ": output " << a.names[i] << " (#" << i << ")");
    REQUIRE(a.bytes[i].size() == b.bytes[i].size());
    CHECK(std::memcmp(a.bytes[i].data(), b.bytes[i].data(), a.bytes[i].size()) == 0);
  }
}

}  // namespace

TEST_CASE("the CPU pipeline is bitwise reproducible across runs, thread counts and tile sizes",
          "[determinism][real]") {
  const Data d = load();
  REQUIRE(d.x.rows() > 1000);
  const Outputs ref = run(d, 1, 0);
  REQUIRE(ref.names.size() > 40);
  require_equal(ref, run(d, 1, 0), "repeated run");
  require_equal(ref, run(d, 2, 0), "2 threads");
  require_equal(ref, run(d, 3, 48), "3 threads, tiles of 48");
  require_equal(ref, run(d, 0, 200), "all threads, tiles of 200");
  require_equal(ref, run(d, 2, 1), "2 threads, the smallest tiles");
}

}  // namespace test_determinism
