#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include <nc/directions.hpp>
#include <nc/head.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_head {

using namespace nct;

namespace {
MatrixD etf_gram(Index C) {
  return MatrixD::Identity(C, C) * (double(C) / (C - 1)) - MatrixD::Ones(C, C) / double(C - 1);
}
}  // namespace

TEST_CASE("init_head(features, labels) defaults to the NC-Init directions", "[head]") {
  std::vector<int> y;
  const MatrixF x = mixture(400, 16, 5, y, 21).cast<float>();
  const MatrixF w = nc::init_head(x, y);
  CHECK(w == nc::nc_directions(x, y));
  nc::HeadOptions o;
  o.scale = 3.0;
  const MatrixF w3 = nc::init_head(x, y, o);
  CHECK((w3 - 3.0f * w).norm() < 1e-5);
  o = {};
  o.method = nc::HeadInit::class_mean;
  nc::DirectionOptions d;
  d.method = nc::Direction::mean;
  CHECK(nc::init_head(x, y, o) == nc::nc_directions(x, y, d));
  o.method = nc::HeadInit::centered_mean;
  d.method = nc::Direction::centered_mean;
  CHECK(nc::init_head(x, y, o) == nc::nc_directions(x, y, d));
}

TEST_CASE("simplex_etf: Gram is C/(C-1) I - 1/(C-1) 11^T", "[head]") {
  for (Index C : {2, 3, 10, 50}) {
    for (Index D : {C - 1, C + 7, Index(128)}) {
      if (D < C - 1) continue;
      const MatrixF w = nc::init_head(C, D, {nc::HeadInit::simplex_etf, 1.0, 5});
      const MatrixD g = w.cast<double>() * w.cast<double>().transpose();
      CHECK((g - etf_gram(C)).cwiseAbs().maxCoeff() < 1e-6);
    }
  }
  // Different seeds give different rotations of the same Gram.
  const MatrixF a = nc::init_head(10, 32, {nc::HeadInit::simplex_etf, 1.0, 1});
  const MatrixF b = nc::init_head(10, 32, {nc::HeadInit::simplex_etf, 1.0, 2});
  CHECK((a - b).norm() > 0.1);
  CHECK_THROWS_WITH(nc::init_head(10, 8, {nc::HeadInit::simplex_etf}), Catch::Contains("dim = 8"));
  CHECK_THROWS_AS(nc::init_head(1, 8, {nc::HeadInit::simplex_etf}), nc::error);
}

TEST_CASE("aligned_etf is an ETF and matches the class directions at least as well as random rotations", "[head]") {
  std::vector<int> y;
  const Index C = 8, D = 20;
  const MatrixF x = mixture(800, D, C, y, 22).cast<float>();
  nc::HeadOptions o;
  o.method = nc::HeadInit::aligned_etf;
  const MatrixD w = nc::init_head(x, y, o).cast<double>();
  CHECK((w * w.transpose() - etf_gram(C)).cwiseAbs().maxCoeff() < 1e-6);
  const MatrixD v = nc::nc_directions(x, y).cast<double>();
  const double aligned = (w.cwiseProduct(v)).sum();
  for (uint64_t seed = 0; seed < 100; ++seed) {
    const MatrixD r = nc::init_head(C, D, {nc::HeadInit::simplex_etf, 1.0, seed}).cast<double>();
    CHECK(aligned >= r.cwiseProduct(v).sum() - 1e-9);
  }
}

TEST_CASE("kaiming_normal (fan_out) and xavier_uniform have the torch distributions", "[head]") {
  const Index C = 200, D = 500;
  const MatrixD k = nc::init_head(C, D, {nc::HeadInit::kaiming_normal, 1.0, 3}).cast<double>();
  const double n = double(C * D);
  const double var = k.squaredNorm() / n, mean = k.sum() / n;
  CHECK(std::abs(mean) < 5 * std::sqrt(2.0 / C / n));
  CHECK(std::abs(var / (2.0 / C) - 1) < 5 * std::sqrt(2.0 / n));

  const MatrixD u = nc::init_head(C, D, {nc::HeadInit::xavier_uniform, 1.0, 3}).cast<double>();
  const double b = std::sqrt(6.0 / (C + D));
  CHECK(u.maxCoeff() <= b);
  CHECK(u.minCoeff() >= -b);
  CHECK(u.maxCoeff() > 0.99 * b);
  CHECK(std::abs(u.squaredNorm() / n / (b * b / 3) - 1) < 0.02);

  // Seeded: same seed same head; the data overload gives the same random head.
  CHECK(nc::init_head(C, D, {nc::HeadInit::kaiming_normal, 1.0, 3}) ==
        nc::init_head(C, D, {nc::HeadInit::kaiming_normal, 1.0, 3}));
  std::vector<int> y;
  const MatrixF x = mixture(300, D, C, y, 23).cast<float>();
  CHECK(nc::init_head(x, y, {nc::HeadInit::kaiming_normal, 1.0, 3}) ==
        nc::init_head(C, D, {nc::HeadInit::kaiming_normal, 1.0, 3}));
}

TEST_CASE("init_head rejects bad input", "[head][errors]") {
  std::vector<int> y;
  const MatrixF x = mixture(30, 4, 3, y, 24).cast<float>();
  CHECK_THROWS_WITH(nc::init_head(3, 4, {nc::HeadInit::nc_pc1}), Catch::Contains("needs features and labels"));
  CHECK_THROWS_WITH(nc::init_head(x, y, {nc::HeadInit::nc_pc1, -1.0}), Catch::Contains("scale"));
  CHECK_THROWS_AS(nc::init_head(0, 4, {nc::HeadInit::kaiming_normal}), nc::error);
  nc::HeadOptions o;
  o.num_classes = 2;
  CHECK_THROWS_WITH(nc::init_head(x, y, o), Catch::Contains("out of range"));
  o.num_classes = 4;
  CHECK_THROWS_WITH(nc::init_head(x, y, o), Catch::Contains("3") && Catch::Contains("no samples"));
}

}  // namespace test_head
