#include <catch2/catch.hpp>

#include <Eigen/Eigenvalues>
#include <cstdint>
#include <vector>

#include <nc/stats.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_stats {

using namespace nct;

namespace {
// Direct two-pass float64 reference: class means, then deviations.
struct Reference {
  std::vector<int64_t> counts;
  MatrixD means, sw, sb;
  Eigen::VectorXd sq_dev, global;
};

template <class X>
Reference reference(const X& xin, const std::vector<int>& y, Index C) {
  const MatrixD x = xin.template cast<double>();
  const Index n = x.rows(), d = x.cols();
  Reference r;
  r.counts.assign(C, 0);
  r.means = MatrixD::Zero(C, d);
  for (Index i = 0; i < n; ++i) {
    r.counts[y[i]]++;
    r.means.row(y[i]) += x.row(i);
  }
  for (Index c = 0; c < C; ++c)
    if (r.counts[c]) r.means.row(c) /= double(r.counts[c]);
  MatrixD dev(n, d);
  r.sq_dev = Eigen::VectorXd::Zero(C);
  for (Index i = 0; i < n; ++i) {
    dev.row(i) = x.row(i) - r.means.row(y[i]);
    r.sq_dev[y[i]] += dev.row(i).squaredNorm();
  }
  r.sw = dev.transpose() * dev / double(n);
  r.global = x.colwise().mean().transpose();
  r.sb = MatrixD::Zero(d, d);
  Index nonempty = 0;
  for (Index c = 0; c < C; ++c) {
    if (!r.counts[c]) continue;
    ++nonempty;
    const Eigen::VectorXd dm = r.means.row(c).transpose() - r.global;
    r.sb += dm * dm.transpose();
  }
  r.sb /= double(nonempty);
  return r;
}
}  // namespace

TEST_CASE("ClassStats matches a two-pass float64 reference", "[stats]") {
  std::vector<int> y;
  const Index C = 7, d = 13;
  MatrixD x = mixture(1000, d, C, y, 1);
  x.array() += 1e3;  // a large common offset: cancellation would show here
  const Reference ref = reference(x, y, C);

  nc::ClassStats s(C, d);
  s.add(x, y);
  REQUIRE(s.total_count() == 1000);
  for (Index c = 0; c < C; ++c) CHECK(s.counts()[c] == ref.counts[c]);
  CHECK(rel_err(s.means(), ref.means) < 1e-12);
  CHECK(rel_err(s.within_covariance(), ref.sw) < 1e-12);
  CHECK(rel_err(s.between_covariance(), ref.sb) < 1e-12);
  CHECK(rel_err(s.class_sq_deviations(), ref.sq_dev) < 1e-12);
  CHECK(rel_err(s.global_mean(), ref.global) < 1e-12);
}

TEST_CASE("ClassStats: any split into batches and merges equals one pass", "[stats]") {
  std::vector<int> y;
  const Index C = 5, d = 9, n = 777;
  const MatrixD x = mixture(n, d, C, y, 2);
  nc::ClassStats one(C, d);
  one.add(x, y);

  for (Index cut : {Index(1), Index(100), Index(500), Index(776)}) {
    nc::ClassStats a(C, d), b(C, d);
    std::vector<int> ya(y.begin(), y.begin() + cut), yb(y.begin() + cut, y.end());
    a.add(x.topRows(cut), ya);
    // b is fed in small batches of varying size.
    Index r = cut, step = 1;
    while (r < n) {
      const Index m = std::min(step, n - r);
      std::vector<int> yy(y.begin() + r, y.begin() + r + m);
      b.add(x.middleRows(r, m), yy);
      r += m;
      step = step * 2 + 1;
    }
    a.merge(b);
    CHECK(a.total_count() == n);
    CHECK(a.counts() == one.counts());
    CHECK(rel_err(a.means(), one.means()) < 1e-12);
    CHECK(rel_err(a.within_scatter(), one.within_scatter()) < 1e-12);
    CHECK(rel_err(a.class_sq_deviations(), one.class_sq_deviations()) < 1e-12);
  }
}

TEST_CASE("ClassStats: count-weighted class means give the global mean; Sigma_W is symmetric PSD", "[stats]") {
  std::vector<int> y;
  const Index C = 11, d = 20;
  const MatrixF x = mixture(3000, d, C, y, 3).cast<float>();
  nc::ClassStats s(C, d);
  s.add(x, y);
  Eigen::VectorXd weighted = Eigen::VectorXd::Zero(d);
  for (Index c = 0; c < C; ++c) weighted += double(s.counts()[c]) * s.means().row(c).transpose();
  weighted /= double(s.total_count());
  const Eigen::VectorXd direct = x.cast<double>().colwise().mean().transpose();
  CHECK(rel_err(weighted, direct) < 1e-12);
  CHECK(rel_err(s.global_mean(), direct) < 1e-12);

  const MatrixD sw = s.within_covariance();
  CHECK((sw - sw.transpose()).norm() == 0.0);
  Eigen::SelfAdjointEigenSolver<MatrixD> es(sw);
  CHECK(es.eigenvalues().minCoeff() > -1e-12 * es.eigenvalues().maxCoeff());
}

