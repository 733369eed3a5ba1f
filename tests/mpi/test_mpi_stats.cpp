#include <catch2/catch.hpp>
#include <mpi.h>

#include <cmath>
#include <vector>

#include <nc/distributed/mpi.hpp>
#include <nc/nc.hpp>

#include "mpi/mpi_support.hpp"

// Each test file is its own namespace, so the files also build as one program
// (unity build, NCML_UNITY_BUILD).
namespace test_mpi_stats {

using namespace nct;

namespace {
struct Shard {
  MatrixD all;
  std::vector<int> all_labels;
  MatrixD mine;
  std::vector<int> my_labels;
};

// Global data (identical on every rank) with class C-1 present only in the first rank's shard.
Shard make(Index n, Index d, Index C, uint64_t seed) {
  Shard s;
  s.all = mixture(n, d, C - 1, s.all_labels, seed);
  for (Index i = 0; i < 7; ++i) {
    s.all_labels[i] = int(C - 1);
    s.all.row(i).array() += 2.0;
  }
  const auto [b, e] = shard(n, rank(), size());
  s.mine = s.all.middleRows(b, e - b);
  s.my_labels.assign(s.all_labels.begin() + b, s.all_labels.begin() + e);
  return s;
}

// Angle between the lines of a and b, accurate for tiny angles (acos is not: 1.5e-8 resolution).
double angle(const Eigen::RowVectorXd& a, const Eigen::RowVectorXd& b) {
  const Eigen::RowVectorXd u = a.normalized(), v = b.normalized();
  const double s = u.dot(v) < 0 ? -1.0 : 1.0;
  return 2 * std::asin(std::min(1.0, (u - s * v).norm() / 2));
}
}  // namespace

TEST_CASE("allreduce of ClassStats equals the single-process statistics", "[mpi]") {
  const Index C = 6, d = 12;
  const Shard s = make(900, d, C, 31);
  nc::ClassStats local(C, d);
  if (s.mine.rows() > 0) local.add(s.mine, s.my_labels);
  nc::mpi::allreduce(local, MPI_COMM_WORLD);
  const nc::ClassStats one = nc::class_stats(s.all, s.all_labels, C);
  CHECK(local.counts() == one.counts());
  CHECK(rel_err(local.means(), one.means()) < 1e-12);
  CHECK(rel_err(local.class_sq_deviations(), one.class_sq_deviations()) < 1e-12);
  CHECK(rel_err(local.within_scatter(), one.within_scatter()) < 1e-12);
  CHECK(rel_err(local.between_covariance(), one.between_covariance()) < 1e-12);

  // Every rank holds bitwise the same result.
  MatrixD first = local.within_scatter();
  MPI_Bcast(first.data(), int(first.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  CHECK(first == local.within_scatter());

  const nc::ClassStats viahelper = nc::mpi::class_stats(s.mine, s.my_labels, MPI_COMM_WORLD);
  CHECK(viahelper.num_classes() == C);
  CHECK(viahelper.counts() == one.counts());
}

TEST_CASE("distributed NC directions and heads equal the single-process ones", "[mpi]") {
  const Index C = 5, d = 10;
  const Shard s = make(600, d, C, 32);
  for (nc::Direction m : {nc::Direction::pc1, nc::Direction::mean, nc::Direction::centered_mean}) {
    nc::DirectionOptions o;
    o.method = m;
    const MatrixD dist = nc::mpi::nc_directions(s.mine, s.my_labels, MPI_COMM_WORLD, o);
    const MatrixD one = nc::nc_directions(s.all, s.all_labels, o);
    for (Index c = 0; c < C; ++c) {
      CHECK(angle(dist.row(c), one.row(c)) < 1e-9);
      CHECK(dist.row(c).dot(one.row(c)) > 0);  // same sign
    }
  }
  nc::HeadOptions h;
  h.method = nc::HeadInit::aligned_etf;
  const MatrixF wd = nc::mpi::init_head(s.mine, s.my_labels, MPI_COMM_WORLD, h);
  const MatrixF w1 = nc::init_head(s.all, s.all_labels, h);
  CHECK((wd - w1).norm() < 1e-5);
  h.method = nc::HeadInit::kaiming_normal;
  CHECK(nc::mpi::init_head(s.mine, s.my_labels, MPI_COMM_WORLD, h) == nc::init_head(s.all, s.all_labels, h));
}

TEST_CASE("MPI calls: bad input on one rank is an error on every rank, no hang", "[mpi][errors]") {
  // Ranks disagreeing on the number of classes.
  nc::ClassStats st(rank() == size() - 1 ? 4 : 3, 2);
  CHECK_THROWS_WITH(nc::mpi::allreduce(st, MPI_COMM_WORLD), Catch::Contains("ranks disagree"));
  // NaN on the last rank only.
  MatrixD x = MatrixD::Ones(4, 3);
  std::vector<int> y = {0, 1, 0, 1};
  if (rank() == size() - 1) x(2, 1) = NAN;
  CHECK_THROWS_WITH(nc::mpi::nc_directions(x, y, MPI_COMM_WORLD),
                    Catch::Contains("rank " + std::to_string(size() - 1)) && Catch::Contains("row 2"));
  // Different dimensions.
  MatrixD z = MatrixD::Ones(3, rank() == 0 ? 2 : 3);
  CHECK_THROWS_WITH(nc::mpi::class_stats(z, std::vector<int>{0, 1, 1}, MPI_COMM_WORLD),
                    Catch::Contains("dimension"));
  // A class with no samples anywhere.
  nc::DirectionOptions o;
  o.num_classes = 3;
  MatrixD ok = MatrixD::Random(4, 3);
  CHECK_THROWS_WITH(nc::mpi::nc_directions(ok, y, MPI_COMM_WORLD, o), Catch::Contains("class(es) 2"));
}

}  // namespace test_mpi_stats
