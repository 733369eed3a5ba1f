// GPU class statistics, within-class scatter, NC1, NC directions and perturbation noise
// against the CPU reference. Without a CUDA device the program exits with 77 before any test
// runs (ctest: SKIP_RETURN_CODE 77). Tests tagged [small] are the ones compute-sanitizer runs.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <nc/cuda/directions.cuh>
#include <nc/cuda/nc1.cuh>
#include <nc/cuda/perturb.cuh>
#include <nc/cuda/stats.cuh>
#include <nc/directions.hpp>
#include <nc/metrics/nc.hpp>
#include <nc/perturb.hpp>
#include <nc/stats.hpp>

#include "support.hpp"

using namespace nct;
using nc::cuda::DeviceBuffer;

namespace {

const bool kGpuPresent = [] {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("no CUDA device: the GPU tests are skipped\n");
    std::exit(77);
  }
  return true;
}();

/// A device copy of float rows with leading dimension `ld` (>= cols), optionally starting 4
/// bytes past a 16-byte boundary.
struct DeviceRows {
  DeviceBuffer<float> buf;
  float* ptr = nullptr;
  Index ld = 0;
  DeviceRows(const MatrixF& x, Index ld_, bool misalign, cudaStream_t s = 0)
      : buf(static_cast<std::size_t>(x.rows()) * ld_ + 4, s), ld(ld_) {
    ptr = buf.data() + (misalign ? 1 : 0);
    NC_CUDA_TRY(cudaMemsetAsync(buf.data(), 0xff, buf.size() * sizeof(float), s));  // NaN poison
    NC_CUDA_TRY(cudaMemcpy2DAsync(ptr, ld * sizeof(float), x.data(), x.cols() * sizeof(float),
                                  x.cols() * sizeof(float), x.rows(), cudaMemcpyHostToDevice, s));
  }
};

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& v, cudaStream_t s = 0) {
  DeviceBuffer<T> d(v.size(), s);
  NC_CUDA_TRY(cudaMemcpyAsync(d.data(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, s));
  return d;
}

template <class T>
std::vector<T> to_host(const DeviceBuffer<T>& d, cudaStream_t s = 0) {
  std::vector<T> v(d.size());
  NC_CUDA_TRY(cudaMemcpyAsync(v.data(), d.data(), v.size() * sizeof(T), cudaMemcpyDeviceToHost, s));
  NC_CUDA_TRY(cudaStreamSynchronize(s));
  return v;
}

/// Labels over [0, C) with every third class empty (when C >= 3), the last used class holding
/// a single sample, the rest uniform.
std::vector<int64_t> sparse_labels(Index n, Index C, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Index> used;
  for (Index c = 0; c < C; ++c)
    if (C < 3 || c % 3 != 1) used.push_back(c);
  std::uniform_int_distribution<std::size_t> pick(0, used.size() > 1 ? used.size() - 2 : 0);
  std::vector<int64_t> y(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) y[i] = used[pick(rng)];
  if (used.size() > 1 && n > 1) y[n - 1] = used.back();
  return y;
}

MatrixF gaussian_rows(Index n, Index d, uint64_t seed, float offset) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  MatrixF x(n, d);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = g(rng) + offset;
  return x;
}

/// Class c's rows get mean `means[c]` (scale `sep`) plus unit noise.
MatrixF clustered_rows(const std::vector<int64_t>& y, Index d, Index C, uint64_t seed, double sep,
                       double offset) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 1.0);
  MatrixD centers(C, d);
  for (Index i = 0; i < centers.size(); ++i) centers.data()[i] = sep * g(rng) + offset;
  MatrixF x(static_cast<Index>(y.size()), d);
  for (Index i = 0; i < x.rows(); ++i)
    for (Index j = 0; j < d; ++j) x(i, j) = static_cast<float>(centers(y[i], j) + g(rng));
  return x;
}

struct GpuStats {
  std::vector<long long> counts;
  MatrixD means;
  Eigen::VectorXd sq_dev;
};

