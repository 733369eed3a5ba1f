// The bad-input matrix: every public entry point against the same bad inputs, each with its
// documented outcome (an nc::error whose message names the problem, or a result with a
// stated property). docs/errors.md shows the same table; the last test case checks that it
// matches this file cell by cell.
//
// Fixture (make() below): N = 12 rows, D = 4 columns, C = 3 classes, labels i % 3, float
// features from a seeded Gaussian mixture. Each case changes one thing:
//   empty input            0 rows (0 x 4 features, no labels; 0 classes for (C, D) calls)
//   NaN, +Inf, -Inf        features(1, 2) (or the entry (1, 2) of W, or the scalar option
//                          where a call has no matrix input)
//   label out of range     labels[5] = 3 with num_classes = 3
//   negative label         labels[5] = -1
//   length mismatch        11 labels for 12 rows (or a second matrix of 5 columns)
//   k = 0, k > gallery     k = 0, k = 13 for a gallery of 12 rows (Recall@K: ks = {0}, {12}
//                          leave-one-out, {13} query vs gallery)
//   C = 1, D = 1           one class (all labels 0); one column
//   class with one sample  labels 0, 1, 0, 1, ..., 0, 2: class 2 has only row 11
//   class with no samples  labels 0, 2, 0, 2, ... with num_classes = 3: class 1 is empty
//   values near float max  features scaled to max |x| = 0.9 * FLT_MAX (finite)
// Cells: "error: `a` `b`" (nc::error whose message contains every quoted part; stateful
// objects and outputs passed by reference are checked unchanged), "ok: ..." (the call returns
// and the property is checked), "—" (does not apply), "open: ..." (a known library bug, not
// checked here until it is fixed; see docs/errors.md).
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nc/io/idx.hpp>
#include <nc/io/npy.hpp>
#include <nc/nc.hpp>

#include "snapshot.hpp"
#include "support.hpp"

