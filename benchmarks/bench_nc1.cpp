// NC1 on the CPU: the projected path (one pass over the data after the class means, or from a
// stored Sigma_W) against the exact path (eigendecomposition of the D x D Sigma_B).
//
//   nc1_e2e/<path>/N/D/C     statistics + NC1 from float32 features:
//                            projected_pass   ClassStats without the scatter, nc1(features, labels,
//                            stats) projected_stats  ClassStats with the scatter, nc1(stats)
//                            exact_stats      ClassStats with the scatter, nc1(stats, exact)
//                            *_f64            the same from the features converted to float64
//                                             (agrees with numpy's float64 NC1 to ~1e-12)
//   nc1_only/<path>/D/C      NC1 alone from the same stored statistics (projected or exact)
//
// Features come from a seeded Gaussian mixture, or from files when NCML_BENCH_X (raw float32,
// row-major), NCML_BENCH_Y (raw int64) and NCML_BENCH_DIM are set: benchmarks/nc1_vs_numpy.sh
// uses that to time numpy on the same data in the same run. Counters: n, d, C, rank, the NC1
// value (nc1) and flops (FLOP/s of the dominant products).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <nc/metrics/nc.hpp>
#include <nc/stats.hpp>

namespace {

struct Data {
  nc::MatrixF x;
  std::vector<int64_t> y;
  nc::Index classes = 0;
};

Data mixture(nc::Index n, nc::Index d, nc::Index C, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  nc::MatrixF centres(C, d);
  for (nc::Index i = 0; i < centres.size(); ++i) centres.data()[i] = 0.3f * g(rng);
  Data r;
  r.classes = C;
  r.x.resize(n, d);
  r.y.resize(n);
  std::uniform_int_distribution<nc::Index> pick(0, C - 1);
  for (nc::Index i = 0; i < n; ++i) {
    const nc::Index c = i < C ? i : pick(rng);
    r.y[i] = c;
    for (nc::Index j = 0; j < d; ++j) r.x(i, j) = centres(c, j) + g(rng) + 1.0f;
  }
  return r;
}

// Files from the environment, when given (read once).
const Data* file_data() {
  static std::unique_ptr<Data> data = [] {
    const char* xs = std::getenv("NCML_BENCH_X");
    const char* ys = std::getenv("NCML_BENCH_Y");
    const char* ds = std::getenv("NCML_BENCH_DIM");
    if (!xs || !ys || !ds) return std::unique_ptr<Data>();
    auto r = std::make_unique<Data>();
    const nc::Index d = std::atol(ds);
    std::ifstream fy(ys, std::ios::binary | std::ios::ate);
    const nc::Index n = nc::Index(fy.tellg()) / nc::Index(sizeof(int64_t));
    fy.seekg(0);
    r->y.resize(n);
    fy.read(reinterpret_cast<char*>(r->y.data()), std::streamsize(n * sizeof(int64_t)));
    r->x.resize(n, d);
    std::ifstream fx(xs, std::ios::binary);
    fx.read(reinterpret_cast<char*>(r->x.data()), std::streamsize(n * d * sizeof(float)));
    int64_t mx = 0;
    for (auto v : r->y) mx = std::max(mx, v);
    r->classes = nc::Index(mx + 1);
    return r;
  }();
  return data.get();
}

const Data& data_for(nc::Index n, nc::Index d, nc::Index C) {
  if (const Data* f = file_data()) return *f;
  static std::map<std::tuple<nc::Index, nc::Index, nc::Index>, Data> cache;
  auto key = std::make_tuple(n, d, C);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, mixture(n, d, C, 7)).first;
  return it->second;
}

void set_counters(benchmark::State& state, const Data& data, const nc::NC1Result& r, double flops) {
  state.counters["n"] = double(data.x.rows());
  state.counters["d"] = double(data.x.cols());
  state.counters["C"] = double(data.classes);
  state.counters["rank"] = double(r.rank);
  state.counters["nc1"] = r.value;
  state.counters["flops"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

enum class E2E { projected_pass, projected_stats, exact_stats };

template <class X>
nc::NC1Result e2e_once(const X& x, const std::vector<int64_t>& y, nc::Index C, E2E path) {
  if (path == E2E::projected_pass) {
    nc::ClassStats s(C, x.cols(), {false});
    s.add(x, y);
    return nc::nc1_detailed(x, y, s);
  }
  nc::ClassStats s(C, x.cols());
  s.add(x, y);
  nc::NC1Options o;
  if (path == E2E::exact_stats) o.path = nc::NC1Options::Path::exact;
  return nc::nc1_detailed(s, o);
}

// Statistics + NC1 from the float32 features, or (f64) from the same values in float64,
// converted outside the timed loop.
void nc1_e2e(benchmark::State& state, E2E path, bool f64) {
  const Data& data = data_for(state.range(0), state.range(1), state.range(2));
  const nc::Index n = data.x.rows(), d = data.x.cols();
  nc::MatrixD xd;
  if (f64) xd = data.x.cast<double>();
  nc::NC1Result r;
  for (auto _ : state) {
    r = f64 ? e2e_once(xd, data.y, data.classes, path)
            : e2e_once(data.x, data.y, data.classes, path);
    benchmark::DoNotOptimize(&r);
    benchmark::ClobberMemory();
  }
  // The pass projects onto r directions (2 N D r); the scatter is a rank-N update (N D^2).
  const double flops = path == E2E::projected_pass ? 2.0 * double(n) * double(d) * double(r.rank)
                                                   : double(n) * double(d) * double(d);
  set_counters(state, data, r, flops);
}

void nc1_only(benchmark::State& state, nc::NC1Options::Path path) {
  const Data& data = data_for(state.range(0), state.range(1), state.range(2));
  nc::ClassStats s(data.classes, data.x.cols());
  s.add(data.x, data.y);
  nc::NC1Options o;
  o.path = path;
  nc::NC1Result r;
  for (auto _ : state) {
    r = nc::nc1_detailed(s, o);
    benchmark::DoNotOptimize(&r);
    benchmark::ClobberMemory();
  }
  const double d = double(data.x.cols());
  set_counters(
      state, data, r,
      path == nc::NC1Options::Path::exact ? 9.0 * d * d * d : 2.0 * d * d * double(r.rank));
}

void sizes_e2e(benchmark::internal::Benchmark* b) {
  b->Args({100000, 512, 100})->Args({32768, 2048, 100});
  b->Unit(benchmark::kMillisecond)->UseRealTime()->MeasureProcessCPUTime();
}
void sizes_only(benchmark::internal::Benchmark* b) {
  b->Args({20000, 512, 100})->Args({20000, 2048, 100});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_CAPTURE(nc1_e2e, projected_pass, E2E::projected_pass, false)->Apply(sizes_e2e);
BENCHMARK_CAPTURE(nc1_e2e, projected_stats, E2E::projected_stats, false)->Apply(sizes_e2e);
BENCHMARK_CAPTURE(nc1_e2e, exact_stats, E2E::exact_stats, false)->Apply(sizes_e2e);
BENCHMARK_CAPTURE(nc1_e2e, projected_pass_f64, E2E::projected_pass, true)->Apply(sizes_e2e);
BENCHMARK_CAPTURE(nc1_e2e, projected_stats_f64, E2E::projected_stats, true)->Apply(sizes_e2e);
BENCHMARK_CAPTURE(nc1_only, projected, nc::NC1Options::Path::projected)->Apply(sizes_only);
BENCHMARK_CAPTURE(nc1_only, exact, nc::NC1Options::Path::exact)->Apply(sizes_only);

}  // namespace

BENCHMARK_MAIN();
