// ncml: statistics and NC directions over data sharded across MPI ranks.
//
// Needs MPI (link MPI::MPI_CXX). Every call is collective: all ranks of `comm` call it with
// their own shard, and all ranks get the result for the union of the shards.
//
//   nc::ClassStats local(C, D);
//   local.add(my_embeddings, my_labels);
//   nc::mpi::allreduce(local, MPI_COMM_WORLD);       // now the statistics of all ranks
//   double v = nc::nc1(local);                        // the same on every rank
//   nc::MatrixF W = nc::mpi::init_head(my_embeddings, my_labels, MPI_COMM_WORLD);
//
// Exactness: statistics travel as sums of float64 values, in two rounds. Round 1 sums the
// counts and n_c mu_c, giving the global class means. Round 2 sums each rank's squared
// deviations and scatter taken about those *global* means (its own deviations plus
// n_rc (mu_rc - mu_c)(mu_rc - mu_c)^T), which is the exact Chan decomposition, so no
// E[xx^T] - mu mu^T cancellation appears. The only dependence on the number of ranks is the
// order of float64 additions (rounding, ~1e-16 relative). Each round is an MPI_Reduce to rank
// 0 followed by MPI_Bcast, so every rank holds bitwise the same result.
//
// Errors: invalid input on any rank (NaN, labels out of range, ranks disagreeing on the
// number of classes, the dimension or the options) makes every rank throw nc::error with
// the same message, naming the first failing rank; no rank is left waiting in a collective.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/check.hpp"
#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../directions.hpp"
#include "../head.hpp"
#include "../stats.hpp"

namespace nc::mpi {

namespace detail {

inline void check_mpi(int rc, const char* call) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    NC_FAIL(call << " failed: " << std::string(msg, len));
  }
}

inline int rank_of(MPI_Comm comm) {
  int r = 0;
  check_mpi(MPI_Comm_rank(comm, &r), "MPI_Comm_rank");
  return r;
}

/// Collective error agreement: runs `f` locally; if it throws nc::error on any rank, every
/// rank throws nc::error with the message of the lowest failing rank.
template <class F>
void agree(MPI_Comm comm, F&& f) {
  std::string msg;
  try {
    f();
  } catch (const ::nc::error& e) {
    msg = e.what();
  }
  const int me = rank_of(comm);
  int failing = msg.empty() ? INT32_MAX : me;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &failing, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
  if (failing == INT32_MAX) return;
  int len = static_cast<int>(msg.size());
  check_mpi(MPI_Bcast(&len, 1, MPI_INT, failing, comm), "MPI_Bcast");
  msg.resize(len);
  check_mpi(MPI_Bcast(&msg[0], len, MPI_CHAR, failing, comm), "MPI_Bcast");
  throw ::nc::error("rank " + std::to_string(failing) + ": " + msg);
}

inline MPI_Datatype mpi_type(const double*) { return MPI_DOUBLE; }
inline MPI_Datatype mpi_type(const int64_t*) { return MPI_INT64_T; }

/// Sum of `x` over all ranks, identical on every rank (reduce to 0, then broadcast).
template <class T>
void sum_everywhere(T* x, int n, MPI_Comm comm) {
  const int me = rank_of(comm);
  if (n == 0) return;
  check_mpi(MPI_Reduce(me == 0 ? MPI_IN_PLACE : x, me == 0 ? x : nullptr, n, mpi_type(x), MPI_SUM, 0, comm),
            "MPI_Reduce");
  check_mpi(MPI_Bcast(x, n, mpi_type(x), 0, comm), "MPI_Bcast");
}

/// Sums a large buffer in pieces (MPI counts are int).
template <class T>
void sum_everywhere_chunked(T* x, Index n, MPI_Comm comm) {
  constexpr Index kPiece = Index(1) << 28;
  for (Index off = 0; off < n; off += kPiece) sum_everywhere(x + off, int(std::min(kPiece, n - off)), comm);
}

/// Throws unless every rank passed the same values.
inline void check_same(MPI_Comm comm, const std::vector<int64_t>& values, const char* what) {
  std::vector<int64_t> lo = values, hi = values;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, lo.data(), int(lo.size()), MPI_INT64_T, MPI_MIN, comm), "MPI_Allreduce");
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, hi.data(), int(hi.size()), MPI_INT64_T, MPI_MAX, comm), "MPI_Allreduce");
  NC_EXPECTS(lo == hi, "ranks disagree on " << what << " (this rank: " << ::nc::detail::join_indices(values)
                                            << "; minimum over ranks: " << ::nc::detail::join_indices(lo)
                                            << "; maximum: " << ::nc::detail::join_indices(hi) << ")");
}

