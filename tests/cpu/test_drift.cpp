#include <catch2/catch.hpp>

#include <cmath>

#include <nc/drift.hpp>
#include <nc/head.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_drift {

using namespace nct;

TEST_CASE("drift of random unit directions in D=512 is near 2; zero for W = reference", "[drift]") {
  const MatrixF ref = nc::init_head(100, 512, {nc::HeadInit::kaiming_normal, 1.0, 1});
  nc::DriftTracker d(ref);
  d.update(ref * 5.0f);  // scale does not matter: rows are normalized
  CHECK(d.mean_squared_distance() < 1e-12);
  d.update(nc::init_head(100, 512, {nc::HeadInit::xavier_uniform, 1.0, 2}));
  CHECK(std::abs(d.mean_squared_distance() - 2.0) < 0.05);
  d.update(-ref);
  CHECK(d.mean_squared_distance() == Approx(4.0));
}

TEST_CASE("drift per class, from_initial and path_length against direct formulas", "[drift]") {
  MatrixF ref(2, 2);
  ref << 1, 0, 0, 2;
  nc::DriftTracker d(ref);
  MatrixF w0(2, 2), w1(2, 2), w2(2, 2);
  w0 << 1, 0, 0, 1;
  w1 << 1, 1, 0, 1;
  w2 << 0, 1, 0, 1;
  d.update(w0);
  d.update(w1);
  d.update(w2);
  const Eigen::VectorXd pc = d.per_class();
  CHECK(pc[0] == Approx(2.0));  // (0,1) vs (1,0)
  CHECK(pc[1] == Approx(0.0).margin(1e-15));
  CHECK(d.mean_squared_distance() == Approx(1.0));
  CHECK(d.from_initial() == Approx((w2 - w0).norm() / w0.norm()));
  CHECK(d.path_length() == Approx((w1 - w0).norm() + (w2 - w1).norm()));
  CHECK(d.num_updates() == 3);
}

TEST_CASE("DriftTracker rejects bad input", "[drift][errors]") {
  MatrixF ref = MatrixF::Identity(3, 3);
  nc::DriftTracker d(ref);
  CHECK_THROWS_WITH(d.mean_squared_distance(), Catch::Contains("update"));
  CHECK_THROWS_WITH(d.update(MatrixF::Ones(2, 3)), Catch::Contains("2 x 3"));
  MatrixF z = ref;
  z.row(1).setZero();
  CHECK_THROWS_WITH(d.update(z), Catch::Contains("rows 1"));
  CHECK(d.num_updates() == 0);
  CHECK_THROWS_AS(nc::DriftTracker(z), nc::error);
  MatrixF n = ref;
  n(2, 2) = NAN;
  CHECK_THROWS_WITH(d.update(n), Catch::Contains("row 2"));
}

}  // namespace test_drift
