// ncml kernels: shared device helpers (status reporting, warp reductions, ranking keys).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

// Kernels that are not templates get internal linkage, so that several translation units
// of one program may include these headers.
#ifndef NC_KERNEL
#define NC_KERNEL static __global__
#endif

namespace nc::cuda::kernels {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned long long kNone = ~0ull;

/// Invalid input found on the device. Each slot holds the smallest offending position
/// (row * cols + col for features, the row for labels) or kNone; the host turns the first
/// one into nc::error. Slots: 0, 1 features (queries, gallery), 2, 3 labels (query, gallery),
/// 4 a class whose count disagrees with given statistics.
struct DeviceStatus {
  unsigned long long bad[5];
  long long max_label[2];
};

__device__ __forceinline__ void report(DeviceStatus* st, int slot, unsigned long long pos) {
  if (st) atomicMin(&st->bad[slot], pos);
}

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x & 31u); }

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long w = __shfl_xor_sync(kFullMask, v, o);
    v = w > v ? w : v;
  }
  return v;
}

/// Inclusive prefix sum over the warp.
__device__ __forceinline__ int warp_inclusive_scan(int v) {
  const int lane = lane_id();
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int w = __shfl_up_sync(kFullMask, v, o);
    if (lane >= o) v += w;
  }
  return v;
}

__device__ __forceinline__ unsigned lanemask_lt() {
  unsigned m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

__device__ __forceinline__ bool finite(float v) { return isfinite(v); }

// ---------------------------------------------------------------------------------------
// Ranking keys. A candidate (score s, gallery index g) becomes the 64-bit key
//   (~ordered(s) << 32) | g,
// where ordered() maps floats to unsigned integers in increasing order. Keys sort ascending
// in ranking order: higher score first, ties by lower index. -0 is folded into +0 so that
// equal scores compare equal, as on the CPU. Scores are never NaN here (inputs are checked).

__host__ __device__ __forceinline__ unsigned ordered_bits(float s) {
  unsigned u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(s + 0.0f);
#else
  const float t = s + 0.0f;
  __builtin_memcpy(&u, &t, sizeof u);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__host__ __device__ __forceinline__ unsigned long long make_key(float s, unsigned g) {
  return (static_cast<unsigned long long>(~ordered_bits(s)) << 32) | g;
}

__host__ __device__ __forceinline__ float key_score(unsigned long long key) {
  const unsigned ord = ~static_cast<unsigned>(key >> 32);
  const unsigned u = (ord & 0x80000000u) ? (ord & 0x7fffffffu) : ~ord;
  float s;
#if defined(__CUDA_ARCH__)
  s = __uint_as_float(u);
#else
  __builtin_memcpy(&s, &u, sizeof s);
#endif
  return s;
}

__host__ __device__ __forceinline__ unsigned key_index(unsigned long long key) {
  return static_cast<unsigned>(key & 0xffffffffull);
}

/// -||q - g||^2 from a dot product and squared norms, exactly as the CPU forms it (2 * dot
/// is exact, so a fused multiply-add gives the same value).
__device__ __forceinline__ float l2_score(float dot, float qn, float gn) {
  return 0.0f - fmaxf((qn + gn) - 2.0f * dot, 0.0f);
}

/// Round to the nearest TF32 value (10 explicit mantissa bits), as the tensor cores read it.
__device__ __forceinline__ float round_tf32(float x) {
  unsigned u;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
  return __uint_as_float(u);
}

}  // namespace nc::cuda::kernels