/// Number of classes over all shards: `requested` if >= 0 (validated everywhere), else the
/// global max(label) + 1. Collective; validates features and labels on every rank.
template <class T, class Labels>
Index global_num_classes(const ConstRowsRef<T>& x, const Labels& labels, Index requested, MPI_Comm comm) {
  const auto y = label_view(labels);
  int64_t local = 0;
  agree(comm, [&] {
    NC_EXPECTS(requested == -1 || requested > 0, "num_classes must be positive or -1 (infer), got " << requested);
    if (x.rows() > 0) ::nc::detail::check_features(x, "features");
    local = ::nc::detail::check_labels(y, x.rows(), requested, "labels");
  });
  int64_t d = x.cols();
  agree(comm, [&] { check_same(comm, {d}, "the feature dimension"); });
  int64_t C = local;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &C, 1, MPI_INT64_T, MPI_MAX, comm), "MPI_Allreduce");
  agree(comm, [&] {
    NC_EXPECTS(requested >= 0 || C > 0, "no rank has any sample");
    check_same(comm, {requested}, "num_classes");
  });
  return requested >= 0 ? requested : Index(C);
}

}  // namespace detail

/// Replaces `stats` on every rank by the statistics of all ranks' samples. Collective.
/// Ranks must agree on num_classes, dim and within_scatter.
inline void allreduce(ClassStats& stats, MPI_Comm comm) {
  const Index C = stats.num_classes(), d = stats.dim();
  detail::agree(comm, [&] {
    detail::check_same(comm, {int64_t(C), int64_t(d), int64_t(stats.has_scatter())},
                       "(num_classes, dim, within_scatter)");
  });
  // Round 1: counts and class sums -> global means.
  VectorI64 counts = stats.counts();
  detail::sum_everywhere(counts.data(), int(C), comm);
  MatrixD sums = stats.means();
  for (Index c = 0; c < C; ++c) sums.row(c) *= double(stats.counts()[c]);
  detail::sum_everywhere_chunked(sums.data(), sums.size(), comm);
  MatrixD means = MatrixD::Zero(C, d);
  for (Index c = 0; c < C; ++c)
    if (counts[c] > 0) means.row(c) = sums.row(c) / double(counts[c]);

  // Round 2: deviations about the global means (exact Chan decomposition), summed.
  Eigen::VectorXd sq = stats.class_sq_deviations();
  std::vector<Index> local;
  for (Index c = 0; c < C; ++c)
    if (stats.counts()[c] > 0) local.push_back(c);
  MatrixD between(local.size(), d);
  for (std::size_t k = 0; k < local.size(); ++k) {
    const Index c = local[k];
    const Eigen::RowVectorXd delta = stats.means().row(c) - means.row(c);
    sq[c] += double(stats.counts()[c]) * delta.squaredNorm();
    between.row(k) = std::sqrt(double(stats.counts()[c])) * delta;
  }
  detail::sum_everywhere(sq.data(), int(C), comm);
  MatrixD scatter;
  if (stats.has_scatter()) {
    scatter = stats.within_scatter();
    if (!local.empty()) ::nc::detail::eigen_serial([&] { scatter.noalias() += between.transpose() * between; });
    detail::sum_everywhere_chunked(scatter.data(), scatter.size(), comm);
  }
  stats = ClassStats::from_parts(counts, means, sq, scatter, stats.options());
}

/// ClassStats of the union of all ranks' (features, labels) shards, on every rank. A rank
/// may hold no rows (pass a 0 x D matrix). num_classes -1: global max(label) + 1.
template <class D, class Labels>
ClassStats class_stats(const Eigen::MatrixBase<D>& local_features, const Labels& local_labels, MPI_Comm comm,
                       Index num_classes = -1, StatsOptions options = {}) {
  using T = typename D::Scalar;
  const ConstRowsRef<T> x(local_features);
  const Index C = detail::global_num_classes(x, local_labels, num_classes, comm);
  ClassStats s(C, x.cols(), options);
  if (x.rows() > 0) s.add(x, local_labels);
  allreduce(s, comm);
  return s;
}