GpuStats gpu_stats(const DeviceRows& x, const DeviceBuffer<int64_t>& y, Index n, Index d, Index C,
                   const nc::cuda::ClassStatsOptions& o, cudaStream_t s = 0) {
  DeviceBuffer<long long> dc(C, s);
  DeviceBuffer<double> dm(static_cast<std::size_t>(C) * (d + 1), s), dsq(C, s);
  nc::cuda::class_stats(x.ptr, x.ld, y.data(), n, d, C, {dc.data(), dm.data(), d + 1, dsq.data()}, o, s);
  GpuStats r;
  r.counts = to_host(dc, s);
  const std::vector<double> m = to_host(dm, s);
  r.means.resize(C, d);
  for (Index c = 0; c < C; ++c)
    for (Index j = 0; j < d; ++j) r.means(c, j) = m[c * (d + 1) + j];
  const std::vector<double> q = to_host(dsq, s);
  r.sq_dev = Eigen::Map<const Eigen::VectorXd>(q.data(), C);
  return r;
}

void check_stats(const GpuStats& g, const nc::ClassStats& cpu) {
  for (Index c = 0; c < cpu.num_classes(); ++c) REQUIRE(g.counts[c] == cpu.counts()[c]);
  CHECK(rel_err(g.means, cpu.means()) <= 1e-5);
  CHECK(rel_err(g.sq_dev, cpu.class_sq_deviations()) <= 1e-5);
}

}  // namespace

TEST_CASE("class_stats matches ClassStats for every strategy", "[stats][small]") {
  using Strategy = nc::cuda::ClassStatsOptions::Strategy;
  struct Case {
    Index n, d, C;
  };
  const Case cases[] = {{1000, 1, 1}, {3000, 3, 2}, {20000, 64, 10}, {8192, 512, 10}, {20000, 64, 1000},
                        {12000, 20, 5000}, {5000, 2048, 3}};
  for (const Case& k : cases) {
    const std::vector<int64_t> y = sparse_labels(k.n, k.C, 11 + k.C);
    const MatrixF x = clustered_rows(y, k.d, k.C, 5 + k.d, 3.0, 100.0);  // large common offset
    nc::ClassStats cpu(k.C, k.d, {false});
    cpu.add(x, y);
    const DeviceBuffer<int64_t> dy = to_device(y);
    for (bool misalign : {false, true}) {
      const DeviceRows dx(x, k.d + (misalign ? 3 : 0), misalign);
      for (Strategy st : {Strategy::automatic, Strategy::sorted, Strategy::privatized})
        for (bool fp64 : {false, true}) {
          if (st == Strategy::sorted && fp64) continue;
          const nc::cuda::ClassStatsOptions o{st, fp64};
          INFO("n " << k.n << " d " << k.d << " C " << k.C << " strategy " << int(st) << " fp64 " << fp64
                    << " misaligned " << misalign);
          GpuStats g;
          try {
            g = gpu_stats(dx, dy, k.n, k.d, k.C, o);
          } catch (const nc::error& e) {  // privatized accumulators that do not fit
            REQUIRE(st == Strategy::privatized);
            CHECK_THAT(e.what(), Catch::Contains("shared memory"));
            continue;
          }
          check_stats(g, cpu);
        }
    }
  }
}

