// ncml: the command-line tool. NC directions, heads, NC metrics, retrieval metrics and exact
// k-NN search on .npy files, for embeddings exported from any framework (docs/cli.md).
//
//   ncml init-head --features X.npy --labels y.npy --method nc_pc1 --out W.npy
//   ncml metrics   --features X.npy --labels y.npy [--head W.npy] [--k 1,2,4,8] [--json]
//   ncml knn       --queries Q.npy [--gallery G.npy] --k 100 --out-indices I.npy --out-scores S.npy
//
// Exit status: 0 success; 2 bad input or usage (one line on stderr, `ncml: <file>: <problem>`
// where a file is to blame); 1 any other failure (out of memory). Outputs are written only
// after every computation has succeeded, each to a temporary file renamed into place, so a
// failed run never leaves a partial or stale-looking output behind.
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <nc/head.hpp>
#include <nc/io/npy.hpp>
#include <nc/knn.hpp>
#include <nc/metrics/nc.hpp>
#include <nc/metrics/retrieval.hpp>
#include <nc/stats.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

#ifndef NCML_VERSION_STRING
#define NCML_VERSION_STRING "unknown"
#endif

namespace {

using nc::Index;
using json = nlohmann::ordered_json;

constexpr int kExitFailure = 1;
constexpr int kExitBadInput = 2;

/// A problem with a named input or output; becomes `ncml: <file>: <problem>`.
[[noreturn]] void bad(const std::string& file, const std::string& problem) {
  throw nc::error("ncml: " + file + ": " + problem);
}

/// A usage problem (options that do not go together); becomes `ncml: <problem>`.
[[noreturn]] void usage(const std::string& problem) { throw nc::error("ncml: " + problem); }

/// The one-line message for an nc::error: without the library's "ncml: " prefix and its
/// " (header.hpp:123)" source location, which help developers, not users of the tool.
std::string user_message(const std::string& what) {
  std::string m = what.rfind("ncml: ", 0) == 0 ? what.substr(6) : what;
  const auto open = m.rfind(" (");
  if (open != std::string::npos && !m.empty() && m.back() == ')') {
    const std::string loc = m.substr(open + 2, m.size() - open - 3);
    const auto colon = loc.rfind(':');
    const bool is_location = colon != std::string::npos && colon + 1 < loc.size() &&
                             loc.find_first_not_of("0123456789", colon + 1) == std::string::npos &&
                             (loc.find(".hpp:") != std::string::npos || loc.find(".cuh:") != std::string::npos);
    if (is_location) m.erase(open);
  }
  for (char& c : m)
    if (c == '\n' || c == '\r') c = ' ';
  return m;
}

// ---------------------------------------------------------------------------------------
// Progress bar on stderr, drawn only for work that takes longer than a second, only when
// stderr is a terminal, and never with --quiet. The library calls it on the calling thread.

class ProgressBar {
 public:
  ProgressBar(std::string label, bool enabled)
      : label_(std::move(label)), enabled_(enabled), start_(Clock::now()), last_(start_) {}
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ~ProgressBar() { clear(); }

  std::function<void(double)> callback() {
    if (!enabled_) return {};
    return [this](double f) { update(f); };
  }

