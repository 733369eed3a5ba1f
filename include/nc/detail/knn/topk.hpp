// ncml: per-query top-k selection for the kNN engine.
//
// Each query owns a buffer of k + slack candidates and a threshold, the k-th best candidate
// kept at the last compaction (none before the first). An entry enters the buffer when it
// beats the threshold under the total order (score descending, gallery index ascending);
// when the buffer is full, nth_element keeps the best k and the threshold rises. Since the
// order is total, the final k are the unique k best, whatever order entries arrived in.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../../core/types.hpp"

namespace nc::detail::knn {

/// A candidate: score and gallery index (I is uint32_t when the gallery allows it).
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

template <class I>
class TopK {
 public:
  TopK(Index num_queries, Index k)
      : k_(k),
        cap_(k + std::max<Index>(k / 2, 16)),
        thr_(static_cast<std::size_t>(num_queries), -std::numeric_limits<float>::infinity()),
        thr_index_(static_cast<std::size_t>(num_queries), std::numeric_limits<I>::max()),
        size_(static_cast<std::size_t>(num_queries), 0),
        buf_(static_cast<std::size_t>(num_queries) * static_cast<std::size_t>(cap_)) {}

  const float* thresholds() const { return thr_.data(); }

  void accept(Index q, Index g, float s) {
    const Candidate<I> c{s, static_cast<I>(g)};
    if (!ranks_before(c, Candidate<I>{thr_[q], thr_index_[q]})) return;
    Candidate<I>* b = row(q);
    b[size_[q]++] = c;
    if (size_[q] == cap_) compact(q);
  }

  /// Writes the sorted k best of query q to `scores` and `indices`.
  template <class OutI>
  void finish(Index q, float* scores, OutI* indices) {
    Candidate<I>* b = row(q);
    const Index n = std::min<Index>(size_[q], k_);
    std::partial_sort(b, b + n, b + size_[q], ranks_before<I>);
    for (Index r = 0; r < n; ++r) {
      scores[r] = b[r].score;
      indices[r] = static_cast<OutI>(b[r].index);
    }
  }

 private:
  Candidate<I>* row(Index q) { return buf_.data() + static_cast<std::size_t>(q) * cap_; }

  void compact(Index q) {
    Candidate<I>* b = row(q);
    std::nth_element(b, b + (k_ - 1), b + size_[q], ranks_before<I>);
    size_[q] = static_cast<int32_t>(k_);
    thr_[q] = b[k_ - 1].score;
    thr_index_[q] = b[k_ - 1].index;
  }

  Index k_, cap_;
  std::vector<float> thr_;
  std::vector<I> thr_index_;
  std::vector<int32_t> size_;
  std::vector<Candidate<I>> buf_;
};

}  // namespace nc::detail::knn