TEST_CASE("class_stats on a non-default stream, int32 labels", "[stats][small]") {
  cudaStream_t s;
  NC_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const Index n = 7000, d = 37, C = 13;
  const std::vector<int64_t> y64 = sparse_labels(n, C, 3);
  const std::vector<int32_t> y(y64.begin(), y64.end());
  const MatrixF x = clustered_rows(y64, d, C, 9, 1.0, -50.0);
  nc::ClassStats cpu(C, d, {false});
  cpu.add(x, y);
  {
    const DeviceRows dx(x, d + 5, true, s);
    const DeviceBuffer<int32_t> dy = to_device(y, s);
    DeviceBuffer<long long> dc(C, s);
    DeviceBuffer<double> dm(static_cast<std::size_t>(C) * d, s), dsq(C, s);
    nc::cuda::class_stats(dx.ptr, dx.ld, dy.data(), n, d, C, {dc.data(), dm.data(), d, dsq.data()}, {}, s);
    const std::vector<long long> counts = to_host(dc, s);
    const std::vector<double> m = to_host(dm, s);
    for (Index c = 0; c < C; ++c) REQUIRE(counts[c] == cpu.counts()[c]);
    CHECK(rel_err(Eigen::Map<const MatrixD>(m.data(), C, d), cpu.means()) <= 1e-5);
  }
  NC_CUDA_TRY(cudaStreamSynchronize(s));
  NC_CUDA_TRY(cudaStreamDestroy(s));
}

TEST_CASE("class_stats at scale: 2^20 rows, D = 512", "[stats][large]") {
  const Index n = Index(1) << 20, d = 512;
  const MatrixF x = gaussian_rows(n, d, 21, 2.0f);
  const DeviceRows dx(x, d, false);
  for (Index C : {10, 1000, 100000}) {
    std::vector<int64_t> y(static_cast<std::size_t>(n));
    std::mt19937_64 rng(C);
    std::uniform_int_distribution<int64_t> pick(0, C - 1);
    for (auto& v : y) v = pick(rng);
    nc::ClassStats cpu(C, d, {false});
    cpu.add(x, y);
    const DeviceBuffer<int64_t> dy = to_device(y);
    INFO("C = " << C);
    check_stats(gpu_stats(dx, dy, n, d, C, {}), cpu);
  }
}

TEST_CASE("within_scatter matches the CPU scatter", "[scatter][small]") {
  for (Index d : {3, 64, 200}) {
    const Index n = 5000, C = 7;
    const std::vector<int64_t> y = sparse_labels(n, C, d);
    const MatrixF x = clustered_rows(y, d, C, 17, 2.0, 10.0);
    nc::ClassStats cpu(C, d);
    cpu.add(x, y);
    const DeviceRows dx(x, d + 1, true);
    const DeviceBuffer<int64_t> dy = to_device(y);
    DeviceBuffer<long long> dc(C);
    DeviceBuffer<double> dm(static_cast<std::size_t>(C) * d), dsq(C), dsw(static_cast<std::size_t>(d) * d);
    nc::cuda::class_stats(dx.ptr, dx.ld, dy.data(), n, d, C, {dc.data(), dm.data(), d, dsq.data()});
    nc::cuda::WithinScatterOptions o;
    o.chunk_rows = 1000;  // several chunks and batches
    o.batch = 2;
    nc::cuda::within_scatter(dx.ptr, dx.ld, dy.data(), n, d, C, dm.data(), d, dsw.data(), d, o);
    const std::vector<double> sw = to_host(dsw);
    INFO("d = " << d);
    CHECK(rel_err(Eigen::Map<const MatrixD>(sw.data(), d, d), cpu.within_scatter()) <= 1e-5);
  }
}

TEST_CASE("nc1 matches the CPU projected NC1", "[nc1][small]") {
  struct Case {
    Index n, d, C;
    double sep;
  };
  for (const Case& k : {Case{4000, 64, 10, 2.0}, Case{4000, 16, 100, 1.0}, Case{3000, 128, 30, 0.5},
                        Case{2000, 8, 2, 5.0}}) {
    const std::vector<int64_t> y = sparse_labels(k.n, k.C, k.d);
    const MatrixF x = clustered_rows(y, k.d, k.C, 31, k.sep, 20.0);
    nc::ClassStats cpu(k.C, k.d);
    cpu.add(x, y);
    const nc::NC1Result ref = nc::nc1_detailed(cpu);
    for (nc::cuda::Precision p : {nc::cuda::Precision::fp32, nc::cuda::Precision::tf32}) {
      nc::cuda::NC1Options o;
      o.precision = p;
      o.chunk_rows = 1500;
      const nc::cuda::NC1Result r = nc::cuda::nc1(x, y, k.C, o);
      INFO("n " << k.n << " d " << k.d << " C " << k.C << " precision " << int(p));
      CHECK(r.rank == ref.rank);
      CHECK(r.num_classes_used == ref.num_classes_used);
      CHECK(rel_err(r.value, ref.value) <= (p == nc::cuda::Precision::fp32 ? 1e-5 : 1e-4));
    }
  }
}

