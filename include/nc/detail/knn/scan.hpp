// ncml: the filter of the kNN engine. A column of a score tile is compared, in one pass, with
// the per-row thresholds of the tile's query rows and with the one threshold of the query
// that owns the column (leave-one-out tiles feed both), and only the entries that pass reach
// the selection. NaN marks entries that must never pass (a query's own row); every compare is
// ordered, so NaN fails it.
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

/// For a < n: calls row_hit(a) when x[a] >= row_thr[a], and (when `with_col`) col_hit(a) when
/// x[a] >= col_thr.
template <class RowHit, class ColHit>
inline void scan_column(const float* x, const float* row_thr, Index n, bool with_col,
                        float col_thr, RowHit&& row_hit, ColHit&& col_hit) {
  Index a = 0;
  auto each_bit = [](uint32_t mask, Index base, auto&& f) {
    while (mask) {
      f(base + count_trailing_zeros(mask));
      mask &= mask - 1;
    }
  };
#if defined(__AVX512F__)
  const __m512 ct = _mm512_set1_ps(col_thr);
  for (; a + 16 <= n; a += 16) {
    const __m512 v = _mm512_loadu_ps(x + a);
    each_bit(_mm512_cmp_ps_mask(v, _mm512_loadu_ps(row_thr + a), _CMP_GE_OQ), a, row_hit);
    if (with_col) each_bit(_mm512_cmp_ps_mask(v, ct, _CMP_GE_OQ), a, col_hit);
  }
#elif defined(__AVX__)
  const __m256 ct = _mm256_set1_ps(col_thr);
  for (; a + 8 <= n; a += 8) {
    const __m256 v = _mm256_loadu_ps(x + a);
    each_bit(static_cast<uint32_t>(_mm256_movemask_ps(
                 _mm256_cmp_ps(v, _mm256_loadu_ps(row_thr + a), _CMP_GE_OQ))),
             a, row_hit);
    if (with_col)
      each_bit(static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, ct, _CMP_GE_OQ))), a,
               col_hit);
  }
#elif defined(__SSE2__) || defined(_M_X64)
  const __m128 ct = _mm_set1_ps(col_thr);
  for (; a + 4 <= n; a += 4) {
    const __m128 v = _mm_loadu_ps(x + a);
    each_bit(static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpge_ps(v, _mm_loadu_ps(row_thr + a)))),
             a, row_hit);
    if (with_col)
      each_bit(static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpge_ps(v, ct))), a, col_hit);
  }
#endif
  for (; a < n; ++a) {
    if (x[a] >= row_thr[a]) row_hit(a);
    if (with_col && x[a] >= col_thr) col_hit(a);
  }
}

}  // namespace nc::detail::knn