  /// Erases the bar (before results are printed).
  void clear() {
    if (drawn_) std::fputs("\r\033[K", stderr);
    drawn_ = false;
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;

  void update(double f) {
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    if (elapsed < 1.0 || (drawn_ && now - last_ < std::chrono::milliseconds(100))) return;
    last_ = now;
    f = std::min(1.0, std::max(0.0, f));
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(f * kWidth);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.append(static_cast<std::size_t>(kWidth - filled), '.');
    std::fprintf(stderr, "\r%s [%s] %3d%%  %.0f s", label_.c_str(), bar.c_str(), static_cast<int>(f * 100), elapsed);
    if (f > 0.01) std::fprintf(stderr, ", about %.0f s left", elapsed * (1 - f) / f);
    std::fputs("\033[K", stderr);
    std::fflush(stderr);
    drawn_ = true;
  }

  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  Clock::time_point start_, last_;
};

struct Global {
  int threads = 0;
  bool quiet = false;
  bool progress() const { return !quiet && isatty(STDERR_FILENO); }
};

// ---------------------------------------------------------------------------------------
// Inputs. Features are float32 or float64 2-D arrays, kept in their own precision; labels
// are int32, int64 or uint8 1-D arrays, widened to int64.

using Features = std::variant<nc::MatrixF, nc::MatrixD>;

Index rows(const Features& x) { return std::visit([](const auto& m) { return m.rows(); }, x); }
Index cols(const Features& x) { return std::visit([](const auto& m) { return m.cols(); }, x); }
const char* dtype(const Features& x) { return std::holds_alternative<nc::MatrixF>(x) ? "float32" : "float64"; }

template <class T>
void check_finite(const nc::Matrix<T>& x, const std::string& file) {
  for (Index i = 0; i < x.rows(); ++i) {
    if (x.row(i).allFinite()) continue;
    for (Index j = 0; j < x.cols(); ++j)
      if (!std::isfinite(x(i, j))) {
        std::ostringstream s;
        s << "non-finite value " << x(i, j) << " at row " << i << ", column " << j;
        bad(file, s.str());
      }
  }
}

/// A non-empty, finite 2-D float32 or float64 array.
Features read_features(const std::string& file) {
  const nc::NpyHeader h = nc::read_npy_header(file);
  if (h.dtype != nc::NpyDtype::float32 && h.dtype != nc::NpyDtype::float64)
    bad(file, std::string("dtype ") + nc::to_string(h.dtype) +
                  " where float32 or float64 embeddings are expected; convert with a.astype(np.float32)");
  Features x;
  if (h.dtype == nc::NpyDtype::float32)
    x = nc::read_npy_matrix<float>(file);
  else
    x = nc::read_npy_matrix<double>(file);
  if (rows(x) == 0 || cols(x) == 0)
    bad(file, "empty array of shape (" + std::to_string(rows(x)) + ", " + std::to_string(cols(x)) + ")");
  std::visit([&](const auto& m) { check_finite(m, file); }, x);
  return x;
}

/// Makes both float64 when one of them is (float32 to float64 is exact).
void common_precision(Features& a, Features& b) {
  if (a.index() == b.index()) return;
  if (auto* f = std::get_if<nc::MatrixF>(&a)) a = nc::MatrixD(f->cast<double>());
  if (auto* f = std::get_if<nc::MatrixF>(&b)) b = nc::MatrixD(f->cast<double>());
}

/// Labels for the `n` rows of `rows_file`: non-negative, below `limit` when limit >= 0
/// (`limit_why` says where the limit comes from), and not so large that per-class storage
/// for max(label) + 1 classes of dimension `dim` would be absurd. Returns max(label) + 1.
Index check_labels(const std::vector<int64_t>& y, const std::string& file, Index n, const std::string& rows_file,
                   Index dim, Index limit = -1, const std::string& limit_why = "") {
  if (Index(y.size()) != n)
    bad(file, std::to_string(y.size()) + " labels for the " + std::to_string(n) + " rows of " + rows_file);
  int64_t top = -1;
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (y[i] < 0) bad(file, "negative label " + std::to_string(y[i]) + " at index " + std::to_string(i));
    if (limit >= 0 && y[i] >= limit)
      bad(file, "label " + std::to_string(y[i]) + " at index " + std::to_string(i) + " is out of range [0, " +
                    std::to_string(limit) + ")" + limit_why);
    if (y[i] > top) top = y[i];
  }
  // Sparse label ids are fine while the per-class storage (C x D doubles) stays small.
  const double classes = double(top) + 1;
  if (limit < 0 && classes > double(n) && classes * double(dim) * 8 > double(int64_t(1) << 30))
    bad(file, "label " + std::to_string(top) + " would make " + std::to_string(top + 1) + " classes for " +
                  std::to_string(n) + " rows; labels must be class indices 0..C-1 (remap them with "
                  "np.unique(y, return_inverse=True)[1])");
  return Index(top + 1);
}

std::vector<int64_t> read_labels(const std::string& file) { return nc::read_npy_vector<int64_t>(file); }

/// Fails early (before any computation) when `path` cannot become an output file.
void check_output_path(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec)) bad(path, "is a directory");
  const fs::path parent = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec)) bad(path, "cannot write (no such directory " + parent.string() + ")");
  if (access(parent.c_str(), W_OK) != 0) bad(path, std::string("cannot write (") + std::strerror(errno) + ")");
}

