// ncml: the filter of the kNN engine. A run of one query's scores (a tile column) is compared
// with the query's threshold, re-read every vector so that a threshold raised by the sink
// while the run is scanned applies at once, and only entries that pass reach the sink. NaN
// marks entries that must never pass (the query's own row); every compare is ordered, so NaN
// fails it.
#pragma once

#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "../../core/types.hpp"

namespace nc::detail::knn {

inline int count_trailing_zeros(uint32_t x) {
#if defined(_MSC_VER) && !defined(__clang__)
  unsigned long i;
  _BitScanForward(&i, x);
  return static_cast<int>(i);
#else
  return __builtin_ctz(x);
#endif
}

/// Calls hit(a) for each a < n with x[a] >= thr (thr read again for every vector of x).
template <class Hit>
inline void scan_run(const float* x, Index n, const float& thr, Hit&& hit) {
  Index a = 0;
  auto each_bit = [&](uint32_t mask, Index base) {
    while (mask) {
      hit(base + count_trailing_zeros(mask));
      mask &= mask - 1;
    }
  };
#if defined(__AVX512F__)
  for (; a + 16 <= n; a += 16)
    each_bit(_mm512_cmp_ps_mask(_mm512_loadu_ps(x + a), _mm512_set1_ps(thr), _CMP_GE_OQ), a);
#elif defined(__AVX__)
  for (; a + 8 <= n; a += 8)
    each_bit(static_cast<uint32_t>(_mm256_movemask_ps(
                 _mm256_cmp_ps(_mm256_loadu_ps(x + a), _mm256_set1_ps(thr), _CMP_GE_OQ))),
             a);
#elif defined(__SSE2__) || defined(_M_X64)
  for (; a + 4 <= n; a += 4)
    each_bit(static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + a), _mm_set1_ps(thr)))), a);
#endif
  for (; a < n; ++a)
    if (x[a] >= thr) hit(a);
}

/// t[b + a * ldt] = c[a + b * ldc] for a < m, b < n, in cache-sized blocks.
inline void transpose_tile(const float* c, Index ldc, Index m, Index n, float* t, Index ldt) {
  constexpr Index kBlock = 32;
  for (Index b0 = 0; b0 < n; b0 += kBlock)
    for (Index a0 = 0; a0 < m; a0 += kBlock) {
      const Index b1 = b0 + kBlock < n ? b0 + kBlock : n, a1 = a0 + kBlock < m ? a0 + kBlock : m;
      for (Index b = b0; b < b1; ++b)
        for (Index a = a0; a < a1; ++a) t[b + a * ldt] = c[a + b * ldc];
    }
}

}  // namespace nc::detail::knn
