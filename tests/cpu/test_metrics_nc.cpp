#include <catch2/catch.hpp>

#include <Eigen/QR>
#include <Eigen/SVD>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nc/metrics/nc.hpp>
#include <nc/stats.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_metrics_nc {

using namespace nct;

namespace {

// Independent float64 brute force: direct formulas over all samples and class pairs, the
// pseudo-inverse of Sigma_B as numpy computes it (SVD of the D x D matrix, singular values at
// or below rcond * s_max dropped). rcond sits between the noise floor of a D x D
// decomposition (~1e-15) and the smallest true eigenvalue of the data used here.
struct Reference {
  double nc1, trace_sw, trace_sb, cdnv, etf, equinorm, equiangularity, max_angle;
  double self_duality = std::nan(""), w_etf = std::nan("");
  Index used = 0;
};

double etf_of(const MatrixD& a) {
  const Index k = a.rows();
  const MatrixD ideal = (MatrixD::Identity(k, k) - MatrixD::Constant(k, k, 1.0 / double(k))) /
                        std::sqrt(double(k - 1));
  return (a / a.norm() - ideal).norm();
}

template <class X>
Reference reference(const X& xin, const std::vector<int>& y, Index C, const MatrixD* W = nullptr,
                    bool unweighted = false, double rcond = 1e-10) {
  const MatrixD x = xin.template cast<double>();
  const Index n = x.rows(), d = x.cols();
  std::vector<int64_t> cnt(C, 0);
  MatrixD mu = MatrixD::Zero(C, d);
  for (Index i = 0; i < n; ++i) {
    ++cnt[y[i]];
    mu.row(y[i]) += x.row(i);
  }
  std::vector<Index> used;
  for (Index c = 0; c < C; ++c)
    if (cnt[c]) {
      mu.row(c) /= double(cnt[c]);
      used.push_back(c);
    }
  const Index k = Index(used.size());
  Eigen::RowVectorXd g = Eigen::RowVectorXd::Zero(d);
  if (unweighted) {
    for (Index c : used) g += mu.row(c);
    g /= double(k);
  } else {
    g = x.colwise().mean();
  }

  MatrixD dev(n, d);
  std::vector<double> var(C, 0.0);
  for (Index i = 0; i < n; ++i) {
    dev.row(i) = x.row(i) - mu.row(y[i]);
    var[y[i]] += dev.row(i).squaredNorm();
  }
  for (Index c : used) var[c] /= double(cnt[c]);
  const MatrixD sw = dev.transpose() * dev / double(n);
  MatrixD sb = MatrixD::Zero(d, d);
  for (Index c : used) {
    const Eigen::VectorXd m = (mu.row(c) - g).transpose();
    sb += m * m.transpose();
  }
  sb /= double(k);
  Eigen::BDCSVD<MatrixD> svd(sb, Eigen::ComputeFullU | Eigen::ComputeFullV);
  const Eigen::VectorXd s = svd.singularValues();
  Eigen::VectorXd sinv = Eigen::VectorXd::Zero(d);
  for (Index j = 0; j < d; ++j)
    if (s[j] > rcond * s[0]) sinv[j] = 1.0 / s[j];
  const MatrixD pinv = svd.matrixV() * sinv.asDiagonal() * svd.matrixU().transpose();

  Reference r;
  r.used = k;
  r.nc1 = (sw * pinv).trace() / double(k);
  r.trace_sw = sw.trace();
  r.trace_sb = sb.trace();

  MatrixD mt(k, d), gram(k, k);
  for (Index i = 0; i < k; ++i) mt.row(i) = mu.row(used[i]) - g;
  for (Index i = 0; i < k; ++i)
    for (Index j = 0; j < k; ++j) gram(i, j) = mt.row(i).dot(mt.row(j));
  r.etf = etf_of(gram);

  double cd = 0, cs = 0, angle = 0;
  std::vector<double> cosines;
  for (Index i = 0; i < k; ++i)
    for (Index j = i + 1; j < k; ++j) {
      const double dist2 = (mu.row(used[i]) - mu.row(used[j])).squaredNorm();
      cd += (var[used[i]] + var[used[j]]) / (2 * dist2);
      const double c = mt.row(i).dot(mt.row(j)) / (mt.row(i).norm() * mt.row(j).norm());
      cosines.push_back(c);
      cs += c;
      angle += std::abs(c + 1.0 / double(k - 1));
    }
  const double pairs = double(cosines.size());
  r.cdnv = cd / pairs;
  r.max_angle = angle / pairs;
  const double cmean = cs / pairs;
  double cvar = 0;
  for (double c : cosines) cvar += (c - cmean) * (c - cmean);
  r.equiangularity = std::sqrt(cvar / pairs);
  std::vector<double> norms;
  double nmean = 0;
  for (Index i = 0; i < k; ++i) {
    norms.push_back(mt.row(i).norm());
    nmean += norms.back();
  }
  nmean /= double(k);
  double nvar = 0;
  for (double v : norms) nvar += (v - nmean) * (v - nmean);
  r.equinorm = std::sqrt(nvar / double(k)) / nmean;

  if (W) {
    MatrixD wu(k, d);
    for (Index i = 0; i < k; ++i) wu.row(i) = W->row(used[i]);
    r.self_duality = (wu / wu.norm() - mt / mt.norm()).norm();
    MatrixD wm(k, k);
    for (Index i = 0; i < k; ++i)
      for (Index j = 0; j < k; ++j) wm(i, j) = wu.row(i).dot(mt.row(j));
    r.w_etf = etf_of(wm);
  }
  return r;
}

// NC4 by brute force: for every sample, every class, direct distances and dot products.
template <class X>
double reference_nc4(const X& xin, const std::vector<int>& y, Index C, const MatrixD& W,
                     const Eigen::VectorXd& b, bool cosine, bool per_class) {
  const MatrixD x = xin.template cast<double>();
  const Index n = x.rows(), d = x.cols();
  std::vector<int64_t> cnt(C, 0);
  MatrixD mu = MatrixD::Zero(C, d);
  for (Index i = 0; i < n; ++i) {
    ++cnt[y[i]];
    mu.row(y[i]) += x.row(i);
  }
  for (Index c = 0; c < C; ++c)
    if (cnt[c]) mu.row(c) /= double(cnt[c]);
  std::vector<double> miss(C, 0);
  double total = 0;
  for (Index i = 0; i < n; ++i) {
    Index ncc = -1, clf = -1;
    double best_ncc = 0, best_clf = 0;
    for (Index c = 0; c < C; ++c) {
      if (!cnt[c]) continue;
      const double s = cosine ? x.row(i).dot(mu.row(c)) / mu.row(c).norm()
                              : -(x.row(i) - mu.row(c)).squaredNorm();
      if (ncc < 0 || s > best_ncc) {
        ncc = c;
        best_ncc = s;
      }
    }
    for (Index c = 0; c < C; ++c) {
      const double s = cosine ? x.row(i).dot(W.row(c)) / (x.row(i).norm() * W.row(c).norm()) + b[c]
                              : x.row(i).dot(W.row(c)) + b[c];
      if (clf < 0 || s > best_clf) {
        clf = c;
        best_clf = s;
      }
    }
    if (ncc != clf) {
      miss[y[i]] += 1;
      total += 1;
    }
  }
  if (!per_class) return total / double(n);
  double acc = 0;
  Index k = 0;
  for (Index c = 0; c < C; ++c)
    if (cnt[c]) {
      acc += miss[c] / double(cnt[c]);
      ++k;
    }
  return acc / double(k);
}

void check_report(const nc::NCReport& r, const Reference& ref, double tol, bool with_w) {
  CHECK(r.num_classes_used == ref.used);
  CHECK(rel_err(r.nc1, ref.nc1) < tol);
  CHECK(rel_err(r.trace_sw, ref.trace_sw) < tol);
  CHECK(rel_err(r.trace_sb, ref.trace_sb) < tol);
  CHECK(rel_err(r.trace_ratio, ref.trace_sw / ref.trace_sb) < tol);
  CHECK(rel_err(r.cdnv, ref.cdnv) < tol);
  CHECK(rel_err(r.nc2_etf_error, ref.etf) < tol);
  CHECK(rel_err(r.nc2_equinorm, ref.equinorm) < tol);
  CHECK(rel_err(r.nc2_equiangularity, ref.equiangularity) < tol);
  CHECK(rel_err(r.nc2_max_angle, ref.max_angle) < tol);
  if (with_w) {
    CHECK(rel_err(r.nc3_self_duality, ref.self_duality) < tol);
    CHECK(rel_err(r.nc3_etf_error, ref.w_etf) < tol);
  } else {
    CHECK(std::isnan(r.nc3_self_duality));
    CHECK(std::isnan(r.nc3_etf_error));
  }
}

// A head near the class means, so that NC4 has something to disagree on.
MatrixD noisy_head(const MatrixD& x, const std::vector<int>& y, Index C, double noise,
                   uint64_t seed) {
  MatrixD mu = MatrixD::Zero(C, x.cols());
  std::vector<double> cnt(C, 0);
  for (Index i = 0; i < x.rows(); ++i) {
    mu.row(y[i]) += x.row(i);
    cnt[y[i]] += 1;
  }
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  const double scale = noise * std::sqrt(x.squaredNorm() / double(x.rows() * x.cols()));
  for (Index c = 0; c < C; ++c) {
    if (cnt[c]) mu.row(c) /= cnt[c];
    for (Index j = 0; j < x.cols(); ++j) mu(c, j) += scale * g(rng);
  }
  return mu;
}

MatrixD random_projection(const MatrixD& x, Index d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  MatrixD r(x.cols(), d);
  for (Index i = 0; i < r.size(); ++i) r.data()[i] = g(rng) / std::sqrt(double(d));
  return x * r;
}

// Runs every metric against the reference for double features (1e-9) and the same data in
// float (1e-5), NC1 through both paths and through the pass over the data.
void check_all(const MatrixD& x, const std::vector<int>& y, Index C, uint64_t seed) {
  const MatrixD W = noisy_head(x, y, C, 0.5, seed);
  const Reference ref = reference(x, y, C, &W);
  INFO("N = " << x.rows() << ", D = " << x.cols() << ", C = " << C << ", NC1 = " << ref.nc1);

  nc::ClassStats s(C, x.cols());
  s.add(x, y);
  const nc::NCReport r = nc::nc_metrics(s, &W);
  check_report(r, ref, 1e-9, true);
  CHECK(r.rank == std::min<Index>(ref.used - 1, x.cols()));
  CHECK(r.num_samples == x.rows());

  const nc::NC1Result exact = nc::nc1_detailed(s, {nc::NC1Options::Path::exact});
  CHECK(exact.rank == r.rank);
  CHECK(rel_err(exact.value, ref.nc1) < 1e-9);
  CHECK(rel_err(exact.value, r.nc1) < 1e-9);
  CHECK(rel_err(nc::nc_metrics(s, W, {nc::NC1Options::Path::exact}).nc1, ref.nc1) < 1e-9);

  nc::ClassStats light(C, x.cols(), {false});
  light.add(x, y);
  const nc::NC1Result pass = nc::nc1_detailed(x, y, light);
  CHECK(pass.rank == r.rank);
  CHECK(rel_err(pass.value, ref.nc1) < 1e-9);

  const Eigen::VectorXd none = Eigen::VectorXd::Zero(C);
  CHECK(rel_err(nc::nc4(x, y, s, W), reference_nc4(x, y, C, W, none, false, false)) < 1e-9);

  const MatrixF xf = x.cast<float>();
  const MatrixF Wf = W.cast<float>();
  const Reference reff = reference(xf, y, C, &W);
  nc::ClassStats sf(C, x.cols());
  sf.add(xf, y);
  check_report(nc::nc_metrics(sf, &Wf), reff, 1e-5, true);
  CHECK(rel_err(nc::nc1(sf, {nc::NC1Options::Path::exact}), reff.nc1) < 1e-5);
  nc::ClassStats lightf(C, x.cols(), {false});
  lightf.add(xf, y);
  CHECK(rel_err(nc::nc1(xf, y, lightf), reff.nc1) < 1e-5);
  CHECK(rel_err(nc::nc4(xf, y, sf, W), reference_nc4(xf, y, C, W, none, false, false)) < 1e-9);
}

// C classes whose means form a simplex ETF of radius `radius` around `offset`, in d >= C
// dimensions (random orthonormal embedding), `per_class` samples each, all at their mean.
MatrixD collapsed(Index C, Index d, Index per_class, double radius,
                  const Eigen::RowVectorXd& offset, std::vector<int>& y, MatrixD& centred_means) {
  std::mt19937_64 rng(11);
  std::normal_distribution<double> g(0.0, 1.0);
  MatrixD rnd(d, C);
  for (Index i = 0; i < rnd.size(); ++i) rnd.data()[i] = g(rng);
  const MatrixD q = Eigen::HouseholderQR<MatrixD>(rnd).householderQ() * MatrixD::Identity(d, C);
  const MatrixD etf = (MatrixD::Identity(C, C) - MatrixD::Constant(C, C, 1.0 / double(C))) *
                      std::sqrt(double(C) / double(C - 1));
  centred_means = radius * etf * q.transpose();
  MatrixD x(C * per_class, d);
  y.clear();
  for (Index i = 0; i < C * per_class; ++i) {
    const Index c = i % C;
    y.push_back(int(c));
    x.row(i) = centred_means.row(c) + offset;
  }
  return x;
}

bool have_numpy() { return std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0; }

// Writes x (float64, row-major) and y (int64) for tests/numpy_nc1.py and returns its NC1.
double numpy_nc1(const MatrixD& x, const std::vector<int>& y, Index C, const std::string& tag) {
  const std::string tmp = NCML_TEST_TMP_DIR;
  const std::string xs = tmp + "/nc1_" + tag + "_x.f64", ys = tmp + "/nc1_" + tag + "_y.i64",
                    out = tmp + "/nc1_" + tag + "_out.txt";
  {
    std::ofstream fx(xs, std::ios::binary), fy(ys, std::ios::binary);
    fx.write(reinterpret_cast<const char*>(x.data()), std::streamsize(sizeof(double) * x.size()));
    for (int v : y) {
      const int64_t l = v;
      fy.write(reinterpret_cast<const char*>(&l), sizeof l);
    }
  }
  const std::string script = std::string(NCML_DATA_DIR) + "/../tests/numpy_nc1.py";
  const std::string cmd = "/usr/bin/python3 '" + script + "' --x '" + xs + "' --y '" + ys +
                          "' --dim " + std::to_string(x.cols()) + " --num-classes " +
                          std::to_string(C) + " > '" + out + "'";
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::ifstream in(out);
  std::string key;
  double v = std::nan("");
  while (in >> key)
    if (key == "nc1") in >> v;
  std::remove(xs.c_str());
  std::remove(ys.c_str());
  std::remove(out.c_str());
  return v;
}

}  // namespace