TEST_CASE("nc1 at scale: 2^20 rows, D = 512, C = 100", "[nc1][large]") {
  const Index n = Index(1) << 20, d = 512, C = 100;
  std::vector<int64_t> y(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) y[i] = i % C;
  const MatrixF x = clustered_rows(y, d, C, 41, 0.3, 1.0);
  const nc::ClassStats cpu = nc::class_stats(x, y, C, {false});
  const nc::NC1Result ref = nc::nc1_detailed(x, y, cpu);
  const nc::cuda::NC1Result r = nc::cuda::nc1(x, y, C);
  CHECK(r.rank == ref.rank);
  CHECK(rel_err(r.value, ref.value) <= 1e-5);
}

TEST_CASE("nc_directions matches the CPU", "[directions][small]") {
  for (Index d : {3, 64, 300}) {
    const Index n = 6000, C = 40;
    std::vector<int64_t> y(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) y[i] = i % (C - 1);
    y[n - 1] = C - 1;  // a one-sample class
    const MatrixF x = clustered_rows(y, d, C, 7 + d, 1.0, 0.5);
    for (nc::Direction m : {nc::Direction::pc1, nc::Direction::mean, nc::Direction::centered_mean}) {
      nc::DirectionOptions co;
      co.method = m;
      const MatrixF ref = nc::nc_directions(x, y, co);
      nc::cuda::DirectionOptions go;
      go.method = m;
      const MatrixF got = nc::cuda::nc_directions(x, y, C, go);
      INFO("d " << d << " method " << int(m));
      REQUIRE(got.rows() == C);
      CHECK((got - ref).cwiseAbs().maxCoeff() <= 1e-5f);
    }
  }
}

TEST_CASE("nc_directions: slow power iterations finish on the host", "[directions][small]") {
  // Isotropic, zero-mean classes: tiny spectral gaps, so some classes run out of steps.
  const Index n = 3000, d = 16, C = 6;
  std::vector<int64_t> y(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) y[i] = i % C;
  MatrixF x = gaussian_rows(n, d, 5, 0.0f);
  for (Index i = 0; i < n; ++i) x(i, 0) += (y[i] % 2 ? 3.0f : 0.0f);  // some classes with a clear top direction
  nc::cuda::DirectionOptions go;
  go.max_iterations = 20;
  const MatrixF got = nc::cuda::nc_directions(x, y, C, go);
  const MatrixF ref = nc::nc_directions(x, y);
  CHECK((got - ref).cwiseAbs().maxCoeff() <= 1e-5f);
}

TEST_CASE("nc_directions: empty classes and zero directions throw", "[directions][small]") {
  MatrixF x = gaussian_rows(100, 4, 1, 0.0f);
  std::vector<int64_t> y(100, 0);
  for (Index i = 0; i < 100; i += 2) y[i] = 2;  // class 1 empty
  CHECK_THROWS_WITH(nc::cuda::nc_directions(x, y, 3), Catch::Contains("have no samples"));
  x.row(0).setZero();
  y.assign(100, 0);
  y[0] = 1;  // class 1 = one zero row
  CHECK_THROWS_WITH(nc::cuda::nc_directions(x, y, 2), Catch::Contains("rows are zero"));
}

