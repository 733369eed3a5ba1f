// Soak run: a million embeddings through ClassStats, NC1, kNN and Recall@K on the CPU, with the
// peak resident memory after each stage. Not part of the tests (it takes minutes).
//
//   soak [--n 1000000] [--dim 128] [--classes 1000] [--queries 10000] [--k 8] [--seed 1]
//        [--threads 0] [--pack-budget BYTES] [--full]
//
// The features are a seeded Gaussian mixture (float32, row-major: n * dim * 4 bytes, 512 MB at
// the default size), generated in place. Stages:
//   1. ClassStats::add in batches of 65536 rows with the within-class scatter, then NC1 (the
//      projected path from the stored Sigma_W) and the one-pass NC1 without a scatter;
//   2. knn of `queries` rows against the whole set (k neighbours, self excluded by index);
//   3. evaluate_retrieval of those queries against the whole set (Recall@{1,2,4,8}, MAP@R);
//      with --full, leave-one-out over all n rows instead (O(n^2 dim): hours on two cores).
// --pack-budget is the retrieval options' pack_budget_bytes (0: automatic, 256 MiB; the 512 MB
// gallery is then packed tile by tile; 2000000000 packs it whole).
// After each stage it prints the wall time and the peak resident set (VmHWM, reset at the
// start of the stage) next to the bound
// the library promises: the data plus O(Q k + tiles), i.e. the peak minus the data size should
// stay a small, n-independent amount.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <nc/knn.hpp>
#include <nc/metrics/nc.hpp>
#include <nc/metrics/retrieval.hpp>
#include <nc/stats.hpp>

namespace {

double peak_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  }
  return -1.0;
}

/// Resets the peak resident set to the current one (Linux >= 4.0: "5" to clear_refs), so that
/// each stage reports its own peak; false where the kernel does not allow it.
bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.flush();
  return static_cast<bool>(clear);
}

double current_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  }
  return -1.0;
}

struct Args {
  nc::Index n = 1000000, dim = 128, classes = 1000, queries = 10000;
  int k = 8, threads = 0;
  std::size_t pack_budget = 0;
  uint64_t seed = 1;
  bool full = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto value = [&]() -> long long {
      if (i + 1 >= argc) {
        std::cerr << "soak: " << s << " needs a value\n";
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (s == "--n") a.n = value();
    else if (s == "--dim") a.dim = value();
    else if (s == "--classes") a.classes = value();
    else if (s == "--queries") a.queries = value();
    else if (s == "--k") a.k = static_cast<int>(value());
    else if (s == "--seed") a.seed = static_cast<uint64_t>(value());
    else if (s == "--threads") a.threads = static_cast<int>(value());
    else if (s == "--pack-budget") a.pack_budget = static_cast<std::size_t>(value());
    else if (s == "--full") a.full = true;
    else {
      std::cerr << "soak: unknown argument " << s << "\n";
      std::exit(2);
    }
  }
  if (a.n < 2 || a.dim < 1 || a.classes < 1 || a.classes > a.n || a.queries < 1 || a.queries > a.n ||
      a.k < 1 || a.k >= a.n) {
    std::cerr << "soak: need 2 <= n, 1 <= dim, 1 <= classes <= n, 1 <= queries <= n, 1 <= k < n\n";
    std::exit(2);
  }
  return a;
}

class Stage {
 public:
  Stage(const char* name, double data_mb) : name_(name), data_mb_(data_mb), t0_(clock::now()) {
    reset_peak_rss();
  }
  void done(const std::string& result) const {
    double s = std::chrono::duration<double>(clock::now() - t0_).count();
    double peak = peak_rss_mb();
    std::printf("%-34s %9.1f s   peak RSS %8.1f MB (data %7.1f MB, beyond data %7.1f MB)   %s\n",
                name_, s, peak, data_mb_, peak - data_mb_, result.c_str());
    std::fflush(stdout);
  }