#ifndef NCML_TEST_TMP_DIR
#define NCML_TEST_TMP_DIR "."
#endif
#ifndef NCML_DATA_DIR
#define NCML_DATA_DIR "data"
#endif

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_bad_inputs {

namespace {

using nc::Index;
using nc::MatrixD;
using nc::MatrixF;

enum Case {
  kEmpty,
  kNaN,
  kPosInf,
  kNegInf,
  kLabelRange,
  kNegLabel,
  kLength,
  kKZero,
  kKOver,
  kC1,
  kD1,
  kSingleton,
  kEmptyClass,
  kNearMax,
  kNumCases
};

const std::array<const char*, kNumCases> kCaseNames = {
    "empty input",    "NaN",   "+Inf",  "-Inf",        "label out of range",
    "negative label", "length mismatch", "k = 0", "k > gallery", "C = 1",
    "D = 1",          "class with one sample", "class with no samples", "values near float max"};

constexpr Index kN = 12, kD = 4, kC = 3;
constexpr float kFloatMax = std::numeric_limits<float>::max();

/// Features [n, d] of a Gaussian mixture: class c has a random centre of norm ~4.
MatrixF mixture(const std::vector<int>& labels, Index d, Index C, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  MatrixD centres(C, d);
  for (Index c = 0; c < C; ++c)
    for (Index j = 0; j < d; ++j) centres(c, j) = 4.0 * g(rng);
  MatrixF x(Index(labels.size()), d);
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < d; ++j) x(i, j) = float(centres(labels[i], j) + g(rng));
  return x;
}

struct Data {
  MatrixF x;            // [N, D]
  std::vector<int> y;   // [N] (or not, for the label cases)
  Index C = kC;         // num_classes to pass
  Index D() const { return x.cols(); }
};

/// Labels i % C for n rows.
std::vector<int> cyclic(Index n, Index C) {
  std::vector<int> y(n);
  for (Index i = 0; i < n; ++i) y[i] = int(i % C);
  return y;
}

/// Valid data of C classes in d dimensions (labels i % C), a different draw from make().
Data valid(Index C, Index d, uint32_t seed = 99) {
  Data v;
  v.C = C;
  v.y = cyclic(kN, C);
  v.x = mixture(v.y, d, C, seed);
  return v;
}

/// The fixture with case c applied (see the file comment).
Data make(Case c) {
  Data d;
  Index dim = kD;
  d.y = cyclic(kN, kC);
  if (c == kC1) {
    d.C = 1;
    d.y.assign(kN, 0);
  } else if (c == kD1) {
    dim = 1;
  } else if (c == kSingleton) {
    for (Index i = 0; i < kN; ++i) d.y[i] = int(i % 2);
    d.y[kN - 1] = 2;
  } else if (c == kEmptyClass) {
    for (Index i = 0; i < kN; ++i) d.y[i] = int(i % 2) * 2;
  }
  d.x = mixture(d.y, dim, d.C, 7);
  switch (c) {
    case kEmpty:
      d.x.resize(0, dim);
      d.y.clear();
      break;
    case kNaN: d.x(1, 2) = std::numeric_limits<float>::quiet_NaN(); break;
    case kPosInf: d.x(1, 2) = std::numeric_limits<float>::infinity(); break;
    case kNegInf: d.x(1, 2) = -std::numeric_limits<float>::infinity(); break;
    case kLabelRange: d.y[5] = 3; break;
    case kNegLabel: d.y[5] = -1; break;
    case kLength: d.y.pop_back(); break;
    case kNearMax: {
      const MatrixD xd = d.x.cast<double>();
      d.x = (xd * (0.9 * double(kFloatMax) / xd.cwiseAbs().maxCoeff())).cast<float>();
      break;
    }
    default: break;
  }
  return d;
}

/// The bad value of cases NaN, +Inf, -Inf (as a double, for scalar options).
double bad_value(Case c) {
  return c == kNaN ? std::numeric_limits<double>::quiet_NaN()
                   : c == kPosInf ? std::numeric_limits<double>::infinity()
                                  : -std::numeric_limits<double>::infinity();
}
bool is_nonfinite_case(Case c) { return c == kNaN || c == kPosInf || c == kNegInf; }

/// A head [C, d] of random Gaussian rows; for the cases NaN, +Inf, -Inf, entry (1, 2) holds
/// the bad value when `poison` is set.
MatrixF head(Index C, Index d, uint32_t seed = 5, Case c = kNumCases, bool poison = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  MatrixF w(C, d);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = g(rng);
  if (poison && is_nonfinite_case(c)) w(1, 2) = float(bad_value(c));
  return w;
}

using nct::bytes_of;
using nct::snapshot;

/// Runs `call`; if it throws, checks that snap() is what it was before, then rethrows.
template <class Snap, class Call>
void unchanged_on_error(Snap snap, Call call) {
  const std::string before = snap();
  try {
    call();
  } catch (...) {
    CHECK(snap() == before);
    throw;
  }
}

template <class M>
bool all_finite(const M& m) {
  return m.template cast<double>().allFinite();
}

/// Unit rows (in double), finite.
template <class M>
void require_unit_rows(const M& m, Index C, Index d) {
  REQUIRE(m.rows() == C);
  REQUIRE(m.cols() == d);
  REQUIRE(all_finite(m));
  for (Index c = 0; c < C; ++c) REQUIRE(m.row(c).template cast<double>().norm() == Approx(1.0).epsilon(1e-5));
}

void require_unit_interval(double v) {
  REQUIRE(std::isfinite(v));
  REQUIRE(v >= 0.0);
  REQUIRE(v <= 1.0);
}

// ---------------------------------------------------------------------------------------
// Expected-outcome strings (the cells of docs/errors.md).

const std::string kNA = "—";

std::string error(std::initializer_list<std::string> parts) {
  std::string s = "error:";
  for (const auto& p : parts) s += " `" + p + "`";
  return s;
}
std::string nonfinite(const std::string& name, Case c, int row = 1, int col = 2) {
  const char* v = c == kNaN ? "nan" : c == kPosInf ? "inf" : "-inf";
  return error({name + " has a non-finite value " + v + " at row " + std::to_string(row) + ", column " +
                std::to_string(col)});
}
std::string ok(const std::string& what) { return "ok: " + what; }

const std::string kLabelRangeErr = error({"labels has label 3 at row 5, out of range [0, 3)"});
const std::string kNegLabelErr = error({"labels has a negative label -1 at row 5"});
const std::string kLengthErr = error({"labels has 11 entries, expected 12 (one per row)"});
const std::string kNoSamplesErr = error({"NC metrics need at least 2 classes with samples, got 1"});

struct Row {
  std::string function;
  std::function<void(Case)> call;  // performs the call for a case and checks "ok" properties
  std::array<std::string, kNumCases> expect;
};

/// Cells for the four feature-validation cases of a call whose features are named `name`.
void feature_cells(Row& r, const std::string& name) {
  r.expect[kEmpty] = error({name + " is empty (0 x 4)"});
  for (Case c : {kNaN, kPosInf, kNegInf}) r.expect[c] = nonfinite(name, c);
}


const std::string kFiniteLoss = ok("finite loss and gradients of the input shapes");

Row stats_add() {
  Row r{"`ClassStats::add`", [](Case c) {
          const Data d = make(c);
          nc::ClassStats s(d.C, d.D());
          unchanged_on_error([&] { return snapshot(s); }, [&] { s.add(d.x, d.y); });
          REQUIRE(s.total_count() == kN);
          REQUIRE(s.means().allFinite());
          REQUIRE(s.class_sq_deviations().allFinite());
          if (c == kC1) REQUIRE(s.counts()[0] == kN);
          if (c == kSingleton) REQUIRE((s.counts()[2] == 1 && s.class_sq_deviations()[2] == 0.0));
          if (c == kEmptyClass) REQUIRE((s.counts()[1] == 0 && std::isnan(s.class_variances()[1])));
        },
        {}};
  feature_cells(r, "features");
  r.expect[kLabelRange] = kLabelRangeErr;
  r.expect[kNegLabel] = kNegLabelErr;
  r.expect[kLength] = kLengthErr;
  r.expect[kKZero] = r.expect[kKOver] = kNA;
  r.expect[kC1] = ok("12 samples in class 0, finite means");
  r.expect[kD1] = ok("finite means and squared deviations");
  r.expect[kSingleton] = ok("class 2: count 1, squared deviation 0");
  r.expect[kEmptyClass] = ok("class 1: count 0, variance NaN");
  r.expect[kNearMax] = ok("finite means and squared deviations (for the scatter see `within_covariance`)");
  return r;
}

Row stats_merge() {
  Row r{"`ClassStats::merge`", [](Case c) {
          if (c == kEmpty || c == kLength) {
            const Data v = valid(kC, kD);
            nc::ClassStats a = nc::class_stats(v.x, v.y, kC);
            const nc::ClassStats b(kC, c == kLength ? kD + 1 : kD);
            const std::string before = snapshot(a);
            unchanged_on_error([&] { return snapshot(a); }, [&] { a.merge(b); });
            REQUIRE(snapshot(a) == before);
            return;
          }
          // Two halves merged equal one pass over all rows.
          const Data d = make(c);
          const Index h = kN / 2;
          const std::vector<int> y0(d.y.begin(), d.y.begin() + h), y1(d.y.begin() + h, d.y.end());
          nc::ClassStats a(d.C, d.D()), b(d.C, d.D());
          a.add(d.x.topRows(h), y0);
          b.add(d.x.bottomRows(kN - h), y1);
          a.merge(b);
          const nc::ClassStats one = nc::class_stats(d.x, d.y, d.C);
          REQUIRE(a.counts() == one.counts());
          REQUIRE((a.means() - one.means()).cwiseAbs().maxCoeff() <= 1e-12 * one.means().cwiseAbs().maxCoeff());
          REQUIRE((a.class_sq_deviations() - one.class_sq_deviations()).cwiseAbs().maxCoeff() <=
                  1e-9 * one.class_sq_deviations().cwiseAbs().maxCoeff());
        },
        {}};
  r.expect.fill(kNA);
  r.expect[kEmpty] = ok("merging statistics without samples changes nothing (bitwise)");
  r.expect[kLength] = error({"merge: dim differs (4 vs 5)"});
  for (Case c : {kC1, kD1, kSingleton, kEmptyClass, kNearMax})
    r.expect[c] = ok("counts, means, squared deviations equal one pass over all rows");
  return r;
}

Row stats_within_covariance() {
  Row r{"`ClassStats::within_covariance`", [](Case c) {
          const Data d = make(c);
          const nc::ClassStats s = c == kEmpty ? nc::ClassStats(kC, kD) : nc::class_stats(d.x, d.y, d.C);
          const MatrixD w = s.within_covariance();
          REQUIRE(w.rows() == d.D());
          REQUIRE(w.cols() == d.D());
          REQUIRE(w.allFinite());
          REQUIRE(w == w.transpose());
          REQUIRE(w.diagonal().minCoeff() >= 0.0);
        },
        {}};
  r.expect.fill(kNA);
  r.expect[kEmpty] = error({"within_covariance: the statistics hold no samples yet"});
  for (Case c : {kC1, kD1, kSingleton, kEmptyClass}) r.expect[c] = ok("[D, D], finite, symmetric");
  // Float features near FLT_MAX: the scatter is formed in double (stats.hpp, ClassStats::add).
  r.expect[kNearMax] = ok("[D, D], finite, symmetric");
  return r;
}

Row class_stats_row() {
  Row r{"`class_stats`", [](Case c) {
          const Data d = make(c);
          const nc::ClassStats s = nc::class_stats(d.x, d.y, d.C);
          REQUIRE(s.num_classes() == d.C);
          REQUIRE(s.total_count() == kN);
          REQUIRE(s.means().allFinite());
          REQUIRE(s.class_sq_deviations().allFinite());
          if (c == kSingleton) REQUIRE((s.counts()[2] == 1 && s.class_sq_deviations()[2] == 0.0));
          if (c == kEmptyClass) REQUIRE((s.counts()[1] == 0 && s.num_nonempty_classes() == 2));
        },
        {}};
  r.expect[kEmpty] = error({"features is empty (0 rows)"});
  for (Case c : {kNaN, kPosInf, kNegInf}) r.expect[c] = nonfinite("features", c);
  r.expect[kLabelRange] = kLabelRangeErr;
  r.expect[kNegLabel] = kNegLabelErr;
  r.expect[kLength] = kLengthErr;
  r.expect[kKZero] = r.expect[kKOver] = kNA;
  r.expect[kC1] = ok("1 class of 12 samples, finite means");
  r.expect[kD1] = ok("finite means and squared deviations");
  r.expect[kSingleton] = ok("class 2: count 1, squared deviation 0");
  r.expect[kEmptyClass] = ok("class 1: count 0; 2 non-empty classes");
  r.expect[kNearMax] = ok("finite means and squared deviations (for the scatter see `within_covariance`)");
  return r;
}

Row directions_row(nc::Direction method, const std::string& name) {
  Row r{name, [method](Case c) {
          const Data d = make(c);
          nc::DirectionOptions o;
          o.method = method;
          o.num_classes = d.C;
          const MatrixF v = nc::nc_directions(d.x, d.y, o);
          require_unit_rows(v, d.C, d.D());
          if (c == kD1)
            for (Index k = 0; k < d.C; ++k) REQUIRE(std::abs(v(k, 0)) == 1.0f);
          if (c == kSingleton && method != nc::Direction::centered_mean) {
            const MatrixD want = d.x.row(kN - 1).cast<double>().normalized();
            REQUIRE((v.row(2).cast<double>() - want).norm() < 1e-6);
          }
        },
        {}};
  feature_cells(r, "features");
  r.expect[kLabelRange] = kLabelRangeErr;
  r.expect[kNegLabel] = kNegLabelErr;
  r.expect[kLength] = kLengthErr;
  r.expect[kKZero] = r.expect[kKOver] = kNA;
  r.expect[kC1] = method == nc::Direction::centered_mean
                      ? error({"centered_mean needs at least 2 classes, got num_classes = 1"})
                      : ok("[1, D], a unit row");
  r.expect[kD1] = ok("rows +1 or -1");
  r.expect[kSingleton] = method == nc::Direction::centered_mean ? ok("unit rows")
                                                                : ok("unit rows; class 2: its sample, normalized");
  r.expect[kEmptyClass] = error({"class(es) 1 have no samples; every class needs one for its direction"});
  // pc1 rescales a class's rows by a power of two before its float Gram matrix.
  r.expect[kNearMax] = ok("unit rows");
  return r;
}

Row init_head_data_row(nc::HeadInit method, const std::string& name) {
  Row r{name, [method](Case c) {
          const Data d = make(c);
          nc::HeadOptions o;
          o.method = method;
          o.num_classes = d.C;
          const MatrixF w = nc::init_head(d.x, d.y, o);
          require_unit_rows(w, d.C, d.D());
          if (method == nc::HeadInit::aligned_etf) {
            const MatrixD g = w.cast<double>() * w.cast<double>().transpose();
            for (Index i = 0; i < d.C; ++i)
              for (Index j = 0; j < d.C; ++j)
                if (i != j) REQUIRE(g(i, j) == Approx(-1.0 / double(d.C - 1)).margin(1e-6));
          }
        },
        {}};
  const bool etf = method == nc::HeadInit::aligned_etf;
  feature_cells(r, "features");
  r.expect[kLabelRange] = kLabelRangeErr;
  r.expect[kNegLabel] = kNegLabelErr;
  r.expect[kLength] = kLengthErr;
  r.expect[kKZero] = r.expect[kKOver] = kNA;
  r.expect[kC1] = etf ? error({"aligned_etf needs at least 2 classes, got num_classes = 1"}) : ok("[1, D], a unit row");
  r.expect[kD1] = etf ? error({"aligned_etf needs dim >= num_classes - 1", "got dim = 1, num_classes = 3"})
                      : ok("rows +1 or -1");
  r.expect[kSingleton] = etf ? ok("a simplex ETF: unit rows, pairwise cosine -1/2") : ok("unit rows");
  r.expect[kEmptyClass] = error({"class(es) 1 have no samples; every class needs one for its direction"});
  r.expect[kNearMax] = etf ? ok("a simplex ETF: unit rows, pairwise cosine -1/2") : ok("unit rows");
  return r;
}

Row init_head_free_row(nc::HeadInit method, const std::string& name) {
  Row r{name, [method](Case c) {
          nc::HeadOptions o;
          o.method = method;
          o.seed = 3;
          Index C = kC, d = kD;
          if (c == kEmpty) C = 0;
          if (c == kC1) C = 1;
          if (c == kD1) d = 1;
          if (is_nonfinite_case(c)) o.scale = bad_value(c);
          if (c == kLength) o.num_classes = 5;
          if (c == kNearMax) o.scale = 0.9 * double(kFloatMax);
          const MatrixF w = nc::init_head(C, d, o);
          REQUIRE(w.rows() == C);
          REQUIRE(w.cols() == d);
          REQUIRE(w.allFinite());
          if (method == nc::HeadInit::simplex_etf)
            for (Index k = 0; k < C; ++k) REQUIRE(w.row(k).cast<double>().norm() == Approx(o.scale).epsilon(1e-5));
        },
        {}};
  const bool etf = method == nc::HeadInit::simplex_etf;
  r.expect.fill(kNA);
  r.expect[kEmpty] = error({"num_classes must be positive, got 0"});
  r.expect[kNaN] = error({"scale must be positive and finite, got nan"});
  r.expect[kPosInf] = error({"scale must be positive and finite, got inf"});
  r.expect[kNegInf] = error({"scale must be positive and finite, got -inf"});
  r.expect[kLength] = error({"options.num_classes = 5 disagrees with num_classes = 3"});
  r.expect[kC1] = etf ? error({"simplex_etf needs at least 2 classes, got num_classes = 1"}) : ok("finite [1, 4]");
  r.expect[kD1] = etf ? error({"simplex_etf needs dim >= num_classes - 1", "got dim = 1, num_classes = 3"})
                      : ok("finite [3, 1]");
  // kaiming_normal entries can exceed `scale`: a head that would overflow float is refused.
  r.expect[kNearMax] = etf ? ok("scale 0.9 FLT_MAX: finite rows of norm `scale`")
                           : error({"makes the head overflow float"});
  return r;
}

Row perturbation_row() {
  Row r{"`Perturbation::perturb`", [](Case c) {
          nc::PerturbOptions po;
          po.sigma = 1e-3;
          po.seed = 3;
          if (is_nonfinite_case(c)) po.sigma = bad_value(c);
          const nc::Perturbation p(po);
          const Index C = c == kEmpty ? 0 : c == kC1 ? 1 : kC, d = c == kD1 ? 1 : kD;
          MatrixF w = head(C, d);
          if (c == kNearMax) w *= 0.9f * kFloatMax / w.cwiseAbs().maxCoeff();
          const MatrixF clean = w;
          unchanged_on_error([&] { return bytes_of(w); },
                             [&] {
                               auto guard = p.perturb(w, 4);
                               const MatrixF want = clean + p.noise<float>(C, d, 4);
                               REQUIRE(w.allFinite());
                               REQUIRE(bytes_of(w) == bytes_of(want));
                             });
          REQUIRE(bytes_of(w) == bytes_of(clean));
        },
        {}};
  r.expect.fill(kNA);
  r.expect[kEmpty] = error({"noise shape must be positive, got 0 x 4"});
  r.expect[kNaN] = error({"sigma must be finite and non-negative, got nan"});
  r.expect[kPosInf] = error({"sigma must be finite and non-negative, got inf"});
  r.expect[kNegInf] = error({"sigma must be finite and non-negative, got -inf"});
  for (Case c : {kC1, kD1, kNearMax}) r.expect[c] = ok("W = clean + noise inside the guard, restored bitwise after");
  return r;
}

Row drift_row() {
  Row r{"`DriftTracker`", [](Case c) {
          if (c == kEmpty) {
            const nc::DriftTracker t{MatrixF(0, kD)};
            return;
          }
          const Index C = c == kC1 ? 1 : kC, d = c == kD1 ? 1 : kD;
          nc::DriftTracker t(head(C, d, 1));
          t.update(head(C, d, 2));
          MatrixF w = c == kLength ? head(C, d + 1, 3) : head(C, d, 3, c, true);
          if (c == kNearMax) w *= 0.9f * kFloatMax / w.cwiseAbs().maxCoeff();
          unchanged_on_error([&] { return snapshot(t); }, [&] { t.update(w); });
          REQUIRE(t.num_updates() == 2);
          require_unit_interval(t.mean_squared_distance() / 4.0);
          REQUIRE(t.per_class().allFinite());
          REQUIRE(std::isfinite(t.from_initial()));
          REQUIRE(std::isfinite(t.path_length()));
          if (c == kD1)
            for (Index k = 0; k < C; ++k)
              REQUIRE((t.per_class()[k] == Approx(0.0).margin(1e-12) || t.per_class()[k] == Approx(4.0)));
        },
        {}};
  r.expect.fill(kNA);
  r.expect[kEmpty] = error({"reference is empty (0 x 4)"});
  for (Case c : {kNaN, kPosInf, kNegInf}) r.expect[c] = nonfinite("W", c);
  r.expect[kLength] = error({"W is 3 x 5, expected 3 x 4"});
  r.expect[kC1] = ok("mean squared distance in [0, 4]");
  r.expect[kD1] = ok("per-class distances 0 or 4");
  r.expect[kNearMax] = ok("finite, mean squared distance in [0, 4]");
  return r;
}

Row loss_row(bool softmax) {
  Row r{softmax ? "`norm_softmax_loss`" : "`proxy_anchor_loss`", [softmax](Case c) {
          const Data d = make(c);
          const MatrixF w = head(d.C, d.D());
          const nc::LossResult res = softmax ? nc::norm_softmax_loss(d.x, d.y, w) : nc::proxy_anchor_loss(d.x, d.y, w);
          REQUIRE(std::isfinite(res.loss));
          REQUIRE(res.grad_embeddings.rows() == d.x.rows());
          REQUIRE(res.grad_embeddings.cols() == d.D());
          REQUIRE(res.grad_weights.rows() == d.C);
          REQUIRE(res.grad_weights.cols() == d.D());
          REQUIRE(res.grad_embeddings.allFinite());
          REQUIRE(res.grad_weights.allFinite());
          if (softmax && c == kC1) {
            REQUIRE(res.loss == 0.0);
            REQUIRE(res.grad_embeddings.cwiseAbs().maxCoeff() == 0.0f);
            REQUIRE(res.grad_weights.cwiseAbs().maxCoeff() == 0.0f);
          }
        },
        {}};
  feature_cells(r, "embeddings");
  r.expect[kLabelRange] = kLabelRangeErr;
  r.expect[kNegLabel] = kNegLabelErr;
  r.expect[kLength] = kLengthErr;
  r.expect[kKZero] = r.expect[kKOver] = kNA;
  r.expect[kC1] = softmax ? ok("loss 0, zero gradients") : kFiniteLoss;
  for (Case c : {kD1, kSingleton, kEmptyClass, kNearMax}) r.expect[c] = kFiniteLoss;
  return r;
}

Row nc1_stats_row() {
  Row r{"`nc1` / `nc1_detailed` (stats)", [](Case c) {
          const Data d = make(c);
          const nc::ClassStats s = c == kEmpty ? nc::ClassStats(kC, kD) : nc::class_stats(d.x, d.y, d.C);
          const nc::NC1Result p = nc::nc1_detailed(s);
          nc::NC1Options exact;
          exact.path = nc::NC1Options::Path::exact;
          const nc::NC1Result e = nc::nc1_detailed(s, exact);
          REQUIRE(nc::nc1(s) == p.value);
          REQUIRE(std::isfinite(p.value));
          REQUIRE(p.value >= 0.0);
          REQUIRE(e.value == Approx(p.value).epsilon(1e-6));
          REQUIRE(p.num_classes_used == s.num_nonempty_classes());
        },
        {}};
  r.expect.fill(kNA);
  r.expect[kEmpty] = error({"stats hold no samples"});
  r.expect[kC1] = kNoSamplesErr;
  for (Case c : {kD1, kSingleton}) r.expect[c] = ok("finite, >= 0; projected = exact");
  r.expect[kEmptyClass] = ok("finite; 2 classes used");
  r.expect[kNearMax] = ok("finite, >= 0; projected = exact");
  return r;
}

/// The rows statistics are taken from for a call on (features, labels, stats): the case's own
/// rows where the case is about classes or scale, else valid rows, so that the case's bad
/// features or labels reach the call itself.
Data stats_data(Case c, const Data& d) {
  const bool own = c == kC1 || c == kD1 || c == kSingleton || c == kEmptyClass || c == kNearMax;
  return own ? d : valid(kC, kD);
}

Row nc1_data_row() {
  Row r{"`nc1` / `nc1_detailed` (features, labels, stats)", [](Case c) {
          const Data d = make(c);
          const Data sd = stats_data(c, d);
          const nc::ClassStats s = nc::class_stats(sd.x, sd.y, sd.C, nc::StatsOptions{false, 0});
          const nc::NC1Result res = nc::nc1_detailed(d.x, d.y, s);
          REQUIRE(nc::nc1(d.x, d.y, s) == res.value);
          REQUIRE(std::isfinite(res.value));
          // The float64 reference: nc1 from statistics of the same rows in double.
          const double ref = nc::nc1(nc::class_stats(d.x.cast<double>(), d.y, d.C));
          REQUIRE(res.value == Approx(ref).epsilon(1e-5));
        },
        {}};
  feature_cells(r, "features");
  r.expect[kLabelRange] = kLabelRangeErr;
  r.expect[kNegLabel] = kNegLabelErr;
  r.expect[kLength] = kLengthErr;
  r.expect[kKZero] = r.expect[kKOver] = kNA;
  r.expect[kC1] = kNoSamplesErr;
  // Data of extreme scale (near FLT_MAX, or tiny) take the data pass in double.
  for (Case c : {kD1, kSingleton, kEmptyClass, kNearMax})
    r.expect[c] = ok("finite; equals the float64 computation within 1e-5");
  return r;
}

Row nc_metrics_row() {
  Row r{"`nc_metrics` (stats, W)", [](Case c) {
          const bool own = !(is_nonfinite_case(c) || c == kLength);
          const Data d = own ? make(c) : valid(kC, kD);
          const nc::ClassStats s = c == kEmpty ? nc::ClassStats(kC, kD) : nc::class_stats(d.x, d.y, d.C);
          const MatrixF w = c == kLength ? head(kC, kD + 1) : head(d.C, d.D(), 5, c, true);
          const nc::NCReport rep = nc::nc_metrics(s, w);
          REQUIRE(std::isfinite(rep.nc1));
          REQUIRE(std::isfinite(rep.cdnv));
          REQUIRE(std::isfinite(rep.trace_ratio));
          REQUIRE(std::isfinite(rep.nc3_self_duality));
          REQUIRE(rep.num_empty_classes == (c == kEmptyClass ? 1 : 0));
        },
        {}};
  r.expect.fill(kNA);
  r.expect[kEmpty] = error({"stats hold no samples"});
  for (Case c : {kNaN, kPosInf, kNegInf}) r.expect[c] = nonfinite("W", c);
  r.expect[kLength] = error({"W is 3 x 5, expected num_classes x dim = 3 x 4"});
  r.expect[kC1] = kNoSamplesErr;
  for (Case c : {kD1, kSingleton}) r.expect[c] = ok("finite NC1, CDNV, trace ratio, NC3");
  r.expect[kEmptyClass] = ok("finite metrics; num_empty_classes = 1");
  r.expect[kNearMax] = ok("finite NC1, CDNV, trace ratio, NC3");
  return r;
}

Row nc4_row() {
  Row r{"`nc4`", [](Case c) {
          const Data d = make(c);
          const Data sd = stats_data(c, d);
          const nc::ClassStats s = nc::class_stats(sd.x, sd.y, sd.C, nc::StatsOptions{false, 0});
          const MatrixF w = head(sd.C, sd.D());
          require_unit_interval(nc::nc4(d.x, d.y, s, w));
          nc::NC4Options o;
          o.rule = nc::NC4Options::Rule::cosine;
          o.per_class_average = true;
          require_unit_interval(nc::nc4(d.x, d.y, s, w, o));
        },
        {}};
  feature_cells(r, "features");
  r.expect[kLabelRange] = kLabelRangeErr;
  r.expect[kNegLabel] = kNegLabelErr;
  r.expect[kLength] = kLengthErr;
  r.expect[kKZero] = r.expect[kKOver] = kNA;
  r.expect[kC1] = kNoSamplesErr;
  for (Case c : {kD1, kSingleton, kEmptyClass, kNearMax}) r.expect[c] = ok("a rate in [0, 1]");
  return r;
}

Row knn_row(std::vector<nc::Similarity> sims, const std::string& name) {
  Row r{name, [sims](Case c) {
          const Data d = make(c);
          const Data g = valid(kC, c == kLength ? kD + 1 : d.D());
          const Index k = c == kKZero ? 0 : c == kKOver ? 13 : 3;
          for (nc::Similarity sim : sims) {
            nc::KnnOptions o;
            o.similarity = sim;
            o.threads = 1;
            const nc::KnnResult res = nc::knn(d.x, g.x, k, o);
            REQUIRE(res.indices.rows() == kN);
            REQUIRE(res.indices.cols() == k);
            REQUIRE(res.scores.allFinite());
            for (Index i = 0; i < kN; ++i)
              for (Index j = 0; j < k; ++j) {
                REQUIRE(res.indices(i, j) >= 0);
                REQUIRE(res.indices(i, j) < kN);
                for (Index m = 0; m < j; ++m) REQUIRE(res.indices(i, m) != res.indices(i, j));
                if (j > 0) REQUIRE(res.scores(i, j - 1) >= res.scores(i, j));
              }
          }
        },
        {}};
  const bool cosine = sims.size() == 1 && sims[0] == nc::Similarity::cosine;
  r.expect.fill(kNA);
  feature_cells(r, "queries");
  r.expect[kLength] = error({"gallery has 5 columns but queries have 4 (dimension mismatch)"});
  r.expect[kKZero] = error({"k must be positive, got k = 0"});
  r.expect[kKOver] = error({"k = 13 is larger than the gallery (12 rows)"});
  const std::string good = ok("[12, 3]: distinct indices in [0, 12), finite scores, descending");
  r.expect[kD1] = good;
  // Float scores of rows near FLT_MAX would overflow: refused, naming the row norms.
  r.expect[kNearMax] = cosine ? good : error({"scores would overflow float", "scale the features down"});
  return r;
}

Row retrieval_loo_row() {
  Row r{"`evaluate_retrieval` (leave-one-out)", [](Case c) {
          const Data d = make(c);
          nc::RetrievalOptions o;
          o.ks = c == kKZero ? std::vector<int>{0} : c == kKOver ? std::vector<int>{12} : std::vector<int>{1, 2, 4};
          o.threads = 1;
          const nc::RetrievalReport rep = nc::evaluate_retrieval(d.x, d.y, o);
          REQUIRE(rep.num_queries + rep.num_lone_queries == kN);
          for (double v : rep.recall_at_k) require_unit_interval(v);
          for (double v : rep.precision_at_k) require_unit_interval(v);
          require_unit_interval(rep.map_at_r);
          require_unit_interval(rep.r_precision);
          require_unit_interval(rep.mrr);
          if (c == kC1) {
            for (double v : rep.recall_at_k) REQUIRE(v == 1.0);
            REQUIRE((rep.map_at_r == 1.0 && rep.mrr == 1.0));
          }
          if (c == kSingleton || c == kLabelRange) REQUIRE(rep.num_lone_queries == 1);
          if (c == kEmptyClass) REQUIRE(rep.num_classes_evaluated == 2);
        },
        {}};
  feature_cells(r, "features");
  // Labels are bounded below, and above by max(2^24, 16 N) (per-class storage follows the
  // largest label; core/check.hpp).
  r.expect[kLabelRange] = ok("label 3 is one more class: 1 lone query");
  r.expect[kNegLabel] = kNegLabelErr;
  r.expect[kLength] = kLengthErr;
  r.expect[kKZero] = error({"ks[0] = 0 must be positive"});
  r.expect[kKOver] =
      error({"ks[0] = K = 12 is larger than the gallery (11 rows besides the query, leave-one-out)"});
  r.expect[kC1] = ok("Recall@K = MAP@R = MRR = 1");
  r.expect[kD1] = ok("metrics in [0, 1]");
  r.expect[kSingleton] = ok("1 lone query, 11 evaluated");
  r.expect[kEmptyClass] = ok("2 classes evaluated");
  r.expect[kNearMax] = ok("metrics in [0, 1]");
  return r;
}

Row retrieval_qg_row() {
  Row r{"`evaluate_retrieval` (queries, gallery)", [](Case c) {
          const Data q = make(c);
          const Data g = valid(q.C, q.D());
          nc::RetrievalOptions o;
          o.ks = c == kKZero ? std::vector<int>{0} : c == kKOver ? std::vector<int>{13} : std::vector<int>{1, 2, 4};
          o.threads = 1;
          const nc::RetrievalReport rep = nc::evaluate_retrieval(q.x, q.y, g.x, g.y, o);
          REQUIRE(rep.num_queries + rep.num_lone_queries == kN);
          for (double v : rep.recall_at_k) require_unit_interval(v);
          require_unit_interval(rep.map_at_r);
          require_unit_interval(rep.mrr);
          if (c == kC1) {
            for (double v : rep.recall_at_k) REQUIRE(v == 1.0);
            REQUIRE((rep.map_at_r == 1.0 && rep.mrr == 1.0));
          }
          if (c == kLabelRange) REQUIRE(rep.num_lone_queries == 1);
        },
        {}};
  feature_cells(r, "queries");
  r.expect[kLabelRange] = ok("query label 3 has no gallery item: 1 lone query");
  r.expect[kNegLabel] = error({"query_labels has a negative label -1 at row 5"});
  r.expect[kLength] = error({"query_labels has 11 entries, expected 12 (one per row)"});
  r.expect[kKZero] = error({"ks[0] = 0 must be positive"});
  r.expect[kKOver] = error({"ks[0] = K = 13 is larger than the gallery (12 rows)"});
  r.expect[kC1] = ok("Recall@K = MAP@R = MRR = 1");
  for (Case c : {kD1, kSingleton, kEmptyClass, kNearMax}) r.expect[c] = ok("metrics in [0, 1]");
  return r;
}

/// The whole matrix, in the order of docs/errors.md.
const std::vector<Row>& matrix() {
  static const std::vector<Row> rows = {
      stats_add(),
      stats_merge(),
      stats_within_covariance(),
      class_stats_row(),
      directions_row(nc::Direction::pc1, "`nc_directions` (pc1)"),
      directions_row(nc::Direction::mean, "`nc_directions` (mean)"),
      directions_row(nc::Direction::centered_mean, "`nc_directions` (centered_mean)"),
      init_head_data_row(nc::HeadInit::nc_pc1, "`init_head(features, labels)` (nc_pc1)"),
      init_head_data_row(nc::HeadInit::aligned_etf, "`init_head(features, labels)` (aligned_etf)"),
      init_head_free_row(nc::HeadInit::simplex_etf, "`init_head(C, D)` (simplex_etf)"),
      init_head_free_row(nc::HeadInit::kaiming_normal, "`init_head(C, D)` (kaiming_normal)"),
      perturbation_row(),
      drift_row(),
      loss_row(true),
      loss_row(false),
      nc1_stats_row(),
      nc1_data_row(),
      nc_metrics_row(),
      nc4_row(),
      knn_row({nc::Similarity::cosine}, "`knn` (cosine)"),
      knn_row({nc::Similarity::inner_product, nc::Similarity::neg_squared_l2},
              "`knn` (inner_product, neg_squared_l2)"),
      retrieval_loo_row(),
      retrieval_qg_row(),
  };
  return rows;
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

/// The `quoted` parts of an "error:" cell.
std::vector<std::string> quoted(const std::string& cell) {
  std::vector<std::string> parts;
  std::size_t p = 0;
  while ((p = cell.find('`', p)) != std::string::npos) {
    const std::size_t q = cell.find('`', p + 1);
    if (q == std::string::npos) break;
    parts.push_back(cell.substr(p + 1, q - p - 1));
    p = q + 1;
  }
  return parts;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(' '), e = s.find_last_not_of(' ');
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

/// Cells of a Markdown table row "| a | b |" (no escaped pipes).
std::vector<std::string> cells_of(const std::string& line) {
  std::vector<std::string> out;
  std::size_t p = line.find('|');
  while (p != std::string::npos) {
    const std::size_t q = line.find('|', p + 1);
    if (q == std::string::npos) break;
    out.push_back(trim(line.substr(p + 1, q - p - 1)));
    p = q;
  }
  return out;
}

std::string table_line(const std::vector<std::string>& cells) {
  std::string s = "|";
  for (const auto& c : cells) s += " " + c + " |";
  return s;
}

std::vector<std::string> header_cells() {
  std::vector<std::string> h = {"function"};
  for (const char* n : kCaseNames) h.push_back(n);
  return h;
}

std::vector<std::string> row_cells(const Row& row) {
  std::vector<std::string> c = {row.function};
  for (const auto& e : row.expect) c.push_back(e);
  return c;
}

}  // namespace

TEST_CASE("bad inputs: every entry point x every bad input has its documented outcome", "[bad_inputs]") {
  for (const Row& row : matrix()) {
    for (int i = 0; i < kNumCases; ++i) {
      const Case c = static_cast<Case>(i);
      const std::string& want = row.expect[i];
      if (want.empty() || want == kNA || starts_with(want, "open: ")) continue;
      DYNAMIC_SECTION(row.function << " | " << kCaseNames[i] << " | " << want) {
        if (starts_with(want, "error: ")) {
          REQUIRE_THROWS_AS(row.call(c), nc::error);
          REQUIRE_THROWS_WITH(row.call(c), Catch::StartsWith("ncml: "));
          for (const std::string& part : quoted(want)) REQUIRE_THROWS_WITH(row.call(c), Catch::Contains(part));
        } else {
          REQUIRE(starts_with(want, "ok: "));
          row.call(c);  // must not throw; checks the stated property
        }
      }
    }
  }
}

TEST_CASE("bad inputs: every cell of the matrix is filled", "[bad_inputs]") {
  for (const Row& row : matrix())
    for (int i = 0; i < kNumCases; ++i) {
      INFO(row.function << " | " << kCaseNames[i]);
      const std::string& e = row.expect[i];
      CHECK((e == kNA || starts_with(e, "ok: ") || starts_with(e, "open: ") ||
             (starts_with(e, "error: ") && !quoted(e).empty())));
    }
}

// docs/errors.md holds this matrix as a Markdown table; it must match cell by cell. Print the
// table with NCML_PRINT_ERROR_TABLE=1 (e.g. after changing a row here).
TEST_CASE("bad inputs: docs/errors.md shows the same matrix", "[bad_inputs][docs]") {
  std::vector<std::string> want = {table_line(header_cells())};
  for (const Row& row : matrix()) want.push_back(table_line(row_cells(row)));
  if (std::getenv("NCML_PRINT_ERROR_TABLE")) {
    std::string sep = "|";
    for (std::size_t i = 0; i < header_cells().size(); ++i) sep += " --- |";
    std::cout << want[0] << "\n" << sep << "\n";
    for (std::size_t i = 1; i < want.size(); ++i) std::cout << want[i] << "\n";
  }
  const std::string path = std::string(NCML_DATA_DIR) + "/../docs/errors.md";
  std::ifstream in(path);
  REQUIRE(in.good());
  std::vector<std::vector<std::string>> table;
  std::string line;
  bool inside = false;
  while (std::getline(in, line)) {
    if (!inside && starts_with(line, "| function |")) inside = true;
    if (inside) {
      if (!starts_with(line, "|")) break;
      const auto cells = cells_of(line);
      if (!cells.empty() && cells[0] == "---") continue;  // the separator row
      table.push_back(cells);
    }
  }
  REQUIRE(table.size() == matrix().size() + 1);
  CHECK(table[0] == header_cells());
  for (std::size_t i = 0; i < matrix().size(); ++i) {
    const auto expect = row_cells(matrix()[i]);
    INFO("row " << i << ": " << expect[0]);
    REQUIRE(table[i + 1].size() == expect.size());
    for (std::size_t j = 0; j < expect.size(); ++j) {
      INFO("column " << j << " (" << header_cells()[j] << ")");
      CHECK(table[i + 1][j] == expect[j]);
    }
  }
}

// Cases outside the matrix, each once a defect found by the fuzz targets (tests/fuzz).
TEST_CASE("labels far beyond the rows are refused before anything is allocated", "[errors]") {
  MatrixF x = MatrixF::Random(4, 3);
  const std::vector<int64_t> y = {0, 1, 2000000000, 1};
  CHECK_THROWS_WITH(nc::class_stats(x, y), Catch::Contains("implies 2000000001 classes for 4 rows"));
  CHECK_THROWS_WITH(nc::evaluate_retrieval(x, y), Catch::Contains("relabel the classes"));
  // An explicit num_classes (and any class count up to 2^24) is the caller's choice.
  const std::vector<int64_t> y2 = {0, 1, 1000, 1};
  CHECK(nc::class_stats(x, y2, -1, nc::StatsOptions{false, 1}).num_classes() == 1001);
}

TEST_CASE("one-pass NC1 of float features of extreme scale equals the double computation", "[errors]") {
  std::vector<int> labels;
  const MatrixD base = nct::mixture(60, 5, 3, labels, 4, 3.0, 1.0);
  for (double scale : {1e-42, 1e-20, 1e25}) {
    INFO("scale " << scale);
    const MatrixF x = (base * scale).cast<float>();
    const nc::ClassStats s = nc::class_stats(x, labels, 3, nc::StatsOptions{false, 1});
    const double v = nc::nc1(x, labels, s);
    const double ref = nc::nc1(nc::class_stats(x.cast<double>(), labels, 3));
    REQUIRE(std::isfinite(v));
    CHECK(v == Approx(ref).epsilon(1e-5));
  }
}

TEST_CASE("npy: an empty array of the wrong dtype is refused; writing 0 rows allocates nothing", "[errors]") {
  const std::string dir = NCML_TEST_TMP_DIR;
  const std::string f32 = dir + "/bad_inputs_empty_f32.npy";
  nc::write_npy(f32, MatrixF(0, 4));
  CHECK(nc::read_npy_matrix<float>(f32).rows() == 0);
  CHECK_THROWS_WITH(nc::read_npy_matrix<int64_t>(f32), Catch::Contains("dtype float32 where integers"));
  CHECK_THROWS_WITH(nc::read_npy_vector<int64_t>(f32), Catch::Contains("1-D"));
  const std::string wide = dir + "/bad_inputs_empty_wide.npy";
  nc::write_npy(wide, Eigen::Map<const MatrixF>(nullptr, 0, std::numeric_limits<Index>::max()));
  CHECK(nc::read_npy_matrix<float>(wide).cols() == std::numeric_limits<Index>::max());
}

TEST_CASE("IDX: overflowing sizes and payloads longer than the header are refused", "[errors]") {
  // 3-D, 0 items of 0x830000fb x 0xffffff00 bytes: the item size overflows.
  const uint8_t overflow[16] = {0, 0, 8, 3, 0, 0, 0, 0, 0x83, 0, 0, 0xfb, 0xff, 0xff, 0xff, 0};
  CHECK_THROWS_WITH(nc::detail::parse_idx(overflow, sizeof(overflow), "mem"), Catch::Contains("IDX sizes overflow"));
  // A file whose header announces 1 byte followed by a megabyte: refused after reading 1 byte more.
  const std::string path = std::string(NCML_TEST_TMP_DIR) + "/bad_inputs_long.idx";
  {
    std::ofstream out(path, std::ios::binary);
    const uint8_t header[8] = {0, 0, 8, 1, 0, 0, 0, 1};
    out.write(reinterpret_cast<const char*>(header), 8);
    const std::vector<char> tail(1 << 20, 7);
    out.write(tail.data(), static_cast<std::streamsize>(tail.size()));
  }
  CHECK_THROWS_WITH(nc::read_idx(path), Catch::Contains("more than 1 bytes, the header says 1"));
  // And one whose header announces more than the file holds.
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    const uint8_t header[12] = {0, 0, 8, 2, 0, 0x10, 0, 0, 0, 0, 0x10, 0};  // 2^20 x 2^12
    out.write(reinterpret_cast<const char*>(header), 12);
  }
  CHECK_THROWS_WITH(nc::read_idx(path), Catch::Contains("IDX payload has 0 bytes, the header says 4294967296"));
}

}  // namespace test_bad_inputs
