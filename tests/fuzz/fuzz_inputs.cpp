// libFuzzer target: the numeric entry points on small, hostile inputs.
//
// The bytes choose one entry point and build its arguments: shapes (N <= 64 rows, D <= 16
// columns, C <= 8 classes), labels (balanced, random, with missing classes, negative or out of
// range), features (a seeded Gaussian mixture at a chosen magnitude, from denormal to near
// FLT_MAX, in float or double) with patched entries (NaN, +-Inf, +-FLT_MAX, denormals, -0),
// k and Recall@K lists (including 0 and beyond the gallery), and the options. nc::error is the
// documented outcome of bad input and is caught; anything else that escapes (std::bad_alloc,
// another exception), a crash, a sanitizer report or a broken invariant (FUZZ_CHECK) is a
// finding. Invariants are checked where a call succeeded: shapes, counts, finiteness of
// results of finite input, ranges of rates and metrics, index ranges, unchanged state after an
// error, bitwise restoration by the perturbation guard.
//
// Input layout (missing bytes read as 0; tests/fuzz/make_corpus.py writes seeds in it):
//   0 op (mod kNumOps)      1 N = b % 65           2 D = b % 17          3 C = 1 + b % 8
//   4 flags: bits 0-1 similarity, 2 exclude_self, 3-5 method / variant, 6 alternate option,
//            7 double features
//   5 k = b % 70 - 1 (also the Recall@K list)     6-9 seed (u32)
//   10 magnitude: 0 unit, 1 1e-3, 2 1e-38, 3 1e-42 (denormal), 4 1e18, 5 1e30, 6 1e37,
//      7 largest |x| = 0.9 FLT_MAX, other: unit
//   11 labels: 0 i % C, 1 random in [0, C), 2 random without class 0, 3 random in [-1, C],
//      4 all 0, 5 i (all distinct), other: i % C
//   12-: patches of 4 bytes: target (b % 4: 0 features, 1 labels, 2 second matrix (W,
//      gallery), 3 second labels), position (u16, modulo the size), value (a special value
//      for matrices, a signed byte for labels).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <nc/nc.hpp>

#include "fuzz_common.hpp"
#include "snapshot.hpp"

// Library defects this harness found, all fixed; their checks are on (building with
// -DNCML_FUZZ_KNOWN_BUGS=1 steps around them again, to bisect); docs/errors.md, "Fixed defects":
//   BUG-1  knn / evaluate_retrieval with inner_product or neg_squared_l2 when float products
//          of the rows overflow: NaN scores never enter the top-k and knn leaves the rest of
//          the result row uninitialized.
//   BUG-3  ClassStats: float features whose squared deviations overflow float give a
//          non-finite within-class scatter without an error.
//   BUG-5  init_head(C, D) with kaiming_normal / xavier_uniform: a finite scale near
//          FLT_MAX gives +-Inf entries without an error.
//   BUG-6  nc1(features, labels, stats) with float features: the data pass rounds the
//          centred rows x - mu and the projection V S^-1 to float, which overflow for features
//          near FLT_MAX (|x - mu| > FLT_MAX) or of tiny magnitude (singular values of the
//          centred means below 1 / FLT_MAX); NC1 then comes out NaN or Inf without an error.
#ifndef NCML_FUZZ_KNOWN_BUGS
#define NCML_FUZZ_KNOWN_BUGS 0
#endif

