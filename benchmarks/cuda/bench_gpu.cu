// ncml GPU benchmarks: every kernel at the sizes of docs/benchmarks.md and
// ../shared/design/PERFORMANCE.md, next to the ceilings measured in the same process (device
// copy bandwidth, cuBLAS GEMM rates) and the cuBLAS GEMM that computes the same similarities.
//
//   bench_gpu [--quick] [--only SUBSTRING] [--json FILE]
//
// Times are medians of CUDA-event timings after a warm-up, with the L2 cache flushed (a
// 512 MiB write) before each repetition and inputs drawn at random (never zeros). Each
// result is one JSON object per line in FILE (scripts/gpu-check.sh merges them with the
// torch baselines of scripts/gpu_torch_baselines.py) and one line of the table on stdout.
// Google Benchmark is not used: the GPU machines that run this have no such package, and
// the side-by-side comparison with torch needs the raw numbers in one file.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nc/cuda/directions.cuh>
#include <nc/cuda/knn.cuh>
#include <nc/cuda/nc1.cuh>
#include <nc/cuda/perturb.cuh>
#include <nc/cuda/retrieval.cuh>
#include <nc/cuda/stats.cuh>

namespace {

using nc::Index;
using nc::cuda::DeviceBuffer;

struct Args {
  bool quick = false;
  std::string only, json;
};

struct Bench {
  Args args;
  std::ofstream json;
  DeviceBuffer<char> flush_buf{std::size_t(512) << 20};
  cudaEvent_t start{}, stop{};
  cublasHandle_t blas{};

  explicit Bench(Args a) : args(std::move(a)) {
    NC_CUDA_TRY(cudaEventCreate(&start));
    NC_CUDA_TRY(cudaEventCreate(&stop));
    NC_CUBLAS_TRY(cublasCreate(&blas));
    if (!args.json.empty()) json.open(args.json);
  }
  ~Bench() {
    cublasDestroy(blas);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }

  bool wanted(const std::string& name) const { return args.only.empty() || name.find(args.only) != std::string::npos; }

