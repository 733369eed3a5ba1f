// nc::nccl::allreduce_stats against the CPU statistics of the concatenated rows.
//
// NCCL refuses two ranks on one device, so the merge is checked in two ways on one GPU:
//  - the real NCCL path with a one-rank communicator (statistics unchanged, the agreement
//    check and argument errors);
//  - the same merge code (detail::allreduce_stats_with) with a stand-in reducer that runs R
//    "ranks" as host threads in lockstep and sums their device buffers: every rank must end
//    with the statistics of all rows, for uneven shards, an empty shard and a class present
//    on one shard only.
// Without a CUDA device the program exits with 77 (ctest: skipped).
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <nc/cuda/stats.cuh>
#include <nc/distributed/nccl.cuh>
#include <nc/stats.hpp>

#include "support.hpp"

using namespace nct;
using nc::cuda::DeviceBuffer;

namespace {

const bool kGpuPresent = [] {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("no CUDA device: the NCCL tests are skipped\n");
    std::exit(77);
  }
  return true;
}();

/// Device statistics of one shard (class_stats + within_scatter), with their buffers.
struct Shard {
  Index C, d;
  DeviceBuffer<long long> counts;
  DeviceBuffer<double> means, sq, sw;
  Shard(const MatrixF& x, const std::vector<int64_t>& y, Index C_, Index d_)
      : C(C_), d(d_), counts(C_), means(static_cast<std::size_t>(C_ * d_)), sq(C_), sw(static_cast<std::size_t>(d_ * d_)) {
    NC_CUDA_TRY(cudaMemset(counts.data(), 0, C * sizeof(long long)));
    NC_CUDA_TRY(cudaMemset(means.data(), 0, C * d * sizeof(double)));
    NC_CUDA_TRY(cudaMemset(sq.data(), 0, C * sizeof(double)));
    NC_CUDA_TRY(cudaMemset(sw.data(), 0, d * d * sizeof(double)));
    if (x.rows() > 0) {
      DeviceBuffer<float> dx(static_cast<std::size_t>(x.size()));
      DeviceBuffer<int64_t> dy(y.size());
      NC_CUDA_TRY(cudaMemcpy(dx.data(), x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice));
      NC_CUDA_TRY(cudaMemcpy(dy.data(), y.data(), y.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
      nc::cuda::class_stats(dx.data(), d, dy.data(), x.rows(), d, C, out());
      nc::cuda::within_scatter(dx.data(), d, dy.data(), x.rows(), d, C, means.data(), d, sw.data(), d);
      NC_CUDA_TRY(cudaDeviceSynchronize());
    }
  }
  nc::cuda::ClassStatsOutput out() const { return {counts.data(), means.data(), d, sq.data()}; }
  template <class T>
  std::vector<T> host(const DeviceBuffer<T>& b) const {
    std::vector<T> v(b.size());
    NC_CUDA_TRY(cudaMemcpy(v.data(), b.data(), v.size() * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
};

/// R host threads acting as ranks: each collective waits for all R, then sums (or takes the
/// maximum of) the R device buffers on the host and writes the result back to each.
class LockstepReducer {
 public:
  explicit LockstepReducer(int ranks) : ranks_(ranks), ptrs_(static_cast<std::size_t>(ranks)) {}
  struct Rank {
    LockstepReducer* self;
    int rank;
    void group_begin() {}
    void group_end() {}
    void sum(long long* p, std::size_t n, cudaStream_t s) { self->reduce(rank, p, n, s, false); }
    void sum(double* p, std::size_t n, cudaStream_t s) { self->reduce(rank, p, n, s, false); }
    void max(long long* p, std::size_t n, cudaStream_t s) { self->reduce(rank, p, n, s, true); }
  };

 private:
  template <class T>
  void reduce(int rank, T* p, std::size_t n, cudaStream_t s, bool take_max) {
    NC_CUDA_TRY(cudaStreamSynchronize(s));
    std::unique_lock<std::mutex> lock(m_);
    const long gen = generation_;
    ptrs_[static_cast<std::size_t>(rank)] = p;
    if (++arrived_ == ranks_) {
      std::vector<T> acc(n), part(n);
      for (int r = 0; r < ranks_; ++r) {
        NC_CUDA_TRY(cudaMemcpy(part.data(), ptrs_[static_cast<std::size_t>(r)], n * sizeof(T), cudaMemcpyDeviceToHost));
        for (std::size_t i = 0; i < n; ++i) acc[i] = r == 0 ? part[i] : (take_max ? std::max(acc[i], part[i]) : acc[i] + part[i]);
      }
      for (int r = 0; r < ranks_; ++r)
        NC_CUDA_TRY(cudaMemcpy(ptrs_[static_cast<std::size_t>(r)], acc.data(), n * sizeof(T), cudaMemcpyHostToDevice));
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != gen; });
    }
  }
  int ranks_;
  std::vector<void*> ptrs_;
  std::mutex m_;
  std::condition_variable cv_;
  int arrived_ = 0;
  long generation_ = 0;
};

}  // namespace

TEST_CASE("nccl allreduce_stats: one-rank communicator leaves the statistics unchanged", "[nccl][small][race]") {
  const Index n = 3000, d = 24, C = 11;
  std::vector<int> yi;
  const MatrixF x = mixture(n, d, C, yi, 5, 3.0, 1.0).cast<float>();
  const std::vector<int64_t> y(yi.begin(), yi.end());
  Shard s(x, y, C, d);
  const auto means0 = s.host(s.means), sq0 = s.host(s.sq), sw0 = s.host(s.sw);
  const auto counts0 = s.host(s.counts);

  int dev = 0;
  NC_CUDA_TRY(cudaGetDevice(&dev));
  ncclComm_t comm = nullptr;
  NC_NCCL_TRY(ncclCommInitAll(&comm, 1, &dev));
  nc::nccl::allreduce_stats(s.out(), C, d, s.sw.data(), d, comm);
  NC_CUDA_TRY(cudaDeviceSynchronize());
  CHECK(s.host(s.counts) == counts0);
  const auto means1 = s.host(s.means), sq1 = s.host(s.sq), sw1 = s.host(s.sw);
  for (std::size_t i = 0; i < means0.size(); ++i) CHECK(means1[i] == means0[i]);
  for (std::size_t i = 0; i < sq0.size(); ++i) CHECK(sq1[i] == Approx(sq0[i]).epsilon(1e-12));
  for (std::size_t i = 0; i < sw0.size(); ++i) CHECK(sw1[i] == Approx(sw0[i]).epsilon(1e-12).margin(1e-12));

  CHECK_THROWS_WITH(nc::nccl::allreduce_stats(s.out(), C, d, s.sw.data(), d - 1, comm),
                    Catch::Contains("lds = " + std::to_string(d - 1)));
  CHECK_THROWS_WITH(nc::nccl::allreduce_stats(s.out(), 0, d, nullptr, 0, comm),
                    Catch::Contains("num_classes must be positive"));
  CHECK_THROWS_WITH(nc::nccl::allreduce_stats(s.out(), C, d, nullptr, 0, nullptr), Catch::Contains("comm is null"));
  ncclCommDestroy(comm);
}

TEST_CASE("nccl allreduce_stats merge: every rank ends with the statistics of all rows", "[nccl]") {
  const Index n = 4000, d = 37, C = 23;
  std::vector<int> yi;
  const MatrixF x = mixture(n, d, C, yi, 9, 4.0, 1.0).cast<float>();
  std::vector<int64_t> y(yi.begin(), yi.end());
  for (auto& v : y)
    if (v == 7) v = 8;  // class 7 empty
  // Uneven shards: 0..2900, an empty shard, 2900..4000; class 5 only on the last shard.
  std::vector<std::vector<Index>> rows(3);
  for (Index i = 0; i < n; ++i) {
    const int r = (y[i] == 5 || i >= 2900) ? 2 : 0;
    rows[r].push_back(i);
  }
  const int R = 3;
  std::vector<std::unique_ptr<Shard>> shards;
  for (int r = 0; r < R; ++r) {
    MatrixF xs(static_cast<Index>(rows[r].size()), d);
    std::vector<int64_t> ys;
    for (std::size_t i = 0; i < rows[r].size(); ++i) {
      xs.row(static_cast<Index>(i)) = x.row(rows[r][i]);
      ys.push_back(y[rows[r][i]]);
    }
    shards.push_back(std::make_unique<Shard>(xs, ys, C, d));
  }
  LockstepReducer red(R);
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(R);
  for (int r = 0; r < R; ++r) {
    threads.emplace_back([&, r] {
      try {
        NC_CUDA_TRY(cudaSetDevice(0));
        LockstepReducer::Rank rr{&red, r};
        nc::nccl::detail::allreduce_stats_with(rr, shards[r]->out(), C, d, shards[r]->sw.data(), d, 0,
                                               nc::cuda::default_allocator(), nullptr);
        NC_CUDA_TRY(cudaDeviceSynchronize());
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);

  // The CPU reference of all rows (float64 accumulation).
  const nc::ClassStats ref = nc::class_stats(x, y, C);
  for (int r = 0; r < R; ++r) {
    INFO("rank " << r);
    const auto counts = shards[r]->host(shards[r]->counts);
    const auto means = shards[r]->host(shards[r]->means);
    const auto sq = shards[r]->host(shards[r]->sq);
    const auto sw = shards[r]->host(shards[r]->sw);
    const nc::MatrixD sw_ref = ref.within_covariance() * double(n);
    const Eigen::VectorXd sq_ref = ref.class_sq_deviations();
    for (Index c = 0; c < C; ++c) {
      CHECK(counts[c] == ref.counts()[c]);
      for (Index j = 0; j < d; ++j) CHECK(means[c * d + j] == Approx(ref.means()(c, j)).epsilon(1e-6).margin(1e-6));
      CHECK(sq[c] == Approx(sq_ref[c]).epsilon(1e-5).margin(1e-6));
    }
    double err = 0, scale = sw_ref.cwiseAbs().maxCoeff();
    for (Index i = 0; i < d; ++i)
      for (Index j = 0; j < d; ++j) err = std::max(err, std::abs(sw[i * d + j] - sw_ref(i, j)));
    CHECK(err <= 1e-5 * scale);
    for (Index i = 0; i < d; ++i)
      for (Index j = 0; j < i; ++j) CHECK(sw[i * d + j] == sw[j * d + i]);  // symmetric bitwise
  }
  // Disagreeing ranks: every rank gets nc::error (rank 1 claims another dimension).
  LockstepReducer red2(2);
  std::vector<std::exception_ptr> errs(2);
  std::vector<std::thread> t2;
  for (int r = 0; r < 2; ++r) {
    t2.emplace_back([&, r] {
      try {
        NC_CUDA_TRY(cudaSetDevice(0));
        LockstepReducer::Rank rr{&red2, r};
        nc::nccl::detail::allreduce_stats_with(rr, shards[r]->out(), C, r == 0 ? d : d - 1, nullptr, 0, 0,
                                               nc::cuda::default_allocator(), nullptr);
      } catch (...) {
        errs[r] = std::current_exception();
      }
    });
  }
  for (auto& t : t2) t.join();
  for (int r = 0; r < 2; ++r) {
    REQUIRE(errs[r]);
    CHECK_THROWS_WITH(std::rethrow_exception(errs[r]), Catch::Contains("ranks disagree"));
  }
}
