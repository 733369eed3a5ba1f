// ncml: per-query top-k selection for the kNN engine.
//
// Each query owns a buffer of k + slack candidates and a threshold, the k-th best candidate
// kept at the last compaction (none before the first). An entry enters the buffer when it
// beats the threshold under the total order (score descending, gallery index ascending);
// when the buffer is full, nth_element keeps the best k and the threshold rises. Since the
// order is total, the final k are the unique k best, whatever order entries arrived in.
//
// A candidate is one 64-bit key when gallery indices fit in 32 bits: the float's bits mapped
// to an unsigned integer of the same order, then the complemented index, so that "ranks
// before" is a single integer compare (Packed32); otherwise a (score, index) pair (Wide).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../../core/types.hpp"

namespace nc::detail::knn {

/// A candidate: score and gallery index.
template <class I>
struct Candidate {
  float score;
  I index;
};

/// a ranks before b: higher score, then lower gallery index.
template <class I>
inline bool ranks_before(const Candidate<I>& a, const Candidate<I>& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

/// Candidates as 64-bit keys (gallery index < 2^32); larger key ranks first.
struct Packed32 {
  using Key = uint64_t;
  static uint32_t orderable(float s) {
    s += 0.0f;  // -0 becomes +0, so equal scores have equal bits
    uint32_t u;
    std::memcpy(&u, &s, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  static Key make(float s, Index g) {
    return (static_cast<uint64_t>(orderable(s)) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(g));
  }
  static float score(Key k) {
    uint32_t u = static_cast<uint32_t>(k >> 32);
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    float s;
    std::memcpy(&s, &u, sizeof s);
    return s;
  }
  static Index index(Key k) { return static_cast<Index>(~static_cast<uint32_t>(k)); }
  /// Below every real candidate (it would need a NaN score and index 2^32 - 1).
  static Key worst() { return 0; }
  struct Better {
    bool operator()(Key a, Key b) const { return a > b; }
  };
  /// Sorts keys best first: LSD radix sort on bytes, skipping bytes that all keys share.
  static void sort(Key* a, Index n, std::vector<Key>& scratch) {
    if (n < 64) {
      std::sort(a, a + n, Better());
      return;
    }
    scratch.resize(static_cast<std::size_t>(n));
    Index hist[8][256] = {};
    for (Index i = 0; i < n; ++i)
      for (int d = 0; d < 8; ++d) ++hist[d][255 - ((a[i] >> (8 * d)) & 0xff)];
    Key* src = a;
    Key* dst = scratch.data();
    for (int d = 0; d < 8; ++d) {
      Index* h = hist[d];
      if (*std::max_element(h, h + 256) == n) continue;  // every key has the same byte
      Index sum = 0;
      for (int v = 0; v < 256; ++v) {
        const Index c = h[v];
        h[v] = sum;
        sum += c;
      }
      for (Index i = 0; i < n; ++i) dst[h[255 - ((src[i] >> (8 * d)) & 0xff)]++] = src[i];
      std::swap(src, dst);
    }
    if (src != a) std::copy(src, src + n, a);
  }
};

/// Candidates as (score, index) pairs, for galleries of 2^32 rows or more.
struct Wide {
  using Key = Candidate<uint64_t>;
  static Key make(float s, Index g) { return Key{s, static_cast<uint64_t>(g)}; }
  static float score(const Key& k) { return k.score; }
  static Index index(const Key& k) { return static_cast<Index>(k.index); }
  static Key worst() {
    return Key{-std::numeric_limits<float>::infinity(), std::numeric_limits<uint64_t>::max()};
  }
  struct Better {
    bool operator()(const Key& a, const Key& b) const { return ranks_before(a, b); }
  };
  static void sort(Key* a, Index n, std::vector<Key>&) { std::sort(a, a + n, Better()); }
};

template <class P>
class TopK {
 public:
  using Key = typename P::Key;

  TopK(Index num_queries, Index k)
      : k_(k),
        cap_(k + std::max<Index>(k, 16)),
        thr_(static_cast<std::size_t>(num_queries), -std::numeric_limits<float>::infinity()),
        thr_key_(static_cast<std::size_t>(num_queries), P::worst()),
        size_(static_cast<std::size_t>(num_queries), 0),
        buf_(static_cast<std::size_t>(num_queries) * static_cast<std::size_t>(cap_)) {}

  const float* thresholds() const { return thr_.data(); }

  void accept(Index q, Index g, float s) {
    const Key c = P::make(s, g);
    // Until the first compaction thr_key_ is P::worst(), below every real candidate.
    if (!better_(c, thr_key_[q])) return;
    Key* b = row(q);
    b[size_[q]++] = c;
    if (size_[q] == cap_) compact(q);
  }

  /// Writes the sorted k best of query q to `scores` and `indices` (`scratch`: any vector,
  /// reused between calls).
  template <class OutI>
  void finish(Index q, float* scores, OutI* indices, std::vector<Key>& scratch) {
    Key* b = row(q);
    const Index n = std::min<Index>(size_[q], k_);
    if (size_[q] > n) std::nth_element(b, b + (n - 1), b + size_[q], better_);
    P::sort(b, n, scratch);
    for (Index r = 0; r < n; ++r) {
      scores[r] = P::score(b[r]);
      indices[r] = static_cast<OutI>(P::index(b[r]));
    }
  }

 private:
  Key* row(Index q) { return buf_.data() + static_cast<std::size_t>(q) * cap_; }

  // Keeps at least k candidates and sets the threshold to the worst kept. A pivot estimated
  // from a sample (aiming at about 1.2 k kept) usually needs one partition pass; when fewer
  // than k would remain, nth_element keeps exactly k. Any threshold with k kept candidates
  // at or above it is valid, so the final result does not depend on these choices.
  void compact(Index q) {
    Key* b = row(q);
    const Index n = size_[q];
    Index kept = k_;
    if (k_ >= 64) {
      Key sample[kSample];
      for (Index i = 0; i < kSample; ++i) sample[i] = b[(2 * i + 1) * n / (2 * kSample)];
      const Index rank = std::min<Index>(kSample - 1, (kSample * 6 * k_) / (5 * n));
      std::nth_element(sample, sample + rank, sample + kSample, better_);
      const Key pivot = sample[rank];
      Key* mid = std::partition(b, b + n, [&](const Key& x) { return !better_(pivot, x); });
      kept = mid - b;
      if (kept >= k_) {
        size_[q] = static_cast<int32_t>(kept);
        thr_key_[q] = pivot;
        thr_[q] = P::score(pivot);
        if (kept < cap_) return;
      }
      kept = k_;
    }
    std::nth_element(b, b + (kept - 1), b + n, better_);
    size_[q] = static_cast<int32_t>(kept);
    thr_key_[q] = b[kept - 1];
    thr_[q] = P::score(b[kept - 1]);
  }

  static constexpr Index kSample = 64;

  Index k_, cap_;
  typename P::Better better_;
  std::vector<float> thr_;
  std::vector<Key> thr_key_;
  std::vector<int32_t> size_;
  std::vector<Key> buf_;
};

}  // namespace nc::detail::knn