namespace {

using nc::Index;
using nc::MatrixD;
using nc::MatrixF;

constexpr int kNumOps = 15;
constexpr double kFloatMax = double(std::numeric_limits<float>::max());

template <class T>
using Mat = nc::Matrix<T>;

struct Input {
  int op = 0;
  Index n = 0, d = 0, c = 1;
  uint8_t flags = 0;
  int k = 0;
  uint32_t seed = 0;
  int magnitude = 0, label_mode = 0;
  std::vector<int> labels, labels2;  // labels2: for a second set (gallery, batch)
  MatrixD x, w;                      // features [n, d]; second matrix [c, d] (head, gallery)
  double max_abs = 0;                // largest |entry| of x and w (finite entries)
  double max_abs_x = 0;              // largest |entry| of x (finite entries)
  bool labels_ok = true;             // labels in [0, c)
};

double special(uint8_t v) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  const double table[16] = {std::numeric_limits<double>::quiet_NaN(),
                            inf,
                            -inf,
                            kFloatMax,
                            -kFloatMax,
                            0.9 * kFloatMax,
                            double(std::numeric_limits<float>::min()),
                            double(std::numeric_limits<float>::denorm_min()),
                            1e-40,
                            -0.0,
                            0.0,
                            1e30,
                            -1e30,
                            1.0,
                            -1.0,
                            65504.0};
  return table[v % 16];
}

std::vector<int> make_labels(Index n, Index c, int mode, std::mt19937_64& rng) {
  std::vector<int> y(static_cast<std::size_t>(n));
  std::uniform_int_distribution<int> any(0, int(c) - 1), wide(-1, int(c)), not0(c > 1 ? 1 : 0, int(c) - 1);
  for (Index i = 0; i < n; ++i) {
    switch (mode) {
      case 1: y[i] = any(rng); break;
      case 2: y[i] = not0(rng); break;
      case 3: y[i] = wide(rng); break;
      case 4: y[i] = 0; break;
      case 5: y[i] = int(i); break;
      default: y[i] = int(i % c);
    }
  }
  return y;
}

/// Gaussian mixture rows for `labels` (clamped into [0, c) for the centres), scaled.
MatrixD mixture(const std::vector<int>& labels, Index d, Index c, int magnitude, std::mt19937_64& rng) {
  std::normal_distribution<double> g(0.0, 1.0);
  MatrixD centres(c, d);
  for (Index i = 0; i < centres.size(); ++i) centres.data()[i] = 4.0 * g(rng);
  MatrixD x(Index(labels.size()), d);
  for (Index i = 0; i < x.rows(); ++i) {
    const Index k = std::min<Index>(std::max(labels[i], 0), c - 1);
    for (Index j = 0; j < d; ++j) x(i, j) = centres(k, j) + g(rng);
  }
  const double scales[7] = {1.0, 1e-3, 1e-38, 1e-42, 1e18, 1e30, 1e37};
  if (magnitude == 7) {
    const double m = x.size() ? x.cwiseAbs().maxCoeff() : 0.0;
    if (m > 0) x *= 0.9 * kFloatMax / m;
  } else if (magnitude < 7) {
    x *= scales[magnitude];
  }
  return x;
}

Input parse(const uint8_t* data, std::size_t size) {
  ncfuzz::Reader r(data, size);
  Input in;
  in.op = r.u8() % kNumOps;
  in.n = r.u8() % 65;
  in.d = r.u8() % 17;
  in.c = 1 + r.u8() % 8;
  in.flags = r.u8();
  in.k = int(r.u8() % 70) - 1;
  in.seed = r.u32();
  in.magnitude = r.u8() % 9;
  in.label_mode = r.u8() % 7;
  std::mt19937_64 rng(in.seed);
  in.labels = make_labels(in.n, in.c, in.label_mode, rng);
  in.labels2 = make_labels(in.c + in.n / 2, in.c, in.label_mode == 5 ? 0 : in.label_mode, rng);
  in.x = mixture(in.labels, in.d, in.c, in.magnitude, rng);
  in.w = mixture(in.labels2, in.d, in.c, in.magnitude, rng);
  while (r.left() >= 4) {
    const int target = r.u8() % 4;
    const uint16_t pos = r.u16();
    const uint8_t v = r.u8();
    if (target == 0 && in.x.size()) in.x.data()[pos % in.x.size()] = special(v);
    if (target == 2 && in.w.size()) in.w.data()[pos % in.w.size()] = special(v);
    if (target == 1 && !in.labels.empty()) in.labels[pos % in.labels.size()] = int(int8_t(v));
    if (target == 3 && !in.labels2.empty()) in.labels2[pos % in.labels2.size()] = int(int8_t(v));
  }
  for (Index i = 0; i < in.x.size(); ++i)
    if (std::isfinite(in.x.data()[i])) in.max_abs_x = std::max(in.max_abs_x, std::abs(in.x.data()[i]));
  in.max_abs = in.max_abs_x;
  for (Index i = 0; i < in.w.size(); ++i)
    if (std::isfinite(in.w.data()[i])) in.max_abs = std::max(in.max_abs, std::abs(in.w.data()[i]));
  for (int v : in.labels) in.labels_ok = in.labels_ok && v >= 0 && v < in.c;
  return in;
}

