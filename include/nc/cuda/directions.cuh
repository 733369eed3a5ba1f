// ncml GPU path: NC directions (unit rows [C, D]), as nc::nc_directions on the CPU.
//
//   nc::MatrixF dirs = nc::cuda::nc_directions(features, labels);            // Eigen in and out
//   nc::cuda::nc_directions(d_x, ldx, d_y, n, d, C, d_dirs, ldo, {}, stream); // device
//
// Direction::pc1, the paper's NC-Init direction, is the top right singular vector of each
// class's uncentred rows, signed towards the class mean. Rows are grouped by class once; a
// power iteration batched over all classes starts from the class mean and repeats
// w_c = E_c^T (E_c v_c), v_c = w_c / ||w_c|| (two passes over the rows of the classes still
// iterating, in float64) until ||w_c - lambda v_c|| <= tolerance * lambda. A class that has
// not converged after max_iterations (a tiny spectral gap) or whose iteration broke down is
// finished on the host by the CPU solver, so every class meets the CPU's accuracy.
// Direction::mean and Direction::centered_mean normalize the class means (minus the global
// mean). Every class needs a sample; classes without a direction throw nc::error as on
// the CPU.
#pragma once

#include <Eigen/Core>

#include <ncml_power.cuh>
#include <ncml_scatter.cuh>
#include <ncml_stats.cuh>

#include <vector>

#include "../directions.hpp"
#include "common.cuh"
#include "stats.cuh"