/// Names of the values of an enum with a to_string overload, for option parsing.
template <class E>
std::map<std::string, E> names_of(std::initializer_list<E> values) {
  std::map<std::string, E> m;
  for (E v : values) m[nc::to_string(v)] = v;
  return m;
}

/// Adds an option that takes one of the names of `choices` and stores the enum value.
template <class E>
CLI::Option* add_choice(CLI::App* app, const std::string& name, E& target, const std::map<std::string, E>& choices,
                        const std::string& help) {
  std::vector<std::string> keys;
  for (const auto& kv : choices) keys.push_back(kv.first);
  return app
      ->add_option_function<std::string>(
          name, [&target, choices](const std::string& v) { target = choices.at(v); }, help)
      ->check(CLI::IsMember(keys))
      ->default_str(nc::to_string(target));
}

// ---------------------------------------------------------------------------------------
// ncml init-head

struct InitHeadArgs {
  std::string features, labels, out;
  nc::HeadInit method = nc::HeadInit::nc_pc1;
  double scale = 1.0;
  uint64_t seed = 0;
  Index num_classes = -1, dim = -1;
};

void run_init_head(const InitHeadArgs& a, const Global& g) {
  const bool data = !a.features.empty() || !a.labels.empty();
  if (data && (a.features.empty() || a.labels.empty())) usage("init-head: give both --features and --labels");
  if (nc::head_needs_data(a.method) && !data)
    usage(std::string("init-head: --method ") + nc::to_string(a.method) + " needs --features and --labels");
  if (!data && (a.num_classes < 0 || a.dim < 0))
    usage("init-head: give --features and --labels, or --num-classes and --dim for a data-free method");
  if (data && a.dim >= 0) usage("init-head: --dim is for data-free heads without --features");
  check_output_path(a.out);

  nc::HeadOptions o;
  o.method = a.method;
  o.scale = a.scale;
  o.seed = a.seed;
  o.num_classes = a.num_classes;
  o.threads = g.threads;
  nc::MatrixF w;
  if (data) {
    const Features x = read_features(a.features);
    const std::vector<int64_t> y = read_labels(a.labels);
    check_labels(y, a.labels, rows(x), a.features, cols(x), a.num_classes,
                 a.num_classes >= 0 ? " (--num-classes " + std::to_string(a.num_classes) + ")" : "");
    w = std::visit([&](const auto& m) { return nc::init_head(m, y, o); }, x);
  } else {
    w = nc::init_head(a.num_classes, a.dim, o);
  }
  nc::write_npy(a.out, w);
}

// ---------------------------------------------------------------------------------------
// ncml metrics

struct MetricsArgs {
  std::string features, labels, head;
  std::string queries, query_labels, gallery, gallery_labels;
  std::vector<int> ks = {1, 2, 4, 8};
  nc::Similarity similarity = nc::Similarity::cosine;
  bool json = false;
  bool no_retrieval = false;
};

json nc_json(const nc::NCReport& r, Index num_classes, std::optional<double> nc4) {
  return json{{"nc1", r.nc1},
              {"trace_sw", r.trace_sw},
              {"trace_sb", r.trace_sb},
              {"trace_ratio", r.trace_ratio},
              {"cdnv", r.cdnv},
              {"nc2_etf_error", r.nc2_etf_error},
              {"nc2_equinorm", r.nc2_equinorm},
              {"nc2_equiangularity", r.nc2_equiangularity},
              {"nc2_max_angle", r.nc2_max_angle},
              {"nc3_self_duality", r.nc3_self_duality},
              {"nc3_etf_error", r.nc3_etf_error},
              {"nc4", nc4 ? json(*nc4) : json(nullptr)},
              {"rank", r.rank},
              {"num_classes", num_classes},
              {"num_classes_used", r.num_classes_used},
              {"num_empty_classes", r.num_empty_classes},
              {"num_samples", r.num_samples}};
}

