// Leave-one-out top-K retrieval, ncml vs faiss IndexFlatIP, side by side in one process.
//
//   knn_vs_faiss                      the three reference configurations (see PERFORMANCE.md)
//   knn_vs_faiss N D K [N D K ...]    other sizes
//   options: --threads T (default 2), --reps R (default 1, best of R), --no-eval
//
// Both run on the same L2-normalized float32 rows. faiss: IndexFlatIP, search k + 1 and drop
// the query's own row (its BLAS is whatever libblas.so.3 resolves to; printed below). ncml:
// nc::knn (cosine, exclude_self) and, with synthetic labels (50 rows per class),
// nc::evaluate_retrieval with ks = {1, K}. References for ncml's own GEMM: Eigen's parallel
// GEMM over all N x N pairs (public API), and ncml's tile products alone over the tiles knn
// computes (each pair once). Peak RSS is the process high-water mark during each call
// (reset through /proc/self/clear_refs), minus the resident size before it. The last two
// columns: knn with the rows packed tile by tile inside the tasks (pack_budget_bytes = 1, the
// mode for inputs beyond the pack budget) relative to the default, and its memory.
#include <faiss/IndexFlat.h>

#include <omp.h>
#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nc/knn.hpp>
#include <nc/metrics/retrieval.hpp>

namespace {

using nc::Index;
using nc::MatrixF;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

long status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::atol(line.c_str() + n);
  return -1;
}

struct Measure {
  double seconds = 1e300;
  double peak_mb = 0;  // high-water mark above the resident size at the start
};

// Best time of `reps` runs of f; peak memory of the first run.
Measure measure(int reps, const std::function<void()>& f) {
  Measure m;
  for (int r = 0; r < reps; ++r) {
    { std::ofstream("/proc/self/clear_refs") << "5"; }
    const long before = status_kb("VmRSS:");
    const double t = now();
    f();
    m.seconds = std::min(m.seconds, now() - t);
    if (r == 0) m.peak_mb = (status_kb("VmHWM:") - before) / 1024.0;
  }
  return m;
}

std::string blas_library() {
  std::string found = "unknown";
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        const std::string name = info->dlpi_name ? info->dlpi_name : "";
        if (name.find("blas") != std::string::npos) *static_cast<std::string*>(data) = name;
        return 0;
      },
      &found);
  return found;
}

struct Config {
  Index n, d, k;
};

