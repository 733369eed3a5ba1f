// ncml: counter-based random numbers (Philox4x32-10, Salmon et al. 2011) with a
// Box-Muller Gaussian transform.
//
// A draw is a pure function of (seed, step, row, component): no generator state, so noise
// is the same for any thread count, any iteration order, and on the GPU, which includes this
// header from device code. One Philox block yields four 32-bit words and so four Gaussians;
// component j uses word j % 4 of the block whose counter is (j / 4, row, step_lo, step_hi).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define NC_HOST_DEVICE __host__ __device__
#else
#define NC_HOST_DEVICE
#endif

namespace nc {

struct Philox4x32 {
  uint32_t v[4];
};

/// Philox4x32 with 10 rounds on counter `ctr` and key `key`.
NC_HOST_DEVICE inline Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t(M0) * ctr.v[0];
    const uint64_t p1 = uint64_t(M1) * ctr.v[2];
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    Philox4x32 next;
    next.v[0] = hi1 ^ ctr.v[1] ^ k0;
    next.v[1] = lo1;
    next.v[2] = hi0 ^ ctr.v[3] ^ k1;
    next.v[3] = lo0;
    ctr = next;
    k0 += W0;
    k1 += W1;
  }
  return ctr;
}

/// Uniform in the open interval (0, 1) from 32 random bits.
NC_HOST_DEVICE inline double uniform_open01(uint32_t x) {
  return (double(x) + 0.5) * (1.0 / 4294967296.0);
}

/// Four independent N(0, 1) draws for block `block` of (seed, step, row).
NC_HOST_DEVICE inline void gaussian4(uint64_t seed, uint64_t step, uint64_t row, uint64_t block,
                                     double out[4]) {
  Philox4x32 ctr;
  ctr.v[0] = uint32_t(block);
  ctr.v[1] = uint32_t(row) ^ uint32_t(block >> 32) * 0x9E3779B9u;
  ctr.v[2] = uint32_t(step);
  ctr.v[3] = uint32_t(step >> 32) ^ uint32_t(row >> 32) * 0x85EBCA6Bu;
  const Philox4x32 r = philox4x32_10(ctr, uint32_t(seed), uint32_t(seed >> 32));
  constexpr double two_pi = 6.283185307179586476925286766559;
  for (int h = 0; h < 2; ++h) {
    const double u1 = uniform_open01(r.v[2 * h]);
    const double u2 = uniform_open01(r.v[2 * h + 1]);
    const double rad = sqrt(-2.0 * log(u1));
    out[2 * h] = rad * cos(two_pi * u2);
    out[2 * h + 1] = rad * sin(two_pi * u2);
  }
}

/// One N(0, 1) draw keyed by (seed, step, row, component).
NC_HOST_DEVICE inline double gaussian(uint64_t seed, uint64_t step, uint64_t row,
                                      uint64_t component) {
  double g[4];
  gaussian4(seed, step, row, component / 4, g);
  return g[component % 4];
}

/// One uniform draw in (0, 1) keyed by (seed, step, row, component).
NC_HOST_DEVICE inline double uniform(uint64_t seed, uint64_t step, uint64_t row,
                                     uint64_t component) {
  Philox4x32 ctr;
  ctr.v[0] = uint32_t(component / 4);
  ctr.v[1] = uint32_t(row) ^ uint32_t(component >> 34) * 0x9E3779B9u;
  ctr.v[2] = uint32_t(step);
  ctr.v[3] = uint32_t(step >> 32) ^ uint32_t(row >> 32) * 0x85EBCA6Bu;
  const Philox4x32 r = philox4x32_10(ctr, uint32_t(seed), uint32_t(seed >> 32) ^ 0x5bd1e995u);
  return uniform_open01(r.v[component % 4]);
}

}  // namespace nc