/// NC directions [C, D] of the union of all ranks' shards, on every rank (see
/// nc::nc_directions). pc1 sums each class's uncentred Gram E_c^T E_c over ranks (classes in
/// groups of at most 2^22 Gram entries) and takes its top eigenvector, signed towards the
/// global class mean. Collective.
template <class D, class Labels>
Matrix<typename D::Scalar> nc_directions(const Eigen::MatrixBase<D>& local_features, const Labels& local_labels,
                                         MPI_Comm comm, DirectionOptions options = {}) {
  using T = typename D::Scalar;
  const ConstRowsRef<T> x(local_features);
  const Index C = detail::global_num_classes(x, local_labels, options.num_classes, comm);
  const Index d = x.cols();
  ClassStats s(C, d, {false, options.threads});
  if (x.rows() > 0) s.add(x, local_labels);
  allreduce(s, comm);
  std::vector<Index> empty;
  for (Index c = 0; c < C; ++c)
    if (s.counts()[c] == 0) empty.push_back(c);
  NC_EXPECTS(empty.empty(), "class(es) " << ::nc::detail::join_indices(empty)
                                         << " have no samples on any rank; every class needs one for its direction");
  if (options.method != Direction::pc1) return ::nc::detail::mean_directions(s, options).template cast<T>();

  // Rows of each class on this rank.
  std::vector<std::vector<Index>> rows(C);
  const auto y = label_view(local_labels);
  for (Index i = 0; i < x.rows(); ++i) rows[static_cast<Index>(y[i])].push_back(i);
  const Index group = std::max<Index>(1, (Index(1) << 22) / (d * d));
  MatrixD dirs(C, d);
  for (Index c0 = 0; c0 < C; c0 += group) {
    const Index g = std::min(group, C - c0);
    std::vector<MatrixD> grams(g);
    ::nc::detail::parallel_for(g, options.threads, [&](Index k) {
      const auto& r = rows[c0 + k];
      Matrix<T> e(Index(r.size()), d);
      for (std::size_t i = 0; i < r.size(); ++i) e.row(Index(i)) = x.row(r[i]);
      grams[k] = r.empty() ? MatrixD(MatrixD::Zero(d, d)) : ::nc::detail::gram_of_rows(e);
    });
    MatrixD packed(g * d, d);
    for (Index k = 0; k < g; ++k) packed.middleRows(k * d, d) = grams[k];
    detail::sum_everywhere_chunked(packed.data(), packed.size(), comm);
    ::nc::detail::parallel_for(g, options.threads, [&](Index k) {
      const Eigen::VectorXd mean = s.means().row(c0 + k).transpose();
      const MatrixD a = packed.middleRows(k * d, d);
      dirs.row(c0 + k) = ::nc::detail::signed_unit(::nc::detail::top_eigenvector(a, mean), mean).transpose();
    });
  }
  std::vector<Index> zero;
  for (Index c = 0; c < C; ++c)
    if (!(dirs.row(c).squaredNorm() > 0)) zero.push_back(c);
  if (!zero.empty()) ::nc::detail::throw_zero_directions(zero, "all of the class's rows are zero");
  return dirs.template cast<T>();
}

/// init_head over sharded data: the data-driven methods use the distributed directions;
/// the data-free ones are the same on every rank (seeded). Collective.
template <class D, class Labels>
MatrixF init_head(const Eigen::MatrixBase<D>& local_features, const Labels& local_labels, MPI_Comm comm,
                  HeadOptions options = {}) {
  using T = typename D::Scalar;
  const ConstRowsRef<T> x(local_features);
  detail::agree(comm, [&] { ::nc::detail::check_head_options(options); });
  const Index C = detail::global_num_classes(x, local_labels, options.num_classes, comm);
  if (!head_needs_data(options.method)) {
    HeadOptions o = options;
    o.num_classes = C;
    return init_head(C, x.cols(), o);
  }
  DirectionOptions dopt;
  dopt.num_classes = C;
  dopt.threads = options.threads;
  dopt.method = options.method == HeadInit::class_mean      ? Direction::mean
                : options.method == HeadInit::centered_mean ? Direction::centered_mean
                                                            : Direction::pc1;
  const MatrixD v = nc_directions(x, local_labels, comm, dopt).template cast<double>();
  MatrixD w = v;
  if (options.method == HeadInit::aligned_etf) w = ::nc::detail::align_etf(v, x.cols());
  return (w * options.scale).template cast<float>();
}

}  // namespace nc::mpi