TEST_CASE("ClassStats from float features agrees with float64 to 1e-5", "[stats]") {
  std::vector<int> y;
  const Index C = 10, d = 64;
  const MatrixF x = (mixture(20000, d, C, y, 4).array() + 5.0).cast<float>().matrix();
  const Reference ref = reference(x, y, C);
  nc::ClassStats s(C, d);
  s.add(x, y);
  CHECK(rel_err(s.means(), ref.means) < 1e-5);
  CHECK(rel_err(s.within_covariance(), ref.sw) < 1e-5);
  CHECK(rel_err(s.between_covariance(), ref.sb) < 1e-5);
}

TEST_CASE("ClassStats: results do not depend on the thread count", "[stats]") {
  std::vector<int> y;
  const MatrixF x = mixture(5000, 32, 6, y, 5).cast<float>();
  nc::ClassStats a(6, 32, {true, 1}), b(6, 32, {true, 2});
  a.add(x, y);
  b.add(x, y);
  CHECK(a.within_scatter() == b.within_scatter());
  CHECK(a.means() == b.means());
}

TEST_CASE("ClassStats: int64 labels, Eigen label vectors, empty classes, options", "[stats]") {
  std::vector<int> y32;
  const MatrixD x = mixture(200, 4, 3, y32, 6);
  std::vector<int64_t> y64(y32.begin(), y32.end());
  Eigen::Matrix<int32_t, Eigen::Dynamic, 1> ye = Eigen::Map<Eigen::VectorXi>(y32.data(), y32.size());
  nc::ClassStats a(5, 4), b(5, 4), c(5, 4);
  a.add(x, y32);
  b.add(x, y64);
  c.add(x, ye);
  CHECK(a.means() == b.means());
  CHECK(a.means() == c.means());
  CHECK(a.num_nonempty_classes() == 3);
  CHECK(a.counts()[3] == 0);
  CHECK(a.means().row(4).norm() == 0.0);
  CHECK(std::isnan(a.class_variances()[4]));

  nc::ClassStats light(5, 4, {false});
  light.add(x, y32);
  CHECK(light.means() == a.means());
  CHECK_THROWS_AS(light.within_covariance(), nc::error);
  CHECK_THROWS_AS(a.merge(light), nc::error);
}

TEST_CASE("ClassStats rejects bad input and leaves its state untouched", "[stats][errors]") {
  std::vector<int> y;
  MatrixD x = mixture(50, 3, 2, y, 7);
  nc::ClassStats s(2, 3);
  s.add(x, y);
  const MatrixD before = s.means();

  std::vector<int> bad = y;
  bad[17] = 2;
  CHECK_THROWS_WITH(s.add(x, bad), Catch::Contains("label 2 at row 17"));
  bad[17] = -1;
  CHECK_THROWS_WITH(s.add(x, bad), Catch::Contains("negative label -1 at row 17"));
  MatrixD xn = x;
  xn(23, 1) = std::nan("");
  CHECK_THROWS_WITH(s.add(xn, y), Catch::Contains("row 23"));
  xn(23, 1) = INFINITY;
  CHECK_THROWS_WITH(s.add(xn, y), Catch::Contains("row 23"));
  CHECK_THROWS_WITH(s.add(MatrixD(50, 4), y), Catch::Contains("4 columns"));
  std::vector<int> shorter(y.begin(), y.end() - 1);
  CHECK_THROWS_WITH(s.add(x, shorter), Catch::Contains("49 entries"));
  CHECK_THROWS_AS(s.add(MatrixD(0, 3), std::vector<int>{}), nc::error);
  CHECK_THROWS_AS(nc::ClassStats(0, 3), nc::error);
  CHECK_THROWS_AS(nc::ClassStats(2, 3).global_mean(), nc::error);
  CHECK(s.total_count() == 50);
  CHECK(s.means() == before);
}

TEST_CASE("ClassStats on real data (Omniglot pixels) matches the reference", "[stats][real]") {
  const RealData r = load_omniglot();
  REQUIRE(r.x.rows() == 4840);
  REQUIRE(r.x.cols() == 784);
  const Reference ref = reference(r.x, r.labels, 242);
  nc::ClassStats s(242, 784);
  s.add(r.x.cast<float>(), r.labels);
  CHECK(rel_err(s.means(), ref.means) < 1e-6);
  CHECK(rel_err(s.within_covariance(), ref.sw) < 1e-5);
  CHECK(rel_err(s.between_covariance(), ref.sb) < 1e-5);
}

}  // namespace test_stats