template <class M>
bool all_finite(const M& m) {
  return m.template cast<double>().array().isFinite().all();
}

using nct::bytes_of;
using nct::snapshot;

/// float products of entries up to max_abs over d terms may overflow (BUG-1, BUG-3 territory).
bool float_products_may_overflow(double max_abs, Index terms) {
  return 4.0 * max_abs * max_abs * double(std::max<Index>(terms, 1)) >= kFloatMax / 4;
}

template <class T>
class Run {
 public:
  explicit Run(const Input& in)
      : in_(in), x_(in.x.cast<T>()), w_(in.w.cast<T>()), x_finite_(all_finite(x_)), w_finite_(all_finite(w_)) {}

  void operator()() {
    switch (in_.op) {
      case 0: stats(); break;
      case 1: add_merge(); break;
      case 2: directions(); break;
      case 3: head_from_data(); break;
      case 4: head_data_free(); break;
      case 5: nc1(); break;
      case 6: metrics(); break;
      case 7: nc4(); break;
      case 8: knn(); break;
      case 9: retrieval_loo(); break;
      case 10: retrieval_qg(); break;
      case 11: drift(); break;
      case 12: perturb(); break;
      case 13: norm_softmax(); break;
      default: proxy_anchor(); break;
    }
  }

 private:
  const Input& in_;
  Mat<T> x_, w_;
  bool x_finite_, w_finite_;

  bool alt() const { return in_.flags & 0x40; }
  int variant() const { return (in_.flags >> 3) & 7; }
  Index num_classes_option() const { return alt() ? -1 : in_.c; }
  bool scatter_may_overflow() const {
    return std::is_same<T, float>::value && float_products_may_overflow(in_.max_abs, in_.n);
  }

  void check_stats(const nc::ClassStats& s, Index rows) const {
    FUZZ_CHECK(s.total_count() == rows, "total_count");
    FUZZ_CHECK(s.counts().minCoeff() >= 0, "negative count");
    FUZZ_CHECK(s.means().allFinite(), "non-finite means of finite input");
    FUZZ_CHECK(s.class_sq_deviations().allFinite() && s.class_sq_deviations().minCoeff() >= 0,
               "squared deviations");
    const Eigen::VectorXd var = s.class_variances();
    for (Index c = 0; c < s.num_classes(); ++c)
      FUZZ_CHECK(std::isnan(var[c]) == (s.counts()[c] == 0), "class variance NaN iff empty");
    if (s.has_scatter()) {
      const MatrixD& sw = s.within_scatter();
      // Symmetric up to the rounding of the products (formed in the feature precision).
      FUZZ_CHECK(!sw.allFinite() || (sw - sw.transpose()).cwiseAbs().maxCoeff() <=
                                        1e-5 * sw.cwiseAbs().maxCoeff(),
                 "scatter not symmetric");
      if (!(NCML_FUZZ_KNOWN_BUGS && scatter_may_overflow()))
        FUZZ_CHECK(sw.allFinite(), "non-finite within-class scatter of finite input (BUG-3)");
    }
    if (rows > 0) {
      FUZZ_CHECK(s.global_mean().allFinite() && s.mean_of_class_means().allFinite(), "global means");
      FUZZ_CHECK(s.between_covariance().allFinite(), "between covariance");
    }
  }