TEST_CASE("perturbation noise equals the CPU's", "[perturb][small]") {
  for (nc::Schedule sch : {nc::Schedule::constant, nc::Schedule::cosine}) {
    nc::PerturbOptions po;
    po.sigma = 1e-2;
    po.schedule = sch;
    po.total_steps = 100;
    po.seed = 0x1234567890abcdefull;
    const nc::Perturbation p(po);
    for (int64_t step : {int64_t(0), int64_t(7), (int64_t(1) << 33) + 5}) {
      const Index rows = 97, cols = 37;
      const MatrixF ref = p.noise<float>(rows, cols, step);
      const MatrixF got = nc::cuda::noise(p, rows, cols, step);
      const double scale = std::max(1e-30, p.sigma_at(step));
      INFO("step " << step);
      CHECK((got - ref).cwiseAbs().maxCoeff() <= 1e-6 * scale);
    }
  }
}

TEST_CASE("DevicePerturbationGuard restores the clean weights bitwise", "[perturb][small]") {
  const Index rows = 33, cols = 70, ld = 75;
  const MatrixF w = gaussian_rows(rows, cols, 3, 0.0f);
  const DeviceRows dw(w, ld, true);
  const nc::Perturbation p({1e-3});
  MatrixF perturbed(rows, cols), back(rows, cols);
  {
    nc::cuda::DevicePerturbationGuard guard(dw.ptr, ld, rows, cols, p, 4);
    NC_CUDA_TRY(cudaMemcpy2D(perturbed.data(), cols * sizeof(float), dw.ptr, ld * sizeof(float),
                             cols * sizeof(float), rows, cudaMemcpyDeviceToHost));
  }
  NC_CUDA_TRY(cudaMemcpy2D(back.data(), cols * sizeof(float), dw.ptr, ld * sizeof(float), cols * sizeof(float),
                           rows, cudaMemcpyDeviceToHost));
  MatrixF expected = w;
  expected += p.noise<float>(rows, cols, 4);
  CHECK((perturbed - expected).cwiseAbs().maxCoeff() <= 1e-6f);
  CHECK((back.array() == w.array()).all());
}

TEST_CASE("invalid input throws nc::error naming the row", "[errors][small]") {
  const Index n = 500, d = 9, C = 4;
  MatrixF x = gaussian_rows(n, d, 8, 0.0f);
  std::vector<int64_t> y(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) y[i] = i % C;
  SECTION("non-finite feature") {
    x(123, 4) = std::nanf("");
    CHECK_THROWS_WITH(nc::cuda::class_stats(x, y, C), Catch::Contains("non-finite") && Catch::Contains("row 123"));
    CHECK_THROWS_WITH(nc::cuda::nc1(x, y, C), Catch::Contains("row 123"));
    nc::cuda::HostStatsOptions o;
    o.stats.strategy = nc::cuda::ClassStatsOptions::Strategy::sorted;
    CHECK_THROWS_WITH(nc::cuda::class_stats(x, y, C, o), Catch::Contains("row 123"));
  }
  SECTION("label out of range") {
    y[77] = C;
    CHECK_THROWS_WITH(nc::cuda::class_stats(x, y, C), Catch::Contains("row 77") && Catch::Contains("out of range"));
  }
  SECTION("negative label") {
    y[5] = -2;
    CHECK_THROWS_WITH(nc::cuda::class_stats(x, y, C), Catch::Contains("negative label -2 at row 5"));
  }
  SECTION("inferred class count far beyond the rows, refused before device memory is sized") {
    y[9] = 2000000000;
    CHECK_THROWS_WITH(nc::cuda::class_stats(x, y), Catch::Contains("label 2000000000") &&
                                                     Catch::Contains("relabel"));
    CHECK_THROWS_WITH(nc::cuda::nc1(x, y), Catch::Contains("label 2000000000"));
  }
  SECTION("workspace too small") {
    const DeviceRows dx(x, d, false);
    const DeviceBuffer<int64_t> dy = to_device(y);
    DeviceBuffer<long long> dc(C);
    DeviceBuffer<double> dm(static_cast<std::size_t>(C) * d), dsq(C);
    nc::cuda::Workspace ws;
    const nc::cuda::ClassStatsOutput out{dc.data(), dm.data(), d, dsq.data()};
    nc::cuda::class_stats_async(dx.ptr, d, dy.data(), n, d, C, out, ws);
    DeviceBuffer<char> small(ws.bytes / 2);
    ws.data = small.data();
    ws.bytes = small.size();
    CHECK_THROWS_WITH(nc::cuda::class_stats_async(dx.ptr, d, dy.data(), n, d, C, out, ws),
                      Catch::Contains("workspace too small"));
  }
}

