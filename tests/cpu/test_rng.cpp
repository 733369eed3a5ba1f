#include <catch2/catch.hpp>

#include <cmath>
#include <set>

#include <nc/core/rng.hpp>

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_rng {

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors", "[rng]") {
  // kat_vectors of Random123 (D. E. Shaw Research): philox4x32 with 10 rounds.
  {
    const nc::Philox4x32 r = nc::philox4x32_10({{0, 0, 0, 0}}, 0, 0);
    CHECK(r.v[0] == 0x6627e8d5u);
    CHECK(r.v[1] == 0xe169c58du);
    CHECK(r.v[2] == 0xbc57ac4cu);
    CHECK(r.v[3] == 0x9b00dbd8u);
  }
  {
    const nc::Philox4x32 r =
        nc::philox4x32_10({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu);
    CHECK(r.v[0] == 0x408f276du);
    CHECK(r.v[1] == 0x41c83b0eu);
    CHECK(r.v[2] == 0xa20bc7c6u);
    CHECK(r.v[3] == 0x6d5451fdu);
  }
  {
    const nc::Philox4x32 r =
        nc::philox4x32_10({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u);
    CHECK(r.v[0] == 0xd16cfe09u);
    CHECK(r.v[1] == 0x94fdccebu);
    CHECK(r.v[2] == 0x5001e420u);
    CHECK(r.v[3] == 0x24126ea1u);
  }
}

TEST_CASE("Gaussian draws: moments, independence of keys, purity", "[rng]") {
  const int n = 200000;
  double s = 0, s2 = 0, s4 = 0;
  for (int i = 0; i < n; ++i) {
    const double g = nc::gaussian(7, 3, uint64_t(i / 64), uint64_t(i % 64));
    s += g;
    s2 += g * g;
    s4 += g * g * g * g;
  }
  const double mean = s / n, var = s2 / n - mean * mean, kurt = s4 / n;
  // Fixed seed; bounds are ~5 standard errors of each estimator.
  CHECK(std::abs(mean) < 5 * std::sqrt(1.0 / n));
  CHECK(std::abs(var - 1) < 5 * std::sqrt(2.0 / n));
  CHECK(std::abs(kurt - 3) < 5 * std::sqrt(96.0 / n));

  // Same key, same value; any key component changes it.
  const double g0 = nc::gaussian(1, 2, 3, 4);
  CHECK(nc::gaussian(1, 2, 3, 4) == g0);
  std::set<double> distinct = {g0, nc::gaussian(2, 2, 3, 4), nc::gaussian(1, 3, 3, 4),
                               nc::gaussian(1, 2, 4, 4), nc::gaussian(1, 2, 3, 5),
                               nc::gaussian(1, 2, 3, 4 + (uint64_t(1) << 40)),
                               nc::gaussian(1, 2, 3 + (uint64_t(1) << 40), 4)};
  CHECK(distinct.size() == 7);

  // Neighbouring components are uncorrelated.
  double cross = 0;
  for (int i = 0; i < n; ++i) cross += nc::gaussian(9, 0, uint64_t(i), 0) * nc::gaussian(9, 0, uint64_t(i), 1);
  CHECK(std::abs(cross / n) < 5 * std::sqrt(1.0 / n));
}

TEST_CASE("Uniform draws lie in (0, 1) with mean 1/2", "[rng]") {
  const int n = 100000;
  double s = 0;
  for (int i = 0; i < n; ++i) {
    const double u = nc::uniform(5, 0, uint64_t(i), 1);
    REQUIRE(u > 0.0);
    REQUIRE(u < 1.0);
    s += u;
  }
  CHECK(std::abs(s / n - 0.5) < 5 * std::sqrt(1.0 / 12 / n));
}

}  // namespace test_rng