  void stats() {
    nc::StatsOptions o;
    o.within_scatter = !(in_.flags & 0x08);
    o.threads = 1;
    const nc::ClassStats s = nc::class_stats(x_, in_.labels, num_classes_option(), o);
    FUZZ_CHECK(x_finite_ && in_.n > 0 && in_.d > 0, "class_stats accepted bad features");
    FUZZ_CHECK(s.num_classes() >= 1 && s.dim() == in_.d, "shape");
    check_stats(s, in_.n);
  }

  void add_merge() {
    // A batch added to statistics that already hold one: an error leaves them unchanged.
    const Index split = in_.n ? Index(in_.seed % uint32_t(in_.n + 1)) : 0;
    const std::vector<int> y0(in_.labels.begin(), in_.labels.begin() + split),
        y1(in_.labels.begin() + split, in_.labels.end());
    nc::StatsOptions o;
    o.within_scatter = !(in_.flags & 0x08);
    o.threads = 1;
    nc::ClassStats a(in_.c, std::max<Index>(in_.d, 1), o), b(in_.c, std::max<Index>(in_.d, 1), o);
    bool ok0 = true, ok1 = true;
    for (int part = 0; part < 2; ++part) {
      nc::ClassStats& s = part ? b : a;
      const std::string before = snapshot(s);
      try {
        if (part) s.add(x_.bottomRows(in_.n - split), y1);
        else s.add(x_.topRows(split), y0);
      } catch (const nc::error&) {
        FUZZ_CHECK(snapshot(s) == before, "ClassStats::add changed the statistics before throwing");
        (part ? ok1 : ok0) = false;
      }
    }
    if (alt()) {
      // merge of mismatched statistics: an error, nothing changes.
      const nc::ClassStats other(in_.c + 1, a.dim(), o);
      const std::string before = snapshot(a);
      try {
        a.merge(other);
        FUZZ_CHECK(false, "merge accepted statistics of another num_classes");
      } catch (const nc::error&) {
        FUZZ_CHECK(snapshot(a) == before, "merge changed the statistics before throwing");
      }
    }
    a.merge(b);
    if (!(ok0 && ok1) || split == 0 || split == in_.n) return;
    // Both halves valid: the merge equals one pass over all rows.
    const nc::ClassStats one = nc::class_stats(x_, in_.labels, in_.c, o);
    check_stats(a, in_.n);
    FUZZ_CHECK(a.counts() == one.counts(), "merged counts differ from one pass");
    const double scale = std::max(in_.max_abs, 1e-300);
    FUZZ_CHECK((a.means() - one.means()).cwiseAbs().maxCoeff() <= 1e-9 * scale, "merged means differ");
    const double sq_scale = double(in_.n) * scale * scale + 1e-300;
    FUZZ_CHECK((a.class_sq_deviations() - one.class_sq_deviations()).cwiseAbs().maxCoeff() <= 1e-9 * sq_scale,
               "merged squared deviations differ");
  }

  template <class M>
  void check_unit_rows(const M& v, Index rows, double norm = 1.0) const {
    FUZZ_CHECK(v.rows() == rows && v.cols() == in_.d, "shape of unit rows");
    FUZZ_CHECK(all_finite(v), "non-finite rows");
    for (Index c = 0; c < v.rows(); ++c) {
      const double r = v.row(c).template cast<double>().norm();
      FUZZ_CHECK(std::abs(r - norm) <= 1e-4 * norm, "row norm " + std::to_string(r) + " instead of " +
                                                        std::to_string(norm));
    }
  }

  void directions() {
    nc::DirectionOptions o;
    o.method = static_cast<nc::Direction>(variant() % 3);
    o.num_classes = num_classes_option();
    o.unweighted_global_mean = in_.k & 8;
    o.threads = 1;
    const Mat<T> v = nc::nc_directions(x_, in_.labels, o);
    FUZZ_CHECK(x_finite_, "nc_directions accepted non-finite features");
    check_unit_rows(v, v.rows());
  }

