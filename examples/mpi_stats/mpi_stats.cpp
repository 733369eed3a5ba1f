// ncml over MPI: every rank holds a shard of the Omniglot pixels, and all ranks obtain the
// statistics, NC directions and NC-Init head of the whole set.
//
//   mpirun -np 3 ./mpi_stats [data-dir]
#include <mpi.h>

#include <cstdio>
#include <string>
#include <vector>

#include <nc/distributed/mpi.hpp>
#include <nc/io/idx.hpp>
#include <nc/nc.hpp>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::string dir = argc > 1 ? argv[1] : NCML_DATA_DIR;
  int rc = 0;
  try {
    // Every rank reads the file but keeps only its rows: i = rank, rank + size, ...
    const nc::IdxArray img = nc::read_idx(dir + "/omniglot-images28-idx3-ubyte.gz");
    const nc::IdxArray lab = nc::read_idx(dir + "/omniglot-labels-idx1-ubyte.gz");
    const nc::Index n = img.items(), d = img.item_size();
    std::vector<nc::Index> mine;
    for (nc::Index i = rank; i < n; i += size) mine.push_back(i);
    nc::MatrixF x(nc::Index(mine.size()), d);
    std::vector<int> y(mine.size());
    for (std::size_t k = 0; k < mine.size(); ++k) {
      for (nc::Index j = 0; j < d; ++j) x(nc::Index(k), j) = img.data[mine[k] * d + j] / 255.0f;
      y[k] = lab.data[mine[k]];
    }

    const nc::ClassStats stats = nc::mpi::class_stats(x, y, MPI_COMM_WORLD);
    const nc::MatrixF W = nc::mpi::init_head(x, y, MPI_COMM_WORLD);   // NC-Init from all shards
    if (rank == 0) {
      std::printf("%d ranks, %ld samples, %ld classes, %ld dims\n", size, long(stats.total_count()),
                  long(stats.num_classes()), long(stats.dim()));
      std::printf("tr(Sigma_W) = %.6f, tr(Sigma_B) = %.6f\n", stats.within_covariance().trace(),
                  stats.between_covariance().trace());
      std::printf("NC-Init head %ld x %ld, first row norm %.6f\n", long(W.rows()), long(W.cols()), W.row(0).norm());
    }
  } catch (const nc::error& e) {
    if (rank == 0) std::fprintf(stderr, "mpi_stats: %s\n", e.what());
    rc = 2;
  }
  MPI_Finalize();
  return rc;
}
