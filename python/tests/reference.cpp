// The C++ side of test_reference.py: runs the library on DIR/features.npy (float32 or
// float64, [N, D]), DIR/labels.npy (int64, [N]) and DIR/W.npy (float32, [C, D]) and writes
// each result to DIR/out_<name>.npy, for a bitwise comparison with the Python module.
//
//   ncml_python_reference DIR
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <nc/io/npy.hpp>
#include <nc/nc.hpp>

namespace {

template <class T>
void run(const std::string& dir) {
  const nc::Matrix<T> x = nc::read_npy_matrix<T>(dir + "/features.npy");
  const std::vector<int64_t> y = nc::read_npy_vector<int64_t>(dir + "/labels.npy");
  const nc::MatrixF w = nc::read_npy_matrix<float>(dir + "/W.npy");
  auto out = [&](const std::string& name, const auto& a) { nc::write_npy(dir + "/out_" + name + ".npy", a); };

  out("directions_pc1", nc::nc_directions(x, y));
  nc::DirectionOptions centred;
  centred.method = nc::Direction::centered_mean;
  out("directions_centered_mean", nc::nc_directions(x, y, centred));
  out("head_nc_pc1", nc::init_head(x, y));
  out("head_aligned_etf", nc::init_head(x, y, {nc::HeadInit::aligned_etf, 2.0, 5}));
  out("head_kaiming_normal", nc::init_head(w.rows(), w.cols(), {nc::HeadInit::kaiming_normal, 1.0, 7}));

  const nc::ClassStats s = nc::class_stats(x, y);
  out("counts", s.counts());
  out("means", s.means());
  out("sq_deviations", s.class_sq_deviations());
  out("global_mean", s.global_mean());
  out("within_covariance", s.within_covariance());
  out("between_covariance", s.between_covariance());

  nc::NC1Options exact;
  exact.path = nc::NC1Options::Path::exact;
  const nc::NCReport r = nc::nc_metrics(s, w);
  const std::vector<double> nc_values = {nc::nc1(s),         nc::nc1(s, exact),   nc::nc1(x, y, s),
                                         r.trace_sw,         r.trace_sb,          r.trace_ratio,
                                         r.cdnv,             r.nc2_etf_error,     r.nc2_equinorm,
                                         r.nc2_equiangularity, r.nc2_max_angle,   r.nc3_self_duality,
                                         r.nc3_etf_error,    double(r.rank),      nc::nc4(x, y, s, w)};
  out("nc", nc_values);

  nc::KnnOptions loo;
  loo.exclude_self = true;
  const nc::KnnResult k = nc::knn(x, x, 5, loo);
  out("knn_indices", k.indices);
  out("knn_scores", k.scores);

  auto retrieval_values = [](const nc::RetrievalReport& rep) {
    std::vector<double> v(rep.recall_at_k.begin(), rep.recall_at_k.end());
    v.insert(v.end(), rep.precision_at_k.begin(), rep.precision_at_k.end());
    v.insert(v.end(), {rep.map_at_r, rep.r_precision, rep.mrr, double(rep.num_queries), double(rep.num_lone_queries)});
    return v;
  };
  out("retrieval", retrieval_values(nc::evaluate_retrieval(x, y)));
  const nc::Index half = x.rows() / 2;
  const std::vector<int64_t> yq(y.begin(), y.begin() + half), yg(y.begin() + half, y.end());
  nc::RetrievalOptions qg;
  qg.ks = {1, 5, 10};
  out("retrieval_query_gallery",
      retrieval_values(nc::evaluate_retrieval(x.topRows(half), yq, x.bottomRows(x.rows() - half), yg, qg)));

  nc::PerturbOptions po;
  po.sigma = 0.01;
  po.seed = 3;
  const nc::Perturbation pert(po);
  out("noise", pert.noise<float>(w.rows(), w.cols(), 7));
  nc::MatrixF wp = w;
  {
    auto guard = pert.perturb(wp, 7);
    out("perturbed", wp);
  }

  nc::DriftTracker drift(nc::nc_directions(x, y).template cast<float>());
  drift.update(w);
  out("drift", std::vector<double>{drift.mean_squared_distance()});

  const nc::Index b = std::min<nc::Index>(64, x.rows());
  const std::vector<int64_t> yb(y.begin(), y.begin() + b);
  const auto pa = nc::proxy_anchor_loss(x.topRows(b), yb, w.cast<T>());
  out("proxy_anchor", std::vector<double>{pa.loss});
  out("proxy_anchor_grad_embeddings", pa.grad_embeddings);
  out("proxy_anchor_grad_weights", pa.grad_weights);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: ncml_python_reference DIR\n");
    return 2;
  }
  try {
    const std::string dir = argv[1];
    if (nc::read_npy_header(dir + "/features.npy").dtype == nc::NpyDtype::float64) run<double>(dir);
    else run<float>(dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ncml_python_reference: %s\n", e.what());
    return 1;
  }
  return 0;
}