TEST_CASE("NC metrics match a float64 brute force on mixtures, D > C and D < C", "[nc]") {
  std::vector<int> y;
  SECTION("D > C") {
    const MatrixD x = mixture(2000, 40, 12, y, 21, 3.0, 1.0);
    check_all(x, y, 12, 1);
  }
  SECTION("D < C") {
    const MatrixD x = mixture(3000, 8, 30, y, 22, 2.0, 1.0);
    check_all(x, y, 30, 2);
  }
  SECTION("D = C with a large common offset") {
    MatrixD x = mixture(1500, 15, 15, y, 23, 4.0, 1.0);
    x.array() += 300.0;
    check_all(x, y, 15, 3);
  }
}

TEST_CASE("NC metrics on Omniglot pixels (D = 784 > C = 242) and a 64-d projection (D < C)",
          "[nc][real]") {
  const RealData data = load_omniglot();
  REQUIRE(data.x.cols() == 784);
  SECTION("pixels") { check_all(data.x, data.labels, 242, 4); }
  SECTION("random projection to 64 dimensions") {
    check_all(random_projection(data.x, 64, 5), data.labels, 242, 5);
  }
}

TEST_CASE("NC1 agrees with numpy's np.trace(Sw @ np.linalg.pinv(Sb)) / C", "[nc][numpy]") {
  if (!have_numpy()) {
    WARN("SKIPPED: /usr/bin/python3 with numpy is not available (apt-get install python3-numpy)");
    return;
  }
  const RealData data = load_omniglot();
  SECTION("Omniglot projected to 64 dimensions (D < C)") {
    const MatrixD x = random_projection(data.x, 64, 5);
    nc::ClassStats s(242, 64);
    s.add(x, data.labels);
    CHECK(rel_err(nc::nc1(s), numpy_nc1(x, data.labels, 242, "omniglot64")) < 1e-9);
  }
  SECTION("Omniglot pixels (D > C)") {
    nc::ClassStats s(242, 784);
    s.add(data.x, data.labels);
    CHECK(rel_err(nc::nc1(s), numpy_nc1(data.x, data.labels, 242, "omniglot784")) < 1e-9);
  }
  SECTION("a mixture with empty classes") {
    std::vector<int> y;
    const MatrixD x = mixture(1000, 20, 9, y, 31);
    for (int& v : y) v = v * 2;  // classes 1, 3, ..., 15 and 17 stay empty
    nc::ClassStats s(18, 20);
    s.add(x, y);
    CHECK(rel_err(nc::nc1(s), numpy_nc1(x, y, 18, "empty")) < 1e-9);
  }
}

