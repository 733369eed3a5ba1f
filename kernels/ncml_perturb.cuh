// ncml kernels: perturbation noise. The draws are those of nc::Perturbation on the CPU: the
// same Philox4x32-10 counter (seed, step, row, column / 4) and Box-Muller transform from
// nc/core/rng.hpp, evaluated in float64 and rounded to float after scaling by sigma.
#pragma once

#include <nc/core/rng.hpp>

#include "ncml_common.cuh"

namespace nc::cuda::kernels {

/// w[r, j] (+)= float(sigma * g(seed, step, r, j)) for r < rows, j < cols; `add` = 0 writes
/// the noise itself. One thread per block of four columns of one row.
NC_KERNEL void perturb_rows(float* __restrict__ w, long long ldw, long long rows, long long cols,
                             unsigned long long seed, unsigned long long step, double sigma,
                             int add) {
  const long long quads = (cols + 3) / 4;
  const long long total = rows * quads;
  for (long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = t / quads, q = t % quads;
    double g[4];
    ::nc::gaussian4(seed, step, static_cast<uint64_t>(r), static_cast<uint64_t>(q), g);
    float* row = w + r * ldw;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const long long j = q * 4 + e;
      if (j >= cols) break;
      const float noise = static_cast<float>(sigma * g[e]);
      row[j] = add ? row[j] + noise : noise;
    }
  }
}

}  // namespace nc::cuda::kernels