  /// Median milliseconds of f() over `reps` runs after `warmup` runs, L2 flushed before each.
  double time_ms(const std::function<void()>& f, int reps, int warmup = 1) {
    for (int i = 0; i < warmup; ++i) f();
    NC_CUDA_TRY(cudaDeviceSynchronize());
    std::vector<float> t;
    for (int i = 0; i < reps; ++i) {
      NC_CUDA_TRY(cudaMemsetAsync(flush_buf.data(), i & 0xff, flush_buf.size()));
      NC_CUDA_TRY(cudaEventRecord(start));
      f();
      NC_CUDA_TRY(cudaEventRecord(stop));
      NC_CUDA_TRY(cudaEventSynchronize(stop));
      float ms = 0;
      NC_CUDA_TRY(cudaEventElapsedTime(&ms, start, stop));
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }

  /// Records one result: bytes and flops give GB/s and TFLOP/s; `extra` is raw JSON fields.
  void report(const std::string& name, double ms, double bytes, double flops, const std::string& extra = "") {
    const double gbs = bytes > 0 ? bytes / ms / 1e6 : 0, tfs = flops > 0 ? flops / ms / 1e9 : 0;
    std::printf("%-48s %10.3f ms", name.c_str(), ms);
    if (bytes > 0) std::printf("  %8.1f GB/s", gbs);
    if (flops > 0) std::printf("  %8.2f TFLOP/s", tfs);
    std::printf("\n");
    std::fflush(stdout);
    if (json.is_open()) {
      json << "{\"name\": \"" << name << "\", \"ms\": " << ms << ", \"gbps\": " << gbs << ", \"tflops\": " << tfs;
      if (!extra.empty()) json << ", " << extra;
      json << "}\n";
      json.flush();
    }
  }
};

void fill_normal(float* d, std::size_t n, uint64_t seed, float offset = 0.0f) {
  std::vector<float> h(std::min<std::size_t>(n, std::size_t(1) << 24));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (auto& v : h) v = g(rng) + offset;
  for (std::size_t off = 0; off < n; off += h.size()) {
    const std::size_t m = std::min(h.size(), n - off);
    NC_CUDA_TRY(cudaMemcpy(d + off, h.data(), m * sizeof(float), cudaMemcpyHostToDevice));
  }
}

DeviceBuffer<int64_t> random_labels(Index n, Index classes, uint64_t seed) {
  std::vector<int64_t> h(static_cast<std::size_t>(n));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> pick(0, classes - 1);
  for (Index i = 0; i < n; ++i) h[i] = i < classes ? i : pick(rng);
  DeviceBuffer<int64_t> d(h.size());
  NC_CUDA_TRY(cudaMemcpy(d.data(), h.data(), h.size() * 8, cudaMemcpyHostToDevice));
  return d;
}

void ceilings(Bench& b) {
  if (b.wanted("copy")) {
    const std::size_t bytes = std::size_t(1) << 30;
    DeviceBuffer<char> src(bytes), dst(bytes);
    NC_CUDA_TRY(cudaMemset(src.data(), 1, bytes));
    const double ms = b.time_ms([&] { NC_CUDA_TRY(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice)); }, 10);
    b.report("copy_1GiB", ms, 2.0 * bytes, 0);
  }
  if (b.wanted("gemm_8192")) {
    const int n = 8192;
    DeviceBuffer<float> a(std::size_t(n) * n), c(std::size_t(n) * n);
    fill_normal(a.data(), a.size(), 1);
    const float one = 1, zero = 0;
    for (auto ct : {CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32}) {
      const double ms = b.time_ms([&] {
        NC_CUBLAS_TRY(cublasGemmEx(b.blas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a.data(), CUDA_R_32F, n, a.data(),
                                   CUDA_R_32F, n, &zero, c.data(), CUDA_R_32F, n, ct, CUBLAS_GEMM_DEFAULT));
      }, 5);
      b.report(ct == CUBLAS_COMPUTE_32F ? "gemm_8192_fp32" : "gemm_8192_tf32", ms, 0, 2.0 * n * n * double(n));
    }
  }
}

void stats(Bench& b) {
  const Index n = Index(1) << 20, d = 512;
  if (!b.wanted("class_stats") && !b.wanted("within_scatter") && !b.wanted("nc1_d512") && !b.wanted("directions")) return;
  DeviceBuffer<float> x(static_cast<std::size_t>(n) * d);
  fill_normal(x.data(), x.size(), 7, 1.0f);
  for (Index C : {Index(10), Index(1000), Index(100000)}) {
    const DeviceBuffer<int64_t> y = random_labels(n, C, C);
    DeviceBuffer<long long> cnt(C);
    DeviceBuffer<double> means(static_cast<std::size_t>(C) * d), sq(C);
    const nc::cuda::ClassStatsOutput out{cnt.data(), means.data(), d, sq.data()};
    using S = nc::cuda::ClassStatsOptions::Strategy;
    for (S st : {S::automatic, S::sorted}) {
      if (st == S::sorted && C != 10) continue;  // automatic is sorted there already
      const std::string name = std::string("class_stats_C") + std::to_string(C) + (st == S::sorted ? "_sorted" : "");
      if (!b.wanted(name)) continue;
      nc::cuda::ClassStatsOptions o;
      o.strategy = st;
      nc::cuda::Workspace ws;
      nc::cuda::class_stats_async(x.data(), d, y.data(), n, d, C, out, ws, o);
      DeviceBuffer<char> wb(ws.bytes);
      ws.data = wb.data();
      const double ms = b.time_ms([&] { nc::cuda::class_stats_async(x.data(), d, y.data(), n, d, C, out, ws, o); }, 10);
      nc::cuda::check_inputs(ws, 0, C);
      b.report(name, ms, 4.0 * n * d, double(n) * d, "\"n\": 1048576, \"d\": 512, \"C\": " + std::to_string(C));
    }
  }
  const Index C = 100;
  const DeviceBuffer<int64_t> y = random_labels(n, C, 3);
  DeviceBuffer<long long> cnt(C);
  DeviceBuffer<double> means(static_cast<std::size_t>(C) * d), sq(C);
  nc::cuda::class_stats(x.data(), d, y.data(), n, d, C, {cnt.data(), means.data(), d, sq.data()});
  if (b.wanted("within_scatter")) {
    DeviceBuffer<double> sw(static_cast<std::size_t>(d) * d);
    nc::cuda::Workspace ws;
    nc::cuda::within_scatter_async(x.data(), d, y.data(), n, d, C, means.data(), d, sw.data(), d, ws);
    DeviceBuffer<char> wb(ws.bytes);
    ws.data = wb.data();
    const double ms = b.time_ms([&] {
      nc::cuda::within_scatter_async(x.data(), d, y.data(), n, d, C, means.data(), d, sw.data(), d, ws);
    }, 5);
    b.report("within_scatter", ms, 4.0 * n * d, double(n) * d * d * 2, "\"n\": 1048576, \"d\": 512");
    DeviceBuffer<float> c(static_cast<std::size_t>(d) * d);
    const float one = 1, zero = 0;
    const double ms_gemm = b.time_ms([&] {
      NC_CUBLAS_TRY(cublasSgemm(b.blas, CUBLAS_OP_N, CUBLAS_OP_T, int(d), int(d), int(n), &one, x.data(), int(d),
                                x.data(), int(d), &zero, c.data(), int(d)));
    }, 5);
    b.report("within_scatter_ref_cublas_xtx", ms_gemm, 4.0 * n * d, 2.0 * n * d * d);
  }
  for (auto prec : {nc::cuda::Precision::fp32, nc::cuda::Precision::tf32}) {
    const std::string name = std::string("nc1_d512_C100_") + (prec == nc::cuda::Precision::fp32 ? "fp32" : "tf32");
    if (!b.wanted(name)) continue;
    nc::cuda::NC1Options o;
    o.precision = prec;
    // End to end from device features: statistics, spectrum, projection.
    const double ms = b.time_ms([&] {
      nc::cuda::class_stats(x.data(), d, y.data(), n, d, C, {cnt.data(), means.data(), d, sq.data()});
      nc::cuda::nc1(x.data(), d, y.data(), n, d, C, cnt.data(), means.data(), d, o);
    }, 5);
    b.report(name, ms, 8.0 * n * d, 2.0 * n * d * 99, "\"n\": 1048576, \"d\": 512, \"C\": 100");
  }
  if (b.wanted("directions_pc1")) {
    const Index nd = Index(1) << 18;
    DeviceBuffer<float> dirs(static_cast<std::size_t>(C) * d);
    nc::cuda::DirectionStats st;
    const double ms = b.time_ms([&] {
      st = nc::cuda::nc_directions(x.data(), d, y.data(), nd, d, C, dirs.data(), d);
    }, 3);
    b.report("directions_pc1_n262144_d512_C100", ms, 0, 0,
             "\"iterations\": " + std::to_string(st.iterations) + ", \"host_fallbacks\": " + std::to_string(st.host_fallbacks));
  }
}

void nc1_wide(Bench& b) {
  const Index n = Index(1) << 18, d = 2048, C = 100;
  if (!b.wanted("nc1_d2048")) return;
  DeviceBuffer<float> x(static_cast<std::size_t>(n) * d);
  fill_normal(x.data(), x.size(), 9, 0.5f);
  const DeviceBuffer<int64_t> y = random_labels(n, C, 4);
  DeviceBuffer<long long> cnt(C);
  DeviceBuffer<double> means(static_cast<std::size_t>(C) * d), sq(C);
  for (auto prec : {nc::cuda::Precision::fp32, nc::cuda::Precision::tf32}) {
    nc::cuda::NC1Options o;
    o.precision = prec;
    const double ms = b.time_ms([&] {
      nc::cuda::class_stats(x.data(), d, y.data(), n, d, C, {cnt.data(), means.data(), d, sq.data()});
      nc::cuda::nc1(x.data(), d, y.data(), n, d, C, cnt.data(), means.data(), d, o);
    }, 3);
    b.report(std::string("nc1_d2048_C100_") + (prec == nc::cuda::Precision::fp32 ? "fp32" : "tf32"), ms, 8.0 * n * d,
             2.0 * n * d * 99, "\"n\": 262144, \"d\": 2048, \"C\": 100");
  }
}

/// Leave-one-out cosine top-K on N random rows, every precision (re-ranking for small k),
/// the chunked cuBLAS GEMM over the same pairs (4096 queries at a time, as torch's baseline
/// does), and optionally the retrieval evaluator on SOP-like labels (about 5 per class).
void search(Bench& b, Index n, Index d, Index k, int reps, bool retrieval) {
  const std::string tag = "n" + std::to_string(n) + "_d" + std::to_string(d) + "_k" + std::to_string(k);
  if (!b.wanted("knn_" + tag) && !b.wanted("gemm_pairs_" + tag) && !b.wanted("retrieval_" + tag)) return;
  DeviceBuffer<float> x(static_cast<std::size_t>(n) * d);
  fill_normal(x.data(), x.size(), 11);
  DeviceBuffer<int64_t> idx(static_cast<std::size_t>(n) * k);
  DeviceBuffer<float> sc(static_cast<std::size_t>(n) * k);
  const double pair_flops = 2.0 * double(n) * double(n) * double(d);
  struct Mode {
    const char* name;
    nc::cuda::Precision p;
    bool rerank;
  };
  for (const Mode& m : {Mode{"fp32", nc::cuda::Precision::fp32, false}, Mode{"tf32", nc::cuda::Precision::tf32, false},
                        Mode{"bf16", nc::cuda::Precision::bf16, false}, Mode{"bf16_rerank", nc::cuda::Precision::bf16, true}}) {
    const std::string name = "knn_" + tag + "_" + m.name;
    if (!b.wanted(name) || (m.rerank && k > 256)) continue;
    nc::cuda::KnnOptions o;
    o.exclude_self = true;
    o.precision = m.p;
    o.rerank = m.rerank;
    o.cublas = b.blas;
    nc::cuda::Workspace ws;
    nc::cuda::knn_async(x.data(), d, n, x.data(), d, n, d, k, idx.data(), k, sc.data(), k, ws, o);
    DeviceBuffer<char> wb(ws.bytes);
    ws.data = wb.data();
    const double ms = b.time_ms([&] {
      nc::cuda::knn_async(x.data(), d, n, x.data(), d, n, d, k, idx.data(), k, sc.data(), k, ws, o);
    }, reps);
    nc::cuda::check_inputs(ws);
    b.report(name, ms, 0, pair_flops, "\"workspace_bytes\": " + std::to_string(ws.bytes));
  }
  const Index chunk = 4096;
  DeviceBuffer<float> buf(static_cast<std::size_t>(chunk) * n);
  const float one = 1, zero = 0;
  for (auto ct : {CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32}) {
    const std::string name = "gemm_pairs_" + tag + (ct == CUBLAS_COMPUTE_32F ? "_fp32" : "_tf32");
    if (!b.wanted(name)) continue;
    const double ms = b.time_ms([&] {
      for (Index q0 = 0; q0 < n; q0 += chunk) {
        const int rows = int(std::min(chunk, n - q0));
        NC_CUBLAS_TRY(cublasGemmEx(b.blas, CUBLAS_OP_T, CUBLAS_OP_N, int(n), rows, int(d), &one, x.data(), CUDA_R_32F,
                                   int(d), x.data() + q0 * d, CUDA_R_32F, int(d), &zero, buf.data(), CUDA_R_32F, int(n),
                                   ct, CUBLAS_GEMM_DEFAULT));
      }
    }, reps);
    b.report(name, ms, 0, pair_flops);
  }
  const std::string rname = "retrieval_" + tag;
  if (retrieval && b.wanted(rname)) {
    const DeviceBuffer<int64_t> y = random_labels(n, n / 5, 13);  // SOP-like: about 5 per class
    for (auto p : {nc::cuda::Precision::fp32, nc::cuda::Precision::tf32}) {
      nc::cuda::RetrievalOptions o;
      o.ks = {1, 10, 100, int(std::min<Index>(1000, n - 1))};
      o.precision = p;
      o.cublas = b.blas;
      const double ms = b.time_ms([&] { nc::cuda::evaluate_retrieval(x.data(), d, y.data(), n, d, o); }, reps);
      b.report(rname + (p == nc::cuda::Precision::fp32 ? "_fp32" : "_tf32"), ms, 0, pair_flops);
    }
  }
}

void perturb(Bench& b) {
  if (!b.wanted("perturb")) return;
  const Index c = 100000, d = 512;
  DeviceBuffer<float> w(static_cast<std::size_t>(c) * d);
  fill_normal(w.data(), w.size(), 3);
  const nc::Perturbation p({1e-3});
  const double ms = b.time_ms([&] { nc::cuda::perturb_async(w.data(), d, c, d, p, 5); }, 10);
  b.report("perturb_C100000_d512", ms, 8.0 * c * d, 0);
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") args.quick = true;
    else if (a == "--only" && i + 1 < argc) args.only = argv[++i];
    else if (a == "--json" && i + 1 < argc) args.json = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--only SUBSTRING] [--json FILE]\n", argv[0]);
      return 2;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: nothing to benchmark\n");
    return 77;
  }
  try {
    cudaDeviceProp prop{};
    NC_CUDA_TRY(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, %.1f GiB, L2 %d MiB\n", prop.name, prop.multiProcessorCount,
                prop.totalGlobalMem / double(1 << 30), prop.l2CacheSize >> 20);
    Bench b(args);
    ceilings(b);
    stats(b);
    nc1_wide(b);
    perturb(b);
    search(b, 60000, 512, 8, args.quick ? 3 : 5, true);
    search(b, 60000, 512, 1000, args.quick ? 3 : 5, false);
    if (!args.quick) search(b, 200000, 512, 32, 2, false);
    search(b, 400000, 128, 16, args.quick ? 1 : 3, true);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: %s\n", e.what());
    return 1;
  }
  return 0;
}