TEST_CASE("Empty classes are excluded and counted; W rows of empty classes are ignored", "[nc]") {
  std::vector<int> y;
  const MatrixD x = mixture(1200, 16, 10, y, 41);
  for (int& v : y)
    if (v >= 4) v += 3;  // classes 4, 5, 6 empty; 10..12 hold the last three
  const Index C = 13;
  MatrixD W = noisy_head(x, y, C, 0.3, 42);
  for (Index c : {4, 5, 6}) W.row(c).setConstant(1e6);
  nc::ClassStats s(C, 16);
  s.add(x, y);
  const nc::NCReport r = nc::nc_metrics(s, &W);
  CHECK(r.num_empty_classes == 3);
  CHECK(r.num_classes_used == 10);
  check_report(r, reference(x, y, C, &W), 1e-9, true);
  const Eigen::VectorXd none = Eigen::VectorXd::Zero(C);
  CHECK(rel_err(nc::nc4(x, y, s, W), reference_nc4(x, y, C, W, none, false, false)) < 1e-9);
}

TEST_CASE("The unweighted global mean option on imbalanced classes", "[nc]") {
  std::vector<int> y;
  MatrixD x = mixture(2500, 12, 6, y, 51);
  for (int& v : y)
    if (v == 5) v = 0;  // class 0 gets about twice the samples, class 5 only its first one
  y[5] = 5;
  const MatrixD W = noisy_head(x, y, 6, 0.4, 52);
  nc::ClassStats s(6, 12);
  s.add(x, y);
  nc::NCOptions o;
  o.unweighted_global_mean = true;
  const Reference ref = reference(x, y, 6, &W, true);
  check_report(nc::nc_metrics(s, &W, o), ref, 1e-9, true);
  nc::NC1Options o1;
  o1.unweighted_global_mean = true;
  CHECK(rel_err(nc::nc1(s, o1), ref.nc1) < 1e-9);
  o1.path = nc::NC1Options::Path::exact;
  CHECK(rel_err(nc::nc1(s, o1), ref.nc1) < 1e-9);
  nc::ClassStats light(6, 12, {false});
  light.add(x, y);
  o1.path = nc::NC1Options::Path::projected;
  CHECK(rel_err(nc::nc1(x, y, light, o1), ref.nc1) < 1e-9);
  // The weighted default differs on these data.
  CHECK(rel_err(nc::nc_metrics(s).nc2_etf_error, ref.etf) > 1e-6);
}