json by_k(const std::vector<int>& ks, const std::vector<double>& v) {
  json o = json::object();
  for (std::size_t i = 0; i < ks.size() && i < v.size(); ++i) o[std::to_string(ks[i])] = v[i];
  return o;
}

json retrieval_json(const nc::RetrievalReport& r, const std::string& mode, nc::Similarity s) {
  return json{{"mode", mode},
              {"similarity", nc::to_string(s)},
              {"ks", r.ks},
              {"recall_at_k", by_k(r.ks, r.recall_at_k)},
              {"precision_at_k", by_k(r.ks, r.precision_at_k)},
              {"map_at_r", r.map_at_r},
              {"r_precision", r.r_precision},
              {"mrr", r.mrr},
              {"num_queries", r.num_queries},
              {"num_lone_queries", r.num_lone_queries},
              {"class_avg_recall_at_k", by_k(r.ks, r.class_avg_recall_at_k)},
              {"class_avg_precision_at_k", by_k(r.ks, r.class_avg_precision_at_k)},
              {"class_avg_map_at_r", r.class_avg_map_at_r},
              {"class_avg_r_precision", r.class_avg_r_precision},
              {"class_avg_mrr", r.class_avg_mrr},
              {"num_classes_evaluated", r.num_classes_evaluated}};
}

json input_json(const std::string& path, const Features& x) {
  return json{{"path", path}, {"rows", rows(x)}, {"dim", cols(x)}, {"dtype", dtype(x)}};
}

/// The readable form of the report: one "name  value" line per number.
void print_table(const json& j) {
  auto value = [](const json& v) -> std::string {
    if (v.is_null()) return "-";
    if (v.is_number_float()) {
      if (!std::isfinite(v.get<double>())) return std::isnan(v.get<double>()) ? "-" : v.get<double>() > 0 ? "inf" : "-inf";
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.6g", v.get<double>());
      return buf;
    }
    return v.dump();
  };
  const json& f = j["features"];
  std::printf("features  %s  [%s x %s, %s]\n", f["path"].get<std::string>().c_str(), f["rows"].dump().c_str(),
              f["dim"].dump().c_str(), f["dtype"].get<std::string>().c_str());
  if (!j["head"].is_null())
    std::printf("head      %s  [%s x %s]\n", j["head"]["path"].get<std::string>().c_str(),
                j["head"]["rows"].dump().c_str(), j["head"]["dim"].dump().c_str());
  std::printf("\nNeural Collapse\n");
  for (const auto& [k, v] : j["nc"].items()) std::printf("  %-22s %s\n", k.c_str(), value(v).c_str());
  if (j["retrieval"].is_null()) return;
  const json& r = j["retrieval"];
  std::printf("\nRetrieval (%s, %s)\n", r["mode"].get<std::string>().c_str(),
              r["similarity"].get<std::string>().c_str());
  std::printf("  %-8s %12s %12s %18s %21s\n", "K", "Recall@K", "Precision@K", "class-avg Recall", "class-avg Precision");
  for (const auto& k : r["ks"]) {
    const std::string key = std::to_string(k.get<int>());
    std::printf("  %-8s %12s %12s %18s %21s\n", key.c_str(), value(r["recall_at_k"][key]).c_str(),
                value(r["precision_at_k"][key]).c_str(), value(r["class_avg_recall_at_k"][key]).c_str(),
                value(r["class_avg_precision_at_k"][key]).c_str());
  }
  for (const char* k : {"map_at_r", "r_precision", "mrr", "class_avg_map_at_r", "class_avg_r_precision",
                        "class_avg_mrr", "num_queries", "num_lone_queries", "num_classes_evaluated"})
    std::printf("  %-22s %s\n", k, value(r[k]).c_str());
}

