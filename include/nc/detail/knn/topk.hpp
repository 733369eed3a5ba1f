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

  /// Writes the sorted k best of query q to `scores` and `indices`.
  template <class OutI>
  void finish(Index q, float* scores, OutI* indices) {
    Key* b = row(q);
    const Index n = std::min<Index>(size_[q], k_);
    if (size_[q] > n) std::nth_element(b, b + (n - 1), b + size_[q], better_);
    std::sort(b, b + n, better_);
    for (Index r = 0; r < n; ++r) {
      scores[r] = P::score(b[r]);
      indices[r] = static_cast<OutI>(P::index(b[r]));
    }
  }

 private:
  Key* row(Index q) { return buf_.data() + static_cast<std::size_t>(q) * cap_; }

  void compact(Index q) {
    Key* b = row(q);
    std::nth_element(b, b + (k_ - 1), b + size_[q], better_);
    size_[q] = static_cast<int32_t>(k_);
    thr_key_[q] = b[k_ - 1];
    thr_[q] = P::score(b[k_ - 1]);
  }

  Index k_, cap_;
  typename P::Better better_;
  std::vector<float> thr_;
  std::vector<Key> thr_key_;
  std::vector<int32_t> size_;
  std::vector<Key> buf_;
};

}  // namespace nc::detail::knn
