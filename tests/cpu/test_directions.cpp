#include <catch2/catch.hpp>

#include <Eigen/SVD>
#include <cmath>
#include <vector>

#include <nc/directions.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_directions {

using namespace nct;

namespace {
// Reference: top right singular vector of the class block from Eigen's JacobiSVD, signed to
// the class mean.
Eigen::VectorXd svd_pc1(const MatrixD& x, const std::vector<int>& y, int c) {
  std::vector<Index> rows;
  for (Index i = 0; i < x.rows(); ++i)
    if (y[i] == c) rows.push_back(i);
  Eigen::MatrixXd e(rows.size(), x.cols());
  for (std::size_t k = 0; k < rows.size(); ++k) e.row(k) = x.row(rows[k]);
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(e, Eigen::ComputeThinV);
  Eigen::VectorXd v = svd.matrixV().col(0);
  if (v.dot(e.colwise().mean().transpose()) < 0) v = -v;
  return v;
}

// Angle between a and b, accurate for tiny angles (acos is not: 1.5e-8 resolution).
double angle(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  return 2 * std::asin(std::min(1.0, (a.normalized() - b.normalized()).norm() / 2));
}
}  // namespace

TEST_CASE("pc1 equals the top right singular vector of each class block", "[directions]") {
  // Covers the Gram route (n_c < D), the D x D route, the exact eigensolver (small) and the
  // power iteration (n_c and D above the exact limit).
  struct Case { Index n, d, C; };
  for (const Case cs : {Case{60, 5, 3}, Case{40, 30, 4}, Case{1500, 300, 3}, Case{900, 400, 3}}) {
    std::vector<int> y;
    const MatrixD x = mixture(cs.n, cs.d, cs.C, y, 11 + cs.d, 3.0, 1.0);
    const MatrixD v = nc::nc_directions(x, y);
    REQUIRE(v.rows() == cs.C);
    REQUIRE(v.cols() == cs.d);
    for (int c = 0; c < cs.C; ++c) {
      CHECK(std::abs(v.row(c).norm() - 1.0) < 1e-12);
      CHECK(angle(v.row(c).transpose(), svd_pc1(x, y, c)) < 1e-6);
    }
  }
}

TEST_CASE("pc1: one-sample class gives the sample's direction; sign points to the data", "[directions]") {
  MatrixD x(4, 3);
  x << 1, 2, 2,     // class 0, alone
      -1, -1, 0,    // class 1
      -2, -2.2, 0.1,
      -3, -2.9, -0.1;
  std::vector<int> y = {0, 1, 1, 1};
  const MatrixD v = nc::nc_directions(x, y);
  CHECK(rel_err(v.row(0), Eigen::RowVector3d(1, 2, 2) / 3.0) < 1e-15);
  const Eigen::RowVector3d mean1 = x.bottomRows(3).colwise().mean();
  CHECK(v.row(1).dot(mean1) > 0);
}

TEST_CASE("mean and centered_mean directions", "[directions]") {
  std::vector<int> y;
  const MatrixD x = mixture(300, 6, 4, y, 12);
  nc::DirectionOptions o;
  o.method = nc::Direction::mean;
  const MatrixD m = nc::nc_directions(x, y, o);
  o.method = nc::Direction::centered_mean;
  const MatrixD cm = nc::nc_directions(x, y, o);
  const Eigen::RowVectorXd g = x.colwise().mean();
  for (int c = 0; c < 4; ++c) {
    Eigen::RowVectorXd mu = Eigen::RowVectorXd::Zero(6);
    int n = 0;
    for (Index i = 0; i < x.rows(); ++i)
      if (y[i] == c) { mu += x.row(i); ++n; }
    mu /= n;
    CHECK(rel_err(m.row(c), mu.normalized()) < 1e-12);
    CHECK(rel_err(cm.row(c), (mu - g).normalized()) < 1e-12);
  }
}

TEST_CASE("nc_directions: float features, thread counts, real data", "[directions][real]") {
  const RealData r = load_omniglot();
  const MatrixF xf = r.x.cast<float>();
  nc::DirectionOptions one, two;
  one.threads = 1;
  two.threads = 2;
  const MatrixF a = nc::nc_directions(xf, r.labels, one);
  const MatrixF b = nc::nc_directions(xf, r.labels, two);
  CHECK(a == b);
  for (int c : {0, 100, 241}) CHECK(angle(a.row(c).cast<double>().transpose(), svd_pc1(r.x, r.labels, c)) < 1e-4);
}

TEST_CASE("nc_directions rejects bad input", "[directions][errors]") {
  std::vector<int> y;
  MatrixD x = mixture(20, 3, 2, y, 13);
  nc::DirectionOptions o;
  o.num_classes = 5;
  CHECK_THROWS_WITH(nc::nc_directions(x, y, o), Catch::Contains("2, 3, 4") && Catch::Contains("no samples"));
  x(4, 0) = NAN;
  CHECK_THROWS_WITH(nc::nc_directions(x, y), Catch::Contains("row 4"));
  x(4, 0) = 0;
  std::vector<int> bad = y;
  bad[3] = -2;
  CHECK_THROWS_WITH(nc::nc_directions(x, bad), Catch::Contains("row 3"));
  MatrixD zeros = MatrixD::Zero(4, 3);
  CHECK_THROWS_WITH(nc::nc_directions(zeros, std::vector<int>{0, 0, 1, 1}), Catch::Contains("0, 1"));
  o.num_classes = -1;
  o.method = nc::Direction::centered_mean;
  CHECK_THROWS_AS(nc::nc_directions(x, std::vector<int>(20, 0), o), nc::error);
}

}  // namespace test_directions