void run_metrics(const MetricsArgs& a, const Global& g) {
  const int qg = int(!a.queries.empty()) + int(!a.query_labels.empty()) + int(!a.gallery.empty()) +
                 int(!a.gallery_labels.empty());
  if (qg != 0 && qg != 4)
    usage("metrics: give all of --queries, --query-labels, --gallery and --gallery-labels, or none");
  if (qg == 4 && a.no_retrieval) usage("metrics: --no-retrieval with query and gallery files");

  const Features x = read_features(a.features);
  const std::vector<int64_t> y = read_labels(a.labels);
  std::optional<nc::MatrixD> w;
  Index num_classes = 0;
  if (!a.head.empty()) {
    w = nc::read_npy_matrix<double>(a.head);
    if (w->cols() != cols(x))
      bad(a.head, "head of " + std::to_string(w->cols()) + " columns for the " + std::to_string(cols(x)) +
                      "-dimensional features of " + a.features);
    if (w->rows() == 0) bad(a.head, "empty head (0 rows)");
    check_finite(*w, a.head);
    num_classes = w->rows();
    check_labels(y, a.labels, rows(x), a.features, cols(x), num_classes,
                 ": the head " + a.head + " has " + std::to_string(num_classes) + " rows (classes)");
  } else {
    num_classes = check_labels(y, a.labels, rows(x), a.features, cols(x));
  }

  Features q, gal;
  std::vector<int64_t> yq, yg;
  json q_info, g_info;  // as stored in the files, before common_precision
  if (qg == 4) {
    q = read_features(a.queries);
    gal = read_features(a.gallery);
    q_info = input_json(a.queries, q);
    g_info = input_json(a.gallery, gal);
    if (cols(gal) != cols(q))
      bad(a.gallery, std::to_string(cols(gal)) + " columns but " + a.queries + " has " + std::to_string(cols(q)));
    yq = read_labels(a.query_labels);
    yg = read_labels(a.gallery_labels);
    check_labels(yq, a.query_labels, rows(q), a.queries, cols(q));
    check_labels(yg, a.gallery_labels, rows(gal), a.gallery, cols(gal));
    common_precision(q, gal);
  }

  json report;
  report["ncml_version"] = NCML_VERSION_STRING;
  report["features"] = input_json(a.features, x);
  report["labels"] = json{{"path", a.labels}};
  report["head"] = w ? json{{"path", a.head}, {"rows", w->rows()}, {"dim", w->cols()}} : json(nullptr);

  nc::StatsOptions so;
  so.threads = g.threads;
  std::visit(
      [&](const auto& m) {
        const nc::ClassStats stats = nc::class_stats(m, y, num_classes, so);
        std::optional<double> nc4;
        if (w) {
          nc::NC4Options o4;
          o4.threads = g.threads;
          nc4 = nc::nc4(m, y, stats, *w, o4);
        }
        report["nc"] = nc_json(w ? nc::nc_metrics(stats, *w) : nc::nc_metrics(stats), num_classes, nc4);
      },
      x);

  report["retrieval"] = nullptr;
  if (!a.no_retrieval) {
    ProgressBar bar("retrieval", g.progress());
    nc::RetrievalOptions ro;
    ro.ks = a.ks;
    ro.similarity = a.similarity;
    ro.threads = g.threads;
    ro.progress = bar.callback();
    nc::RetrievalReport r;
    if (qg == 4) {
      report["queries"] = q_info;
      report["gallery"] = g_info;
      std::visit(
          [&](const auto& qm) {
            using M = std::decay_t<decltype(qm)>;
            r = nc::evaluate_retrieval(qm, yq, std::get<M>(gal), yg, ro);
          },
          q);
    } else {
      std::visit([&](const auto& m) { r = nc::evaluate_retrieval(m, y, ro); }, x);
    }
    bar.clear();
    report["retrieval"] = retrieval_json(r, qg == 4 ? "query_gallery" : "leave_one_out", a.similarity);
  }

  if (a.json)
    std::cout << report.dump(2) << '\n';
  else
    print_table(report);
  std::cout.flush();
}