TEST_CASE("Omniglot pixels: statistics, NC1 and directions", "[real]") {
  const RealData data = load_omniglot();
  const MatrixF x = data.x.cast<float>();
  const Index C = *std::max_element(data.labels.begin(), data.labels.end()) + 1;
  nc::ClassStats cpu(C, x.cols());
  cpu.add(x, data.labels);
  const nc::cuda::ClassStatsResult g = nc::cuda::class_stats(x, data.labels, C);
  CHECK(rel_err(g.means, cpu.means()) <= 1e-5);
  CHECK(rel_err(g.sq_dev, cpu.class_sq_deviations()) <= 1e-5);
  const nc::NC1Result ref = nc::nc1_detailed(cpu);
  const nc::cuda::NC1Result r = nc::cuda::nc1(x, data.labels, C);
  CHECK(r.rank == ref.rank);
  CHECK(rel_err(r.value, ref.value) <= 1e-5);
  const MatrixF dref = nc::nc_directions(x, data.labels);
  const MatrixF dgot = nc::cuda::nc_directions(x, data.labels, C);
  CHECK((dgot - dref).cwiseAbs().maxCoeff() <= 1e-5f);
}

TEST_CASE("sanitizer smoke: every statistics kernel at small sizes", "[race][small]") {
  using Strategy = nc::cuda::ClassStatsOptions::Strategy;
  for (Index d : {12, 7}) {  // 16-byte and scalar loads
    const Index n = 700, C = 5;
    const std::vector<int64_t> y = sparse_labels(n, C, 2);
    const MatrixF x = clustered_rows(y, d, C, 3, 2.0, 5.0);
    nc::ClassStats cpu(C, d);
    cpu.add(x, y);
    const DeviceRows dx(x, d, false);
    const DeviceBuffer<int64_t> dy = to_device(y);
    for (Strategy st : {Strategy::privatized, Strategy::sorted})
      for (bool fp64 : {false, true}) check_stats(gpu_stats(dx, dy, n, d, C, {st, fp64}), cpu);
    nc::cuda::HostStatsOptions ho;
    ho.within_scatter = true;
    ho.scatter.chunk_rows = 100;
    const nc::cuda::ClassStatsResult r = nc::cuda::class_stats(x, y, C, ho);
    CHECK(rel_err(r.within_scatter, cpu.within_scatter()) <= 1e-5);
    for (nc::cuda::Precision p : {nc::cuda::Precision::fp32, nc::cuda::Precision::tf32}) {
      nc::cuda::NC1Options o;
      o.precision = p;
      o.chunk_rows = 200;
      CHECK(rel_err(nc::cuda::nc1(x, y, C, o).value, nc::nc1(cpu)) <= 1e-4);
    }
  }
  const Index n = 400, d = 9, C = 4;
  std::vector<int64_t> y(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) y[i] = i % C;
  const MatrixF x = clustered_rows(y, d, C, 4, 1.0, 1.0);
  for (nc::Direction m : {nc::Direction::pc1, nc::Direction::mean, nc::Direction::centered_mean}) {
    nc::DirectionOptions co;
    co.method = m;
    nc::cuda::DirectionOptions go;
    go.method = m;
    go.max_iterations = 5;  // the host fallback too
    CHECK((nc::cuda::nc_directions(x, y, C, go) - nc::nc_directions(x, y, co)).cwiseAbs().maxCoeff() <= 1e-5f);
  }
  const nc::Perturbation p({1e-2});
  CHECK((nc::cuda::noise(p, 5, 9, 3) - p.noise<float>(5, 9, 3)).cwiseAbs().maxCoeff() <= 1e-8f);
}