  double head_scale() const {
    const double s[8] = {1.0, 0.5, 1e-30, 1e30, 0.9 * kFloatMax, 0.0, -1.0, std::numeric_limits<double>::quiet_NaN()};
    return s[(in_.flags >> 6) | ((in_.k & 1) << 2)];
  }

  void head_from_data() {
    nc::HeadOptions o;
    o.method = static_cast<nc::HeadInit>(variant() % 7);
    o.scale = head_scale();
    o.seed = in_.seed;
    o.num_classes = (in_.k & 2) ? -1 : in_.c;
    o.threads = 1;
    const MatrixF h = nc::init_head(x_, in_.labels, o);
    FUZZ_CHECK(x_finite_ && std::isfinite(o.scale) && o.scale > 0, "init_head accepted bad input");
    const bool unit = o.method != nc::HeadInit::kaiming_normal && o.method != nc::HeadInit::xavier_uniform;
    if (unit) check_unit_rows(h, h.rows(), o.scale);
    if (!unit && !(NCML_FUZZ_KNOWN_BUGS && o.scale > 1e37)) FUZZ_CHECK(h.allFinite(), "non-finite head (BUG-5)");
  }

  void head_data_free() {
    nc::HeadOptions o;
    o.method = static_cast<nc::HeadInit>(variant() % 7);
    o.scale = head_scale();
    o.seed = in_.seed;
    o.num_classes = (in_.k & 2) ? in_.c + (in_.k & 4 ? 1 : 0) : -1;
    const Index C = in_.label_mode == 6 ? 0 : in_.c;
    const MatrixF h = nc::init_head(C, in_.d, o);
    FUZZ_CHECK(h.rows() == C && h.cols() == in_.d, "data-free head shape");
    const bool unit = o.method == nc::HeadInit::simplex_etf;
    if (unit) check_unit_rows(h, C, o.scale);
    else if (!(NCML_FUZZ_KNOWN_BUGS && o.scale > 1e37)) FUZZ_CHECK(h.allFinite(), "non-finite head (BUG-5)");
  }

  /// Statistics of the input, with the within-class scatter unless flag 0x08 is set.
  nc::ClassStats input_stats() const {
    nc::StatsOptions so;
    so.within_scatter = !(in_.flags & 0x08);
    so.threads = 1;
    return nc::class_stats(x_, in_.labels, num_classes_option(), so);
  }

  void nc1() {
    const nc::ClassStats s = input_stats();
    nc::NC1Options o;
    o.path = alt() ? nc::NC1Options::Path::exact : nc::NC1Options::Path::projected;
    o.unweighted_global_mean = in_.k & 8;
    o.rank_tol = (in_.k > 0 && in_.k % 5 == 0) ? double(in_.k) * 1e-3 : -1;
    o.threads = 1;
    try {
      const nc::NC1Result r = s.has_scatter() ? nc::nc1_detailed(s, o) : nc::nc1_detailed(x_, in_.labels, s, o);
      const bool bug6 = !s.has_scatter() && std::is_same<T, float>::value &&
                        (in_.max_abs_x < 1e-18 || 2.0 * in_.max_abs_x >= kFloatMax);
      if (!(NCML_FUZZ_KNOWN_BUGS && bug6)) FUZZ_CHECK(std::isfinite(r.value), "non-finite NC1");
      FUZZ_CHECK(r.rank >= 1 && r.rank <= s.dim(), "NC1 rank");
      FUZZ_CHECK(r.num_classes_used == s.num_nonempty_classes(), "NC1 classes used");
    } catch (const nc::error&) {
    }
  }