// ---------------------------------------------------------------------------------------
// ncml knn

struct KnnArgs {
  std::string queries, gallery, out_indices, out_scores;
  Index k = 0;
  nc::Similarity similarity = nc::Similarity::cosine;
  bool exclude_self = false;
};

void run_knn(const KnnArgs& a, const Global& g) {
  if (a.out_indices.empty() && a.out_scores.empty()) usage("knn: give --out-indices and/or --out-scores");
  if (!a.out_indices.empty() && a.out_indices == a.out_scores)
    usage("knn: --out-indices and --out-scores name the same file " + a.out_indices);
  for (const std::string* p : {&a.out_indices, &a.out_scores})
    if (!p->empty()) check_output_path(*p);

  Features q = read_features(a.queries);
  Features gal;
  const bool separate = !a.gallery.empty();
  if (separate) {
    gal = read_features(a.gallery);
    if (cols(gal) != cols(q))
      bad(a.gallery, std::to_string(cols(gal)) + " columns but " + a.queries + " has " + std::to_string(cols(q)));
    common_precision(q, gal);
  }

  nc::KnnOptions o;
  o.similarity = a.similarity;
  o.exclude_self = a.exclude_self;
  o.threads = g.threads;
  ProgressBar bar("knn", g.progress());
  o.progress = bar.callback();
  // Without --gallery the queries are the gallery, passed as the same matrix so that the
  // library computes each pair of tiles once.
  const nc::KnnResult r = std::visit(
      [&](const auto& qm) {
        using M = std::decay_t<decltype(qm)>;
        return nc::knn(qm, separate ? std::get<M>(gal) : qm, a.k, o);
      },
      q);
  bar.clear();

  // Both outputs are complete before either is moved into place.
  std::unique_ptr<nc::AtomicFile> fi, fs;
  if (!a.out_indices.empty()) {
    fi = std::make_unique<nc::AtomicFile>(a.out_indices);
    nc::write_npy(*fi, r.indices);
  }
  if (!a.out_scores.empty()) {
    fs = std::make_unique<nc::AtomicFile>(a.out_scores);
    nc::write_npy(*fs, r.scores);
  }
  if (fi) fi->commit();
  if (fs) fs->commit();
}

// ---------------------------------------------------------------------------------------