 private:
  using clock = std::chrono::steady_clock;
  const char* name_;
  double data_mb_;
  clock::time_point t0_;
};

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  std::printf("soak: n=%lld dim=%lld classes=%lld queries=%lld k=%d threads=%d%s\n",
              static_cast<long long>(a.n), static_cast<long long>(a.dim),
              static_cast<long long>(a.classes), static_cast<long long>(a.queries), a.k, a.threads,
              a.full ? " (leave-one-out over all rows)" : "");

  // Data: class c has mean mu_c ~ N(0, I) and rows mu_c + 0.7 N(0, I); labels round-robin.
  nc::MatrixF x(a.n, a.dim);
  std::vector<int64_t> y(static_cast<size_t>(a.n));
  {
    std::mt19937_64 rng(a.seed);
    std::normal_distribution<float> normal(0.f, 1.f);
    nc::MatrixF means(a.classes, a.dim);
    for (nc::Index i = 0; i < means.size(); ++i) means.data()[i] = normal(rng);
    for (nc::Index i = 0; i < a.n; ++i) {
      const int64_t c = i % a.classes;
      y[static_cast<size_t>(i)] = c;
      for (nc::Index j = 0; j < a.dim; ++j) x(i, j) = means(c, j) + 0.7f * normal(rng);
    }
  }
  const double data_mb = current_rss_mb();  // the process with its data
  std::printf("data generated: resident %.1f MB (of which features %.1f MB, labels %.1f MB)\n", data_mb,
              a.n * a.dim * 4.0 / 1048576.0, a.n * 8.0 / 1048576.0);

  {
    Stage st("ClassStats (scatter) + NC1", data_mb);
    nc::ClassStats stats(a.classes, a.dim, nc::StatsOptions{true, a.threads});
    const nc::Index batch = 65536;
    for (nc::Index r0 = 0; r0 < a.n; r0 += batch) {
      const nc::Index rows = std::min(batch, a.n - r0);
      stats.add(x.middleRows(r0, rows),
                nc::LabelView<int64_t>{y.data() + r0, rows});
    }
    const double v = nc::nc1(stats);
    st.done("NC1 " + std::to_string(v));
  }
  {
    Stage st("ClassStats (no scatter) + 1-pass NC1", data_mb);
    nc::ClassStats stats = nc::class_stats(x, y, a.classes, nc::StatsOptions{false, a.threads});
    const double v = nc::nc1(x, y, stats);
    st.done("NC1 " + std::to_string(v));
  }
  {
    Stage st("knn (queries vs all)", data_mb);
    nc::KnnOptions o;
    o.threads = a.threads;
    o.pack_budget_bytes = a.pack_budget;
    nc::KnnResult r = nc::knn(x.topRows(a.queries), x, a.k + 1, o);
    int64_t same = 0;  // neighbour 0 is the query itself; count same-class among the rest
    for (nc::Index q = 0; q < a.queries; ++q)
      for (int j = 1; j <= a.k; ++j) same += y[static_cast<size_t>(r.indices(q, j))] == y[static_cast<size_t>(q)];
    st.done("same-class neighbours " + std::to_string(static_cast<double>(same) / (a.queries * a.k)));
  }
  {
    Stage st(a.full ? "evaluate_retrieval (leave-one-out)" : "evaluate_retrieval (queries vs all)",
             data_mb);
    nc::RetrievalOptions o;
    o.threads = a.threads;
    o.pack_budget_bytes = a.pack_budget;
    nc::RetrievalReport rep;
    if (a.full) {
      rep = nc::evaluate_retrieval(x, y, o);
    } else {
      // The queries are rows of the gallery; they count themselves as a positive at rank 1,
      // which is fine for a soak run (memory and time are what is measured).
      std::vector<int64_t> yq(y.begin(), y.begin() + a.queries);
      rep = nc::evaluate_retrieval(x.topRows(a.queries), yq, x, y, o);
    }
    st.done("R@1 " + std::to_string(rep.recall_at_k[0]) + "  MAP@R " + std::to_string(rep.map_at_r));
  }
  return 0;
}