  void metrics() {
    const nc::ClassStats s = input_stats();
    nc::NCOptions o;
    o.nc1_path = alt() ? nc::NC1Options::Path::exact : nc::NC1Options::Path::projected;
    o.unweighted_global_mean = in_.k & 8;
    const Mat<T> w = w_.topRows(std::min<Index>(w_.rows(), s.num_classes()));
    const nc::NCReport r = (in_.flags & 0x10) ? nc::nc_metrics(s, o) : nc::nc_metrics(s, w, o);
    FUZZ_CHECK(r.num_classes_used + r.num_empty_classes == s.num_classes(), "class counts");
    FUZZ_CHECK(r.num_samples == in_.n, "num_samples");
    FUZZ_CHECK(!s.has_scatter() || std::isfinite(r.nc1), "non-finite NC1 in the report");
    FUZZ_CHECK(std::isfinite(r.trace_sw) && std::isfinite(r.trace_sb), "non-finite traces");
  }

  void nc4() {
    const nc::ClassStats s = nc::class_stats(w_, in_.labels2, in_.c, nc::StatsOptions{false, 1});
    nc::NC4Options o;
    o.rule = alt() ? nc::NC4Options::Rule::cosine : nc::NC4Options::Rule::euclidean;
    o.per_class_average = in_.k & 8;
    o.threads = 1;
    const Mat<T> head = w_.topRows(std::min<Index>(w_.rows(), in_.c));
    double v;
    if ((in_.flags & 0x10) && in_.d > 0) {
      const Eigen::VectorXd bias = x_.rows() ? Eigen::VectorXd(x_.col(0).template cast<double>().head(
                                                   std::min<Index>(x_.rows(), in_.c)))
                                             : Eigen::VectorXd();
      v = nc::nc4(x_, in_.labels, s, head, bias, o);
    } else {
      v = nc::nc4(x_, in_.labels, s, head, o);
    }
    FUZZ_CHECK(x_finite_ && in_.labels_ok, "nc4 accepted bad input");
    FUZZ_CHECK(v >= 0.0 && v <= 1.0, "NC4 rate " + std::to_string(v) + " outside [0, 1]");
  }

  nc::Similarity similarity() const { return static_cast<nc::Similarity>((in_.flags & 3) % 3); }
  bool bug1_territory() const {
    return NCML_FUZZ_KNOWN_BUGS && similarity() != nc::Similarity::cosine &&
           float_products_may_overflow(in_.max_abs, in_.d);
  }
  Index tile() const {
    const Index t[8] = {0, 1, 5, 48, 100, 0, 0, 7};
    return t[variant()];
  }

  void knn() {
    nc::KnnOptions o;
    o.similarity = similarity();
    o.exclude_self = in_.flags & 0x04;
    o.threads = 1;
    o.query_tile = tile();
    o.gallery_tile = alt() ? tile() : 0;
    const bool self = in_.flags & 0x10;  // the same rows as queries and gallery
    if (bug1_territory()) return;
    const nc::KnnResult r = self ? nc::knn(x_, x_, in_.k, o) : nc::knn(x_, w_, in_.k, o);
    const Index G = self ? x_.rows() : w_.rows();
    FUZZ_CHECK(x_finite_ && (self || w_finite_), "knn accepted non-finite input");
    FUZZ_CHECK(r.indices.rows() == x_.rows() && r.indices.cols() == in_.k, "knn result shape");
    FUZZ_CHECK(r.scores.rows() == x_.rows() && r.scores.cols() == in_.k, "knn scores shape");
    for (Index i = 0; i < r.indices.rows(); ++i)
      for (Index j = 0; j < r.indices.cols(); ++j) {
        const int64_t g = r.indices(i, j);
        FUZZ_CHECK(g >= 0 && g < G, "knn index " + std::to_string(g) + " outside [0, " + std::to_string(G) + ")");
        FUZZ_CHECK(!(o.exclude_self && g == i), "exclude_self returned the query itself");
        for (Index m = 0; m < j; ++m) FUZZ_CHECK(r.indices(i, m) != g, "knn repeated an index");
        if (j > 0) FUZZ_CHECK(!(r.scores(i, j - 1) < r.scores(i, j)), "knn scores not descending");
        if (o.similarity == nc::Similarity::cosine)
          FUZZ_CHECK(std::abs(r.scores(i, j)) <= 1.0f + 1e-5f, "cosine score outside [-1, 1]");
      }
  }