TEST_CASE("NC4: bias, cosine rule, per-class average, test data against training means",
          "[nc][nc4]") {
  std::vector<int> y;
  const MatrixD x = mixture(3000, 24, 9, y, 61, 2.0, 1.0);
  const MatrixD W = noisy_head(x, y, 9, 0.8, 62);
  Eigen::VectorXd b(9);
  for (Index c = 0; c < 9; ++c) b[c] = 0.3 * std::sin(double(c));
  nc::ClassStats s(9, 24), sf(9, 24);
  s.add(x, y);
  const MatrixF xf = x.cast<float>();
  sf.add(xf, y);
  for (bool cosine : {false, true})
    for (bool per_class : {false, true}) {
      nc::NC4Options o;
      o.rule = cosine ? nc::NC4Options::Rule::cosine : nc::NC4Options::Rule::euclidean;
      o.per_class_average = per_class;
      const double ref = reference_nc4(x, y, 9, W, b, cosine, per_class);
      INFO("cosine " << cosine << ", per_class " << per_class << ", reference " << ref);
      CHECK(ref > 0.01);
      CHECK(rel_err(nc::nc4(x, y, s, W, b, o), ref) < 1e-9);
      CHECK(rel_err(nc::nc4(xf, y, sf, W.cast<float>(), b, o),
                    reference_nc4(xf, y, 9, W.cast<float>().cast<double>(), b, cosine, per_class)) <
            1e-9);
    }

  // Held-out features against the training statistics: NCC uses the training means.
  std::vector<int> yt;
  const MatrixD xt = mixture(500, 24, 9, yt, 63, 2.0, 1.0);
  const MatrixD mu = s.means();
  double miss = 0;
  for (Index i = 0; i < xt.rows(); ++i) {
    Index ncc = 0, clf = 0;
    for (Index c = 1; c < 9; ++c) {
      if ((xt.row(i) - mu.row(c)).squaredNorm() < (xt.row(i) - mu.row(ncc)).squaredNorm()) ncc = c;
      if (xt.row(i).dot(W.row(c)) > xt.row(i).dot(W.row(clf))) clf = c;
    }
    miss += ncc != clf;
  }
  CHECK(rel_err(nc::nc4(xt, yt, s, W), miss / double(xt.rows())) < 1e-12);
}