int run(int argc, char** argv) {
  CLI::App app{"ncml: Neural Collapse directions, heads and metrics for embeddings in .npy files.", "ncml"};
  app.set_version_flag("--version", std::string("ncml ") + NCML_VERSION_STRING);
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the subcommand
  Global g;
  app.add_option("--threads", g.threads, "Threads (0: all available; results do not depend on it)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("--quiet,-q", g.quiet, "No progress bar");
  app.footer("Run 'ncml <command> --help' for the options of a command. Documentation: docs/cli.md");

  const auto methods = names_of({nc::HeadInit::nc_pc1, nc::HeadInit::class_mean, nc::HeadInit::centered_mean,
                                  nc::HeadInit::simplex_etf, nc::HeadInit::aligned_etf, nc::HeadInit::kaiming_normal,
                                  nc::HeadInit::xavier_uniform});
  const auto similarities =
      names_of({nc::Similarity::cosine, nc::Similarity::inner_product, nc::Similarity::neg_squared_l2});

  InitHeadArgs ih;
  CLI::App* init = app.add_subcommand("init-head", "Initialize a classifier head (class proxies) [C, D]");
  init->add_option("--features", ih.features, "Embeddings [N, D], float32 or float64 .npy");
  init->add_option("--labels", ih.labels, "Labels [N] in [0, C), int32, int64 or uint8 .npy");
  add_choice(init, "--method", ih.method, methods,
             "nc_pc1 (NC-Init: first principal direction of each class), class_mean, centered_mean, "
             "aligned_etf need data; simplex_etf, kaiming_normal, xavier_uniform are data-free");
  init->add_option("--out", ih.out, "Output head [C, D], float32 .npy")->required();
  init->add_option("--scale", ih.scale, "Multiply the head by this")->capture_default_str();
  init->add_option("--seed", ih.seed, "Seed of the random methods")->capture_default_str();
  init->add_option("--num-classes", ih.num_classes, "C (default: max(label) + 1)")->check(CLI::PositiveNumber);
  init->add_option("--dim", ih.dim, "D, for a data-free head without --features")->check(CLI::PositiveNumber);
  init->footer("Example: ncml init-head --features train_emb.npy --labels train_y.npy --method nc_pc1 --out W.npy");

  MetricsArgs ma;
  CLI::App* met = app.add_subcommand("metrics", "NC metrics (NC1-NC4, CDNV, traces) and retrieval metrics");
  met->add_option("--features", ma.features, "Embeddings [N, D], float32 or float64 .npy")->required();
  met->add_option("--labels", ma.labels, "Labels [N], int32, int64 or uint8 .npy")->required();
  met->add_option("--head", ma.head, "Classifier head [C, D] .npy: adds NC3 and NC4");
  met->add_option("--k", ma.ks, "Comma-separated K of Recall@K and Precision@K")
      ->delimiter(',')
      ->check(CLI::PositiveNumber)
      ->default_str("1,2,4,8");
  add_choice(met, "--similarity", ma.similarity, similarities, "Similarity for retrieval");
  met->add_option("--queries", ma.queries, "Query embeddings [Q, D] (query-vs-gallery retrieval)");
  met->add_option("--query-labels", ma.query_labels, "Query labels [Q]");
  met->add_option("--gallery", ma.gallery, "Gallery embeddings [G, D]");
  met->add_option("--gallery-labels", ma.gallery_labels, "Gallery labels [G]");
  met->add_flag("--no-retrieval", ma.no_retrieval, "NC metrics only (retrieval costs O(N^2 D))");
  met->add_flag("--json", ma.json, "Print JSON instead of a table");
  met->footer(
      "Retrieval is leave-one-out over --features unless the four query/gallery options are given.\n"
      "Example: ncml metrics --features test_emb.npy --labels test_y.npy --k 1,2,4,8 --json > metrics.json");

  KnnArgs ka;
  CLI::App* knn = app.add_subcommand("knn", "Exact k nearest neighbours of each query in a gallery");
  knn->add_option("--queries", ka.queries, "Queries [Q, D], float32 or float64 .npy")->required();
  knn->add_option("--gallery", ka.gallery, "Gallery [G, D] (default: the queries)");
  knn->add_option("--k", ka.k, "Neighbours per query")->required()->check(CLI::PositiveNumber);
  knn->add_option("--out-indices", ka.out_indices, "Output gallery indices [Q, k], int64 .npy, best first");
  knn->add_option("--out-scores", ka.out_scores, "Output similarities [Q, k], float32 .npy");
  add_choice(knn, "--similarity", ka.similarity, similarities, "Similarity (higher is nearer)");
  knn->add_flag("--exclude-self", ka.exclude_self, "Leave one out: never return gallery row i for query i");
  knn->footer("Ties are broken by gallery index. Example: ncml knn --queries emb.npy --k 10 --exclude-self "
              "--out-indices I.npy");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help, --version
    std::string where;
    for (const CLI::App* sub : app.get_subcommands()) where = " " + sub->get_name();
    std::cerr << "ncml: " << user_message(e.what()) << " (see ncml" << where << " --help)\n";
    return kExitBadInput;
  }

#if defined(_OPENMP)
  if (g.threads > 0) omp_set_num_threads(g.threads);
#endif
  if (init->parsed()) run_init_head(ih, g);
  if (met->parsed()) run_metrics(ma, g);
  if (knn->parsed()) run_knn(ka, g);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const nc::error& e) {
    std::cerr << "ncml: " << user_message(e.what()) << '\n';
    return kExitBadInput;
  } catch (const std::bad_alloc&) {
    std::cerr << "ncml: out of memory\n";
    return kExitFailure;
  } catch (const std::exception& e) {
    std::cerr << "ncml: " << user_message(e.what()) << '\n';
    return kExitFailure;
  }
}