void run(const Config& c, int threads, int reps, bool eval) {
  std::mt19937_64 rng(42);
  std::normal_distribution<float> g(0.0f, 1.0f);
  MatrixF x(c.n, c.d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = g(rng);
  x.rowwise().normalize();
  std::vector<int> labels(c.n);
  for (Index i = 0; i < c.n; ++i) labels[i] = static_cast<int>(i % std::max<Index>(1, c.n / 50));

  // faiss: search k + 1, then remove the query's own row by index.
  std::vector<float> fd(static_cast<std::size_t>(c.n * (c.k + 1)));
  std::vector<faiss::Index::idx_t> fi(fd.size());
  const Measure tf = measure(reps, [&] {
    faiss::IndexFlatIP index(c.d);
    index.add(c.n, x.data());
    index.search(c.n, x.data(), c.k + 1, fd.data(), fi.data());
  });

  nc::KnnOptions ko;
  ko.similarity = nc::Similarity::cosine;
  ko.exclude_self = true;
  ko.threads = threads;
  nc::KnnResult r;
  const Measure tk = measure(reps, [&] { r = nc::knn(x, x, c.k, ko); });
  // The same call with the rows prepared and packed tile by tile inside the tasks (a pack
  // budget of one byte), as for inputs beyond the default budget.
  nc::KnnOptions kt = ko;
  kt.pack_budget_bytes = 1;
  const Measure tt = measure(reps, [&] { nc::knn(x, x, c.k, kt); });

  // Agreement with faiss on the neighbour sets (differences only at float near-ties).
  Index same_rows = 0;
  for (Index i = 0; i < c.n; ++i) {
    std::vector<int64_t> a, b(r.indices.row(i).data(), r.indices.row(i).data() + c.k);
    for (Index j = 0; j <= c.k && static_cast<Index>(a.size()) < c.k; ++j)
      if (fi[i * (c.k + 1) + j] != i) a.push_back(fi[i * (c.k + 1) + j]);
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    same_rows += a == b;
  }

  Measure te;
  if (eval) {
    nc::RetrievalOptions ro;
    ro.ks = {1, static_cast<int>(c.k)};
    ro.threads = threads;
    te = measure(reps, [&] { nc::evaluate_retrieval(x, labels, ro); });
  }

  // Eigen's own parallel GEMM over all pairs, in row chunks (public API).
  Eigen::setNbThreads(threads);
  const Measure tg = measure(reps, [&] {
    const Index chunk = 2048;
    MatrixF s(chunk, c.n);
    for (Index r0 = 0; r0 < c.n; r0 += chunk) {
      const Index m = std::min(chunk, c.n - r0);
      s.topRows(m).noalias() = x.middleRows(r0, m) * x.transpose();
    }
  });

  // ncml's tile products alone, over the tiles that knn computes (I <= J).
  using namespace nc::detail::knn;
  const MatrixF padded = padded_rows(nc::ConstRowsRef<float>(x), true);
  const Operand op = make_operand(padded, c.n, true, true, false);
  const Index tile = resolve_tile(0, op.padded_rows, nc::detail::knn::kAutoTile);
  const auto tasks = symmetric_schedule((op.padded_rows + tile - 1) / tile);
  const Measure tp = measure(reps, [&] {
#pragma omp parallel num_threads(threads)
    {
      std::vector<float> buf(static_cast<std::size_t>(tile * tile));
#pragma omp for schedule(dynamic, 1)
      for (std::size_t t = 0; t < tasks.size(); ++t) {
        const Index r0 = tasks[t].first * tile, c0 = tasks[t].second * tile;
        tile_product(op.packed, r0, std::min(tile, op.padded_rows - r0), op.packed, c0,
                     std::min(tile, op.padded_rows - c0), buf.data(), std::min(tile, op.padded_rows - r0));
      }
    }
  });

  std::printf("| %6ld | %4ld | %5ld | %7.2f | %7.2f | **%.2fx** | %7.2f | %7.2f | %7.2f | %.2f | %.2f | %6.0f | %6.0f | %s | %.2f%% | %.2f | %6.0f |\n",
              static_cast<long>(c.n), static_cast<long>(c.d), static_cast<long>(c.k), tf.seconds,
              tk.seconds, tf.seconds / tk.seconds, eval ? te.seconds : 0.0, tg.seconds, tp.seconds,
              tk.seconds / tg.seconds, tk.seconds / tp.seconds, tf.peak_mb, tk.peak_mb,
              eval ? (std::to_string(static_cast<int>(te.peak_mb))).c_str() : "-",
              100.0 * static_cast<double>(same_rows) / static_cast<double>(c.n), tt.seconds / tk.seconds,
              tt.peak_mb);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 1;
  bool eval = true;
  std::vector<Config> configs;
  std::vector<Index> nums;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--no-eval") eval = false;
    else nums.push_back(std::atol(a.c_str()));
  }
  for (std::size_t i = 0; i + 2 < nums.size(); i += 3) configs.push_back({nums[i], nums[i + 1], nums[i + 2]});
  if (configs.empty()) configs = {{20000, 512, 8}, {20000, 512, 1000}, {60000, 128, 1000}};
  omp_set_num_threads(threads);
  std::printf("threads %d, best of %d; BLAS used by faiss: %s\n", threads, reps, blas_library().c_str());
  std::printf("| N | D | K | faiss s | ncml knn s | faiss/knn | ncml eval s | Eigen GEMM all pairs s | "
              "ncml products s | knn/GEMM | knn/products | faiss MB | knn MB | eval MB | same sets | "
              "knn per-tile packing / knn | per-tile MB |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Config& c : configs) run(c, threads, reps, eval);
  return 0;
}