TEST_CASE("Perfectly collapsed data: NC1, NC2, NC3 and NC4 vanish", "[nc][properties]") {
  for (double off : {0.0, 25.0}) {
    std::vector<int> y;
    MatrixD mt;
    const Eigen::RowVectorXd offset = Eigen::RowVectorXd::Constant(12, off);
    const MatrixD x = collapsed(7, 12, 5, 3.0, offset, y, mt);
    INFO("offset " << off);
    nc::ClassStats s(7, 12);
    s.add(x, y);
    const nc::NCReport r = nc::nc_metrics(s, &mt);
    CHECK(std::abs(r.nc1) < 1e-20);
    CHECK(std::abs(nc::nc1(s, {nc::NC1Options::Path::exact})) < 1e-20);
    CHECK(r.rank == 6);
    CHECK(std::abs(r.cdnv) < 1e-20);
    CHECK(r.nc2_etf_error < 1e-12);
    CHECK(r.nc2_equinorm < 1e-12);
    CHECK(r.nc2_equiangularity < 1e-12);
    CHECK(r.nc2_max_angle < 1e-12);
    CHECK(r.nc3_self_duality < 1e-12);
    CHECK(r.nc3_etf_error < 1e-12);
    // Logits w_c . h + b_c with W = M~ and b_c = -w_c . mu_G are m~_c . m~_y.
    const Eigen::VectorXd b = -(mt * offset.transpose());
    CHECK(nc::nc4(x, y, s, mt, b) == 0.0);
    nc::NC4Options cos;
    cos.rule = nc::NC4Options::Rule::cosine;
    if (off == 0.0) CHECK(nc::nc4(x, y, s, mt, cos) == 0.0);
  }
}