  std::vector<int> ks() const {
    std::vector<int> k = {1};
    if (in_.k != 1) k.push_back(in_.k);
    if (alt()) k.push_back(in_.k + 1);
    if (in_.flags & 0x20) k.clear();  // an empty list is an error
    return k;
  }

  void check_report(const nc::RetrievalReport& r, Index queries) const {
    FUZZ_CHECK(r.num_queries + r.num_lone_queries == queries, "query counts");
    auto unit = [](double v) { return std::isnan(v) || (v >= 0.0 && v <= 1.0); };
    for (double v : r.recall_at_k) FUZZ_CHECK(unit(v), "Recall@K outside [0, 1]");
    for (double v : r.precision_at_k) FUZZ_CHECK(unit(v), "Precision@K outside [0, 1]");
    FUZZ_CHECK(unit(r.map_at_r) && unit(r.r_precision) && unit(r.mrr), "MAP@R, R-Precision or MRR outside [0, 1]");
    FUZZ_CHECK(unit(r.class_avg_map_at_r) && unit(r.class_avg_mrr), "class averages outside [0, 1]");
    FUZZ_CHECK((r.num_queries > 0) == !std::isnan(r.map_at_r), "MAP@R NaN iff no query evaluated");
  }

  void retrieval_loo() {
    nc::RetrievalOptions o;
    o.ks = ks();
    o.similarity = similarity();
    o.per_class = in_.flags & 0x04;
    o.threads = 1;
    o.query_tile = tile();
    if (bug1_territory()) return;
    const nc::RetrievalReport r = nc::evaluate_retrieval(x_, in_.labels, o);
    FUZZ_CHECK(x_finite_, "evaluate_retrieval accepted non-finite input");
    check_report(r, x_.rows());
  }

  void retrieval_qg() {
    nc::RetrievalOptions o;
    o.ks = ks();
    o.similarity = similarity();
    o.per_class = in_.flags & 0x04;
    o.threads = 1;
    o.query_tile = tile();
    o.gallery_tile = alt() ? tile() : 0;
    if (bug1_territory()) return;
    const nc::RetrievalReport r = nc::evaluate_retrieval(x_, in_.labels, w_, in_.labels2, o);
    FUZZ_CHECK(x_finite_ && w_finite_, "evaluate_retrieval accepted non-finite input");
    check_report(r, x_.rows());
  }

  void drift() {
    const MatrixF ref = w_.template cast<float>();
    nc::DriftTracker t(ref);
    FUZZ_CHECK(w_finite_ && ref.rows() > 0 && ref.cols() > 0, "DriftTracker accepted a bad reference");
    // Heads: the first rows of x (as many as the reference has, if x has them), the reference
    // reversed, then all of x; stop at the first refused one, which must change nothing.
    const Index rows = ref.rows();
    const MatrixF heads[3] = {x_.rows() >= rows ? MatrixF(x_.topRows(rows).template cast<float>()) : MatrixF(ref * 2.0f),
                              MatrixF(ref.colwise().reverse()), MatrixF(x_.template cast<float>())};
    for (int u = 0; u < 3; ++u) {
      const std::string before = snapshot(t);
      try {
        t.update(heads[u]);
      } catch (const nc::error&) {
        FUZZ_CHECK(snapshot(t) == before, "DriftTracker::update changed its state before throwing");
        break;
      }
      FUZZ_CHECK(t.num_updates() == u + 1, "num_updates");
      const double m = t.mean_squared_distance();
      FUZZ_CHECK(m >= 0.0 && m <= 4.0 + 1e-9, "mean squared distance outside [0, 4]");
      FUZZ_CHECK(t.per_class().allFinite(), "per-class distances");
      FUZZ_CHECK(std::isfinite(t.from_initial()) && std::isfinite(t.path_length()), "drift norms");
    }
  }


