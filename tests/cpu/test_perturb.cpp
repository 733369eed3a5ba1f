#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <set>

#include <nc/core/rng.hpp>
#include <nc/perturb.hpp>

#include "support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_perturb {

using namespace nct;

TEST_CASE("perturb adds sigma * Philox noise and restores the clean weights bitwise", "[perturb]") {
  MatrixF w(5, 7);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = std::sin(float(i)) * 0.3f;
  const MatrixF clean = w;
  nc::Perturbation pert({0.01, nc::Schedule::constant, 0, /*seed=*/42});
  {
    auto guard = pert.perturb(w, 3);
    for (Index c = 0; c < 5; ++c)
      for (Index j = 0; j < 7; ++j) {
        const float expected = clean(c, j) + float(0.01 * nc::gaussian(42, 3, uint64_t(c), uint64_t(j)));
        CHECK(w(c, j) == expected);
      }
    CHECK(guard.clean() == clean);
  }
  CHECK(std::memcmp(w.data(), clean.data(), sizeof(float) * w.size()) == 0);

  // Early restore, then the destructor does nothing more.
  {
    auto guard = pert.perturb(w, 4);
    CHECK(w != clean);
    guard.restore();
    CHECK(w == clean);
    w(0, 0) = 9.0f;  // a write after restore survives the guard's end
  }
  CHECK(w(0, 0) == 9.0f);
}

TEST_CASE("perturb works on blocks and maps of caller memory, float and double", "[perturb]") {
  std::vector<float> buf(6 * 10, 1.0f);
  Eigen::Map<MatrixF> m(buf.data(), 6, 10);
  nc::Perturbation pert({0.5});
  {
    auto g = pert.perturb(m.middleRows(1, 3), 0);
    CHECK(m.row(0).isOnes());
    CHECK(m.row(4).isOnes());
    CHECK(!m.row(1).isOnes());
  }
  CHECK(m.isOnes());
  MatrixD wd = MatrixD::Zero(3, 3);
  {
    auto g = pert.perturb(wd, 1);
    CHECK(wd.norm() > 0);
  }
  CHECK(wd.norm() == 0);
}

TEST_CASE("noise is fresh per step and per class, and has the requested moments", "[perturb]") {
  nc::Perturbation pert({0.1, nc::Schedule::constant, 0, 7});
  const MatrixF a = pert.noise<float>(4, 8, 0), b = pert.noise<float>(4, 8, 1);
  CHECK((a - b).norm() > 0.1f);
  for (Index c = 1; c < 4; ++c) CHECK((a.row(c) - a.row(0)).norm() > 0.01f);

  // Sample moments of many draws (fixed seed): mean 0, variance sigma^2, no correlation across steps.
  const Index C = 100, D = 64;
  double s = 0, s2 = 0, cross = 0;
  const int steps = 50;
  MatrixD prev;
  for (int t = 0; t < steps; ++t) {
    const MatrixD e = pert.noise<double>(C, D, t);
    s += e.sum();
    s2 += e.squaredNorm();
    if (t) cross += e.cwiseProduct(prev).sum();
    prev = e;
  }
  const double n = double(C * D * steps);
  CHECK(std::abs(s / n) < 5 * 0.1 / std::sqrt(n));
  CHECK(std::abs(s2 / n / 0.01 - 1) < 5 * std::sqrt(2.0 / n));
  CHECK(std::abs(cross / (C * D * (steps - 1)) / 0.01) < 5 / std::sqrt(double(C * D * (steps - 1))));
}

TEST_CASE("the same seed gives the same noise with 1 or 2 threads", "[perturb]") {
  nc::PerturbOptions o{0.02, nc::Schedule::constant, 0, 99, 1};
  nc::PerturbOptions o2 = o;
  o2.threads = 2;
  CHECK(nc::Perturbation(o).noise<float>(257, 33, 12) == nc::Perturbation(o2).noise<float>(257, 33, 12));
  nc::PerturbOptions other = o;
  other.seed = 100;
  CHECK(nc::Perturbation(other).noise<float>(5, 5, 12) != nc::Perturbation(o).noise<float>(5, 5, 12));
}

TEST_CASE("sigma schedules", "[perturb]") {
  nc::Perturbation c({0.1});
  CHECK(c.sigma_at(0) == 0.1);
  CHECK(c.sigma_at(1000000) == 0.1);
  nc::Perturbation lin({0.1, nc::Schedule::linear, 100});
  CHECK(lin.sigma_at(0) == Approx(0.1));
  CHECK(lin.sigma_at(25) == Approx(0.075));
  CHECK(lin.sigma_at(100) == 0.0);
  CHECK(lin.sigma_at(200) == 0.0);
  nc::Perturbation cosine({0.1, nc::Schedule::cosine, 100});
  CHECK(cosine.sigma_at(0) == Approx(0.1));
  CHECK(cosine.sigma_at(50) == Approx(0.05));
  CHECK(cosine.sigma_at(100) == Approx(0.0).margin(1e-15));
  MatrixF w = MatrixF::Ones(2, 2);
  { auto g = lin.perturb(w, 100); CHECK(w.isOnes()); }  // sigma 0: nothing added
}

TEST_CASE("Perturbation rejects bad options and writes nothing", "[perturb][errors]") {
  CHECK_THROWS_WITH(nc::Perturbation({-1.0}), Catch::Contains("sigma") && Catch::Contains("-1"));
  CHECK_THROWS_AS(nc::Perturbation({NAN}), nc::error);
  CHECK_THROWS_WITH(nc::Perturbation({0.1, nc::Schedule::cosine, 0}), Catch::Contains("total_steps"));
  nc::Perturbation p({0.1});
  MatrixF w = MatrixF::Ones(2, 3);
  CHECK_THROWS_WITH((void)p.perturb(w, -1), Catch::Contains("step") && Catch::Contains("-1"));
  CHECK(w.isOnes());
}

}  // namespace test_perturb