TEST_CASE("Scaling all features leaves NC1, NC2, CDNV and the trace ratio unchanged",
          "[nc][properties]") {
  std::vector<int> y;
  const MatrixD x = mixture(1500, 20, 8, y, 71, 3.0, 1.5);
  nc::ClassStats a(8, 20), b(8, 20);
  a.add(x, y);
  b.add(x * 37.5, y);
  const nc::NCReport ra = nc::nc_metrics(a), rb = nc::nc_metrics(b);
  CHECK(rel_err(rb.nc1, ra.nc1) < 1e-12);
  CHECK(rel_err(rb.cdnv, ra.cdnv) < 1e-12);
  CHECK(rel_err(rb.trace_ratio, ra.trace_ratio) < 1e-12);
  CHECK(rel_err(rb.nc2_etf_error, ra.nc2_etf_error) < 1e-12);
  CHECK(rel_err(rb.nc2_equinorm, ra.nc2_equinorm) < 1e-12);
  CHECK(rel_err(rb.nc2_equiangularity, ra.nc2_equiangularity) < 1e-12);
  CHECK(rel_err(rb.nc2_max_angle, ra.nc2_max_angle) < 1e-12);
  CHECK(rel_err(rb.trace_sw, ra.trace_sw * 37.5 * 37.5) < 1e-12);
}

TEST_CASE("NC metrics: float and double heads, pointer overloads, statistics without scatter",
          "[nc]") {
  std::vector<int> y;
  const MatrixD x = mixture(800, 10, 5, y, 81);
  const MatrixD Wd = noisy_head(x, y, 5, 0.5, 82);
  const MatrixF Wf = Wd.cast<float>();
  nc::ClassStats s(5, 10);
  s.add(x, y);
  const nc::NCReport a = nc::nc_metrics(s, &Wf), b = nc::nc_metrics(s, Wf.cast<double>());
  CHECK(a.nc3_self_duality == b.nc3_self_duality);
  CHECK(a.nc3_etf_error == b.nc3_etf_error);
  CHECK(nc::nc_metrics(s, &Wd).nc3_self_duality == nc::nc_metrics(s, Wd).nc3_self_duality);
  CHECK(std::isnan(nc::nc_metrics(s, nullptr).nc3_etf_error));
  CHECK(std::isnan(nc::nc_metrics(s, static_cast<const MatrixF*>(nullptr)).nc3_etf_error));
  CHECK(nc::nc_metrics(s).nc1 == a.nc1);

  nc::ClassStats light(5, 10, {false});
  light.add(x, y);
  const nc::NCReport l = nc::nc_metrics(light, &Wd);
  CHECK(std::isnan(l.nc1));
  CHECK(l.rank == 4);
  CHECK(rel_err(l.cdnv, a.cdnv) < 1e-12);
  CHECK(rel_err(l.trace_sw, a.trace_sw) < 1e-12);
  CHECK(rel_err(l.nc3_etf_error, a.nc3_etf_error) < 1e-6);
  CHECK_THROWS_WITH(nc::nc1(light), Catch::Contains("within_scatter"));
}

