// Class statistics and NC directions against their floors, side by side in one binary:
//   copy        a plain copy of the features (the memory floor of one pass)
//   gemm_xtx    one Eigen product X^T X of the same data (the arithmetic of a scatter)
//   stats_means ClassStats::add without the within-class scatter   (target: <= 3x copy)
//   stats_full  ClassStats::add with the scatter                   (target: <= 2x gemm_xtx)
//   pc1         nc_directions(Direction::pc1)                      (target: <= 2x gemm_xtx)
// Sizes: N = 100000, D = 512, C = 100 (override with NCML_BENCH_N / _D / _C).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <vector>

#include <nc/nc.hpp>

namespace {
struct Data {
  nc::MatrixF x;
  std::vector<int> y;
  nc::Index C;
};

nc::Index env_or(const char* name, nc::Index dflt) {
  const char* v = std::getenv(name);
  return v ? std::atol(v) : dflt;
}

const Data& data() {
  static const Data d = [] {
    const nc::Index n = env_or("NCML_BENCH_N", 100000), dim = env_or("NCML_BENCH_D", 512),
                    C = env_or("NCML_BENCH_C", 100);
    Data r;
    r.C = C;
    r.x.resize(n, dim);
    r.y.resize(n);
    for (nc::Index i = 0; i < n; ++i) {
      r.y[i] = int(nc::uniform(1, 0, uint64_t(i), 0) * double(C));
      for (nc::Index j = 0; j < dim; ++j)
        r.x(i, j) = float(nc::gaussian(2, 0, uint64_t(i), uint64_t(j)) + (j == r.y[i] % dim ? 4.0 : 0.0));
    }
    return r;
  }();
  return d;
}

void counters(benchmark::State& s, double flops) {
  const auto& d = data();
  s.counters["N"] = double(d.x.rows());
  s.counters["D"] = double(d.x.cols());
  s.counters["C"] = double(d.C);
  s.counters["bytes"] = benchmark::Counter(double(d.x.size() * sizeof(float)) * double(s.iterations()),
                                           benchmark::Counter::kIsRate);
  if (flops > 0) s.counters["FLOPS"] = benchmark::Counter(flops * double(s.iterations()), benchmark::Counter::kIsRate);
}

void copy(benchmark::State& s) {
  const auto& d = data();
  nc::MatrixF out(d.x.rows(), d.x.cols());
  for (auto _ : s) {
    out = d.x;
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  counters(s, 0);
}

void gemm_xtx(benchmark::State& s) {
  const auto& d = data();
  nc::MatrixF g(d.x.cols(), d.x.cols());
  for (auto _ : s) {
    g.noalias() = d.x.transpose() * d.x;
    benchmark::DoNotOptimize(g.data());
  }
  counters(s, 2.0 * double(d.x.rows()) * double(d.x.cols()) * double(d.x.cols()));
}

void stats_means(benchmark::State& s) {
  const auto& d = data();
  for (auto _ : s) {
    nc::ClassStats st(d.C, d.x.cols(), {false});
    st.add(d.x, d.y);
    benchmark::DoNotOptimize(st.means().data());
  }
  counters(s, 0);
}

void stats_full(benchmark::State& s) {
  const auto& d = data();
  for (auto _ : s) {
    nc::ClassStats st(d.C, d.x.cols());
    st.add(d.x, d.y);
    benchmark::DoNotOptimize(st.within_scatter().data());
  }
  counters(s, double(d.x.rows()) * double(d.x.cols()) * double(d.x.cols() + 1));
}

void pc1(benchmark::State& s) {
  const auto& d = data();
  for (auto _ : s) {
    nc::MatrixF v = nc::nc_directions(d.x, d.y);
    benchmark::DoNotOptimize(v.data());
  }
  counters(s, double(d.x.rows()) * double(d.x.cols()) * double(d.x.cols() + 1));
}
}  // namespace

BENCHMARK(copy)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(gemm_xtx)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(stats_means)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(stats_full)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(pc1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