namespace nc::cuda {

struct DirectionOptions {
  Direction method = Direction::pc1;
  /// centered_mean: subtract the unweighted mean of the class means.
  bool unweighted_global_mean = false;
  /// pc1: power steps before the host takes over a class.
  int max_iterations = 1000;
  /// pc1: converged when ||w - lambda v|| <= tolerance * lambda.
  double tolerance = 1e-12;
};

/// The result of a direction search for the test and benchmark reports.
struct DirectionStats {
  int iterations = 0;         ///< power steps run
  Index host_fallbacks = 0;   ///< classes finished by the CPU solver
};

/// Directions of `d_x` [n, d] grouped by `d_labels` [n] in [0, C) into `d_dirs` [C, ldo]
/// (float). Synchronous; scratch from `alloc`.
template <class L>
DirectionStats nc_directions(const float* d_x, Index ldx, const L* d_labels, Index n, Index d,
                             Index num_classes, float* d_dirs, Index ldo,
                             const DirectionOptions& options = {}, cudaStream_t stream = 0,
                             DeviceAllocator& alloc = default_allocator()) {
  using namespace detail;
  check_label_type<L>();
  check_stats_args(d_x, ldx, n, d, num_classes);
  NC_EXPECTS(d_dirs != nullptr, "nc_directions: d_dirs is null");
  NC_EXPECTS(ldo >= d, "nc_directions: ldo = " << ldo << " is smaller than d = " << d);
  NC_EXPECTS(options.method == Direction::pc1 || options.method == Direction::mean ||
                 options.method == Direction::centered_mean,
             "unknown Direction value " << int(options.method));
  NC_EXPECTS(options.max_iterations >= 0, "max_iterations must be >= 0");
  const Index C = num_classes;
  const std::size_t cd = static_cast<std::size_t>(C) * d;

  auto plan = [&](Carver& c) {
    struct P {
      StatusBlock* status;
      Grouping grp;
      unsigned long long* cursor;
      void* scan;
      std::size_t scan_bytes;
      double *sums, *v, *w, *t, *gm;
      int *state, *active, *zero;
    } p;
    p.status = c.take<StatusBlock>(1);
    p.grp = plan_grouping(c, n, C, true, false);
    p.cursor = c.take<unsigned long long>(static_cast<std::size_t>(C) + 1);
    p.scan_bytes = scan_temp_bytes(C + 1);
    p.scan = c.take<char>(p.scan_bytes);
    p.sums = c.take<double>(cd);
    p.v = c.take<double>(cd);
    p.w = c.take<double>(cd);
    p.t = c.take<double>(static_cast<std::size_t>(n));
    p.gm = c.take<double>(static_cast<std::size_t>(d));
    p.state = c.take<int>(static_cast<std::size_t>(C));
    p.active = c.take<int>(1);
    p.zero = c.take<int>(static_cast<std::size_t>(C));
    return p;
  };
  Carver sizing;
  plan(sizing);
  DeviceBuffer<char> buf(sizing.bytes(), stream, alloc);
  Carver carver(buf.data(), buf.size());
  const auto p = plan(carver);
  init_status(p.status, kOpStats, stream);
  Carver scan(p.scan, p.scan_bytes);
  run_grouping(p.grp, d_labels, n, C, &p.status->s, 2, p.cursor, scan, stream);

  // Class sums (weights one), which also check every value.
  const bool v4 = vec4_ok(d_x, ldx, d);
  kernels::SortedArgs a{};
  a.x = d_x;
  a.ld = ldx;
  a.y = p.grp.y32;
  a.order = p.grp.order;
  a.start = p.grp.start;
  a.n = n;
  a.d = int(d);
  a.num_classes = int(C);
  a.st = &p.status->s;
  const long long blocks = ((n + kernels::kWindow - 1) / kernels::kWindow + kernels::kSortedWarps - 1) /
                           kernels::kSortedWarps;
  auto weighted_sums = [&](const double* weights, double* out, const int* skip) {
    a.weights = weights;
    a.wsum = out;
    a.skip = skip;
    const unsigned grid = grid_for(blocks, 1, 8ll * num_sms());
    if (v4) kernels::stats_sorted<4, 1><<<grid, kernels::kSortedWarps * 32, 0, stream>>>(a);
    else kernels::stats_sorted<1, 1><<<grid, kernels::kSortedWarps * 32, 0, stream>>>(a);
    NC_CUDA_CHECK_LAUNCH();
  };
  NC_CUDA_TRY(cudaMemsetAsync(p.sums, 0, cd * sizeof(double), stream));
  weighted_sums(nullptr, p.sums, nullptr);
  finish_status(p.status, d_x, ldx, d, nullptr, 0, 1, d_labels, sizeof(L), nullptr, 0, stream);
  std::vector<unsigned long long> counts(static_cast<std::size_t>(C));
  download(counts.data(), p.grp.counts, counts.size(), stream);
  throw_status(read_status(p.status, stream), C);
  std::vector<Index> empty;
  for (Index c = 0; c < C; ++c)
    if (counts[c] == 0) empty.push_back(c);
  NC_EXPECTS(empty.empty(), "class(es) " << nc::detail::join_indices(empty)
                                         << " have no samples; every class needs one for its direction");

  const unsigned class_grid = wide_grid(C, 8);
  DirectionStats stats;
  std::vector<Index> zero;
  if (options.method != Direction::pc1) {
    NC_EXPECTS(options.method != Direction::centered_mean || C >= 2,
               "centered_mean needs at least 2 classes, got num_classes = " << C);
    kernels::means_from_sums<<<wide_grid(C * d, 256), 256, 0, stream>>>(p.sums, p.grp.counts, int(C), int(d), p.w);
    NC_CUDA_CHECK_LAUNCH();
    double gm_norm = 0;
    const bool centred = options.method == Direction::centered_mean;
    if (centred) {
      kernels::global_mean<<<grid_for(d, 128, std::numeric_limits<int>::max()), 128, 0, stream>>>(
          p.w, d, reinterpret_cast<const long long*>(p.grp.counts), int(C), int(d),
          options.unweighted_global_mean ? 0 : 1, p.gm);
      NC_CUDA_CHECK_LAUNCH();
      Eigen::VectorXd gm(d);
      download(gm.data(), p.gm, static_cast<std::size_t>(d), stream);
      NC_CUDA_TRY(cudaStreamSynchronize(stream));
      gm_norm = gm.norm();
    }
    kernels::normalize_means<<<class_grid, 256, 0, stream>>>(p.w, d, int(C), int(d), centred ? p.gm : nullptr,
                                                             gm_norm, d_dirs, ldo, p.zero);
    NC_CUDA_CHECK_LAUNCH();
    std::vector<int> flags(static_cast<std::size_t>(C));
    download(flags.data(), p.zero, flags.size(), stream);
    NC_CUDA_TRY(cudaStreamSynchronize(stream));
    for (Index c = 0; c < C; ++c)
      if (flags[c]) zero.push_back(c);
    if (!zero.empty())
      nc::detail::throw_zero_directions(zero, centred ? "the class mean equals the global mean"
                                                      : "all of the class's rows are zero");
    return stats;
  }

  kernels::power_init<<<class_grid, 256, 0, stream>>>(p.sums, int(C), int(d), p.v, p.state);
  NC_CUDA_CHECK_LAUNCH();
  NC_CUDA_TRY(cudaMemsetAsync(p.w, 0, cd * sizeof(double), stream));
  const unsigned dots_grid = wide_grid(n, 8);
  for (int it = 0; it < options.max_iterations; ++it) {
    kernels::row_dots<<<dots_grid, 256, 0, stream>>>(d_x, ldx, p.grp.y32, p.grp.order, p.grp.start, int(C),
                                                     int(d), p.v, p.state, p.t);
    NC_CUDA_CHECK_LAUNCH();
    weighted_sums(p.t, p.w, p.state);
    NC_CUDA_TRY(cudaMemsetAsync(p.active, 0, sizeof(int), stream));
    kernels::power_update<<<class_grid, 256, 0, stream>>>(p.grp.start, int(C), int(d), p.w, p.v, p.state,
                                                          options.tolerance, p.active);
    NC_CUDA_CHECK_LAUNCH();
    int active = 0;
    download(&active, p.active, 1, stream);
    NC_CUDA_TRY(cudaStreamSynchronize(stream));
    stats.iterations = it + 1;
    if (active == 0) break;
  }
  kernels::power_finish<<<class_grid, 256, 0, stream>>>(p.v, p.sums, int(C), int(d), d_dirs, ldo);
  NC_CUDA_CHECK_LAUNCH();

  // Classes the power iteration did not settle: the CPU solver on their rows.
  std::vector<int> state(static_cast<std::size_t>(C));
  download(state.data(), p.state, state.size(), stream);
  std::vector<unsigned long long> start(static_cast<std::size_t>(C) + 1);
  download(start.data(), p.grp.start, start.size(), stream);
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  for (Index c = 0; c < C; ++c) {
    if (state[c] == kernels::kConverged) continue;
    ++stats.host_fallbacks;
    const long long rows = static_cast<long long>(start[c + 1] - start[c]);
    DeviceBuffer<float> tmp(static_cast<std::size_t>(rows) * d, stream, alloc);
    kernels::gather_rows<<<wide_grid(rows * d, 256), 256, 0, stream>>>(d_x, ldx, p.grp.order + start[c], rows,
                                                                      int(d), tmp.data());
    NC_CUDA_CHECK_LAUNCH();
    MatrixF e(rows, d);
    download(e.data(), tmp.data(), tmp.size(), stream);
    NC_CUDA_TRY(cudaStreamSynchronize(stream));
    const Eigen::VectorXd v = nc::detail::uncentred_pc1(e);
    if (!(v.squaredNorm() > 0)) {
      zero.push_back(c);
      continue;
    }
    const Eigen::VectorXf vf = v.cast<float>();
    upload(d_dirs + c * ldo, vf.data(), static_cast<std::size_t>(d), stream);
  }
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  if (!zero.empty()) nc::detail::throw_zero_directions(zero, "all of the class's rows are zero");
  return stats;
}

/// Directions of host features [N, D] (float32 on the GPU) with labels [N]; returns [C, D].
template <class D, class Labels>
MatrixF nc_directions(const Eigen::MatrixBase<D>& features, const Labels& labels,
                      Index num_classes = -1, const DirectionOptions& options = {},
                      cudaStream_t stream = 0) {
  const detail::DeviceLabelledRows rows = detail::upload_labelled_rows(features, labels, num_classes, stream);
  const Index n = rows.n, d = rows.d;
  const DeviceBuffer<float>& dx = rows.x;
  const DeviceBuffer<int64_t>& dy = rows.y;
  DeviceBuffer<float> dd(static_cast<std::size_t>(num_classes) * d, stream);
  nc_directions(dx.data(), d, dy.data(), n, d, num_classes, dd.data(), d, options, stream);
  MatrixF out(num_classes, d);
  detail::download(out.data(), dd.data(), dd.size(), stream);
  NC_CUDA_TRY(cudaStreamSynchronize(stream));
  return out;
}

}  // namespace nc::cuda