TEST_CASE("NC1 and NC4 do not depend on the thread count", "[nc]") {
  std::vector<int> y;
  const MatrixF x = mixture(6000, 48, 20, y, 91).cast<float>();
  nc::ClassStats s(20, 48, {false});
  s.add(x, y);
  nc::NC1Options one, two;
  one.threads = 1;
  two.threads = 2;
  CHECK(nc::nc1(x, y, s, one) == nc::nc1(x, y, s, two));
  const MatrixF W = noisy_head(x.cast<double>(), y, 20, 1.0, 92).cast<float>();
  nc::NC4Options o1, o2;
  o1.threads = 1;
  o2.threads = 2;
  const double r1 = nc::nc4(x, y, s, W, o1);
  CHECK(r1 > 0.0);
  CHECK(r1 == nc::nc4(x, y, s, W, o2));
}

TEST_CASE("NC1 rank tolerance: explicit values and rank-deficient class means", "[nc]") {
  // Six classes whose means lie in a 2-d plane of R^10: rank 2 for either path.
  std::mt19937_64 rng(101);
  std::normal_distribution<double> g(0.0, 1.0);
  const Index C = 6, d = 10, n = 600;
  MatrixD basis(2, d), x(n, d);
  for (Index i = 0; i < basis.size(); ++i) basis.data()[i] = g(rng);
  MatrixD centres(C, d);
  for (Index c = 0; c < C; ++c)
    centres.row(c) =
        3 * std::cos(double(c)) * basis.row(0) + 3 * std::sin(double(c)) * basis.row(1);
  std::vector<int> y(n);
  MatrixD noise_mean = MatrixD::Zero(C, d);
  for (Index i = 0; i < n; ++i) {
    y[i] = int(i % C);
    for (Index j = 0; j < d; ++j) x(i, j) = g(rng);
    noise_mean.row(y[i]) += x.row(i) / double(n / C);
  }
  // Noise of mean zero in every class: the class means are the centres up to rounding.
  for (Index i = 0; i < n; ++i) x.row(i) += centres.row(y[i]) - noise_mean.row(y[i]);
  nc::ClassStats s(C, d);
  s.add(x, y);
  const nc::NC1Result p = nc::nc1_detailed(s),
                      e = nc::nc1_detailed(s, {nc::NC1Options::Path::exact});
  CHECK(p.rank == 2);
  CHECK(e.rank == 2);
  CHECK(rel_err(p.value, e.value) < 1e-9);
  CHECK(rel_err(p.value, reference(x, y, C).nc1) < 1e-9);
  // A tolerance between the two singular values of M~ keeps one direction on both paths.
  Eigen::JacobiSVD<MatrixD> svd(nc::MatrixD(s.means().rowwise() - s.global_mean().transpose()));
  const double mid = std::sqrt(svd.singularValues()[0] * svd.singularValues()[1]);
  nc::NC1Options o;
  o.rank_tol = mid;
  const nc::NC1Result p1 = nc::nc1_detailed(s, o);
  o.path = nc::NC1Options::Path::exact;
  const nc::NC1Result e1 = nc::nc1_detailed(s, o);
  CHECK(p1.rank == 1);
  CHECK(e1.rank == 1);
  CHECK(p1.tolerance == mid);
  CHECK(rel_err(p1.value, e1.value) < 1e-9);
  CHECK(p1.value < p.value);
  o.rank_tol = 2 * svd.singularValues()[0];
  CHECK_THROWS_WITH(nc::nc1(s, o), Catch::Contains("rank_tol"));
}

