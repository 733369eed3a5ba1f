// ncml: the rank-counting sink behind nc::evaluate_retrieval.
//
// Every retrieval metric depends only on the ranks of a query's positives (gallery items of
// its class), where rank(p) = number of gallery items ranked before p. With the positives
// p_0, p_1, ... sorted best first (their scores come from a pre-pass over same-class pairs,
// bitwise equal to the scores the main pass computes), rank(p_j) = j + (negatives ranked
// before p_j). A negative g ranked after exactly m positives is counted in cnt[m]; then
// negatives before p_j = cnt[0] + ... + cnt[j]. No top-K list is kept: memory is the
// positives and their counters, O(sum of R) over queries, for any K.
//
// Only ranks below L = max(max K, R) matter (plus the rank of p_0, for MRR), so a query keeps
// "live" positives p_0..p_{a-1}: once rank(p_{a-1}) >= L, p_{a-1} can no longer count and its
// score stops filtering. The filter threshold is the last live positive: a negative ranked
// after it changes no live rank. The counts of negatives ranked before a live positive are
// complete, whatever order the pairs arrive in, so the final metrics are exact and
// independent of threads and tiles.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../../core/types.hpp"
#include "topk.hpp"

namespace nc::detail::knn {

/// P: a key policy of topk.hpp (Packed32 or Wide).
template <class P>
class RankCounter {
 public:
  using Key = typename P::Key;

  /// `offsets` [Q + 1] delimit each query's positives in `positives`, sorted best first.
  /// `limit[q]` = L for query q. Labels are compared to skip positives in the main pass. The
  /// three vectors are read in place and must outlive the counter. Gallery row g is keyed as
  /// `first + g` (the global row of a gallery shard; 0 for a whole gallery), so that ties are
  /// broken by the same indices as in the positive lists.
  RankCounter(const std::vector<int64_t>& offsets, const std::vector<Key>& positives,
              const std::vector<int64_t>& limit, const int64_t* query_labels,
              const int64_t* gallery_labels, Index first = 0)
      : off_(offsets), pos_(positives), limit_(limit), ql_(query_labels), gl_(gallery_labels), first_(first) {
    const Index nq = static_cast<Index>(off_.size()) - 1;
    cnt_.assign(pos_.size(), 0);
    live_.resize(static_cast<std::size_t>(nq));
    before_.assign(static_cast<std::size_t>(nq), 0);
    thr_.resize(static_cast<std::size_t>(nq));
    for (Index q = 0; q < nq; ++q) {
      live_[q] = off_[q + 1] - off_[q];
      thr_[q] = live_[q] > 0 ? P::score(pos_[off_[q + 1] - 1]) : std::numeric_limits<float>::infinity();
    }
  }

  const float* thresholds() const { return thr_.data(); }

  void accept(Index q, Index g, float s) {
    int64_t a = live_[q];
    if (a == 0 || gl_[g] == ql_[q]) return;
    const Key* p = pos_.data() + off_[q];
    const Key c = P::make(s, first_ + g);
    if (!better_(c, p[a - 1])) return;
    // m = number of positives ranked before c (branch-free binary search over p[0, a)).
    const Key* base = p;
    int64_t len = a;
    while (len > 1) {
      const int64_t half = len / 2;
      base = better_(base[half - 1], c) ? base + half : base;
      len -= half;
    }
    const int64_t m = (base - p) + (better_(*base, c) ? 1 : 0);
    int64_t* cnt = cnt_.data() + off_[q];
    ++cnt[m];
    int64_t before = ++before_[q];  // negatives ranked before p_{a-1}
    if (a > 1 && (a - 1) + before >= limit_[q]) {
      while (a > 1 && (a - 1) + before >= limit_[q]) before -= cnt[--a];
      live_[q] = a;
      before_[q] = before;
      thr_[q] = P::score(p[a - 1]);
    }
  }

  /// Negatives counted before each positive, and the number of positives still counted, per
  /// query (for merging the counts of several gallery shards).
  std::vector<int64_t>& counts() { return cnt_; }
  std::vector<int64_t>& live() { return live_; }

  /// Ranks of the live positives of query q (ascending), written to `ranks`; returns their
  /// number. Positives not listed have rank >= L.
  Index ranks(Index q, std::vector<int64_t>& ranks) const {
    const int64_t a = live_[q];
    const int64_t* cnt = cnt_.data() + off_[q];
    ranks.resize(static_cast<std::size_t>(a));
    int64_t negatives = 0;
    for (int64_t j = 0; j < a; ++j) {
      negatives += cnt[j];
      ranks[j] = j + negatives;
    }
    return a;
  }

 private:
  typename P::Better better_;
  const std::vector<int64_t>& off_;
  const std::vector<Key>& pos_;
  const std::vector<int64_t>& limit_;
  const int64_t* ql_;
  const int64_t* gl_;
  Index first_;
  std::vector<int64_t> cnt_, live_, before_;
  std::vector<float> thr_;
};

}  // namespace nc::detail::knn