  void perturb() {
    nc::PerturbOptions po;
    const double sigmas[8] = {0.0, 1e-3, 1.0, 1e30, std::numeric_limits<double>::quiet_NaN(), -1.0,
                              std::numeric_limits<double>::infinity(), 1e-40};
    po.sigma = sigmas[variant()];
    po.schedule = static_cast<nc::Schedule>((in_.flags & 3) % 3);
    po.total_steps = in_.k - 2;
    po.seed = in_.seed;
    po.threads = 1;
    const nc::Perturbation p(po);
    const int64_t step = alt() ? -int64_t(in_.k) : int64_t(in_.k) * 1000;
    Mat<T> w = x_;
    const Mat<T> clean = w;
    try {
      auto guard = p.perturb(w, step);
      const Mat<T> want = clean + p.template noise<T>(clean.rows(), clean.cols(), step);
      FUZZ_CHECK(bytes_of(w) == bytes_of(want), "perturbed W is not clean + noise");
      FUZZ_CHECK(bytes_of(guard.clean()) == bytes_of(clean), "guard.clean()");
      const double s = p.sigma_at(step);
      FUZZ_CHECK(std::isfinite(s) && s >= 0.0 && s <= po.sigma, "sigma_at");
      if (in_.flags & 0x10) guard.restore();
    } catch (const nc::error&) {
    }
    FUZZ_CHECK(bytes_of(w) == bytes_of(clean), "W not restored bitwise");
  }

  /// `factor` bounds |dL/dS| (1/tau, or alpha); the gradient of a row v scales as 1/||v||, so
  /// a float gradient can overflow legitimately for rows of tiny norm: finiteness is checked
  /// only where factor / min ||v|| stays far below FLT_MAX.
  template <class R>
  void check_loss(const R& r, double factor) const {
    FUZZ_CHECK(x_finite_ && all_finite(proxies()) && in_.labels_ok, "loss accepted bad input");
    FUZZ_CHECK(std::isfinite(r.loss), "non-finite loss of finite input");
    FUZZ_CHECK(r.grad_embeddings.rows() == x_.rows() && r.grad_embeddings.cols() == in_.d, "gradient shape");
    FUZZ_CHECK(r.grad_weights.rows() == in_.c && r.grad_weights.cols() == in_.d, "gradient shape");
    const double min_norm = std::min(x_.template cast<double>().rowwise().norm().minCoeff(),
                                     proxies().template cast<double>().rowwise().norm().minCoeff());
    if (factor / min_norm * double(in_.n + in_.c) < 1e30)
      FUZZ_CHECK(all_finite(r.grad_embeddings) && all_finite(r.grad_weights), "non-finite gradient of finite input");
  }

  Mat<T> proxies() const { return w_.topRows(std::min<Index>(w_.rows(), in_.c)); }

  void norm_softmax() {
    const double taus[8] = {0.05, 1.0, 1e-3, 1e-30, 0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), 1e30};
    const Mat<T> W = proxies();
    const auto r = nc::norm_softmax_loss(x_, in_.labels, W, taus[variant()]);
    FUZZ_CHECK(W.rows() == in_.c, "proxies");
    check_loss(r, 1.0 / taus[variant()]);
  }

  void proxy_anchor() {
    const double alphas[8] = {32.0, 1.0, 1e-3, 1e6, 0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), 1e-30};
    const double deltas[4] = {0.1, 0.0, -1.0, 1e300};
    const Mat<T> W = proxies();
    const auto r = nc::proxy_anchor_loss(x_, in_.labels, W, alphas[variant()], deltas[in_.flags & 3]);
    check_loss(r, alphas[variant()]);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const Input in = parse(data, size);
  try {
    if (in.flags & 0x80 && in.op != 4 && in.op != 11) {
      Run<double> run(in);
      run();
    } else {
      Run<float> run(in);
      run();
    }
  } catch (const nc::error&) {
  }
  return 0;
}