TEST_CASE("NC metrics reject bad input", "[nc][errors]") {
  std::vector<int> y;
  const MatrixD x = mixture(300, 6, 4, y, 111);
  nc::ClassStats s(4, 6);
  s.add(x, y);

  SECTION("W of the wrong shape or with NaN") {
    CHECK_THROWS_WITH(nc::nc_metrics(s, MatrixD(MatrixD::Ones(3, 6))),
                      Catch::Contains("W is 3 x 6"));
    CHECK_THROWS_WITH(nc::nc_metrics(s, MatrixF(MatrixF::Ones(4, 5))),
                      Catch::Contains("W is 4 x 5"));
    MatrixD w = MatrixD::Ones(4, 6);
    w(2, 3) = std::nan("");
    CHECK_THROWS_WITH(nc::nc_metrics(s, w), Catch::Contains("row 2"));
    CHECK_THROWS_WITH(nc::nc_metrics(s, MatrixD(MatrixD::Zero(4, 6))),
                      Catch::Contains("W is zero"));
    CHECK_THROWS_WITH(nc::nc4(x, y, s, MatrixD(MatrixD::Ones(4, 7))),
                      Catch::Contains("W is 4 x 7"));
    CHECK_THROWS_WITH(nc::nc4(x, y, s, MatrixD(MatrixD::Ones(4, 6)), Eigen::VectorXd::Ones(3)),
                      Catch::Contains("bias has 3 entries"));
  }
  SECTION("fewer than two classes with samples") {
    nc::ClassStats one(3, 6);
    std::vector<int> y1(x.rows(), 1);
    one.add(x, y1);
    CHECK_THROWS_WITH(nc::nc_metrics(one),
                      Catch::Contains("at least 2 classes") && Catch::Contains("got 1"));
    CHECK_THROWS_AS(nc::nc1(one), nc::error);
    CHECK_THROWS_AS(nc::nc4(x, y1, one, MatrixD(MatrixD::Ones(3, 6))), nc::error);
    CHECK_THROWS_WITH(nc::nc_metrics(nc::ClassStats(3, 6)), Catch::Contains("no samples"));
  }
  SECTION("non-finite statistics") {
    // Finite features whose squared deviations overflow double.
    MatrixD big = MatrixD::Zero(4, 2);
    big(0, 0) = 1e200;
    big(1, 0) = -1e200;
    big(2, 1) = 1.0;
    big(3, 1) = 2.0;
    nc::ClassStats inf(2, 2);
    inf.add(big, std::vector<int>{0, 0, 1, 1});
    CHECK_THROWS_WITH(nc::nc_metrics(inf), Catch::Contains("non-finite"));
    CHECK_THROWS_WITH(nc::nc1(inf), Catch::Contains("non-finite"));
  }
  SECTION("coinciding class means") {
    MatrixD same(4, 3);
    same << 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3;
    nc::ClassStats c(2, 3);
    c.add(same, std::vector<int>{0, 1, 0, 1});
    CHECK_THROWS_WITH(nc::nc1(c), Catch::Contains("coincide"));
    CHECK_THROWS_WITH(nc::nc1(c, {nc::NC1Options::Path::exact}), Catch::Contains("coincide"));
  }
  SECTION("NC1 from data that are not the statistics' data") {
    nc::ClassStats light(4, 6, {false});
    light.add(x, y);
    std::vector<int> other = y;
    other[0] = (other[0] + 1) % 4;
    CHECK_THROWS_WITH(nc::nc1(x, other, light), Catch::Contains("pass the data"));
    CHECK_THROWS_WITH(nc::nc1(x.leftCols(5), y, light), Catch::Contains("5 columns"));
    CHECK_THROWS_WITH(nc::nc1(x, y, light, {nc::NC1Options::Path::exact}),
                      Catch::Contains("exact"));
    MatrixD xn = x;
    xn(7, 2) = INFINITY;
    CHECK_THROWS_WITH(nc::nc1(xn, y, light), Catch::Contains("row 7"));
    CHECK_THROWS_WITH(nc::nc4(xn, y, s, MatrixD(MatrixD::Ones(4, 6))), Catch::Contains("row 7"));
    std::vector<int> bad = y;
    bad[3] = 4;
    CHECK_THROWS_WITH(nc::nc4(x, bad, s, MatrixD(MatrixD::Ones(4, 6))), Catch::Contains("row 3"));
  }
}

}  // namespace test_metrics_nc
