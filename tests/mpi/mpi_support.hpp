// Helpers shared by the MPI tests: this rank, the communicator size, and uneven row shards.
#pragma once

#include <mpi.h>

#include <utility>

#include "support.hpp"

namespace nct {

inline int rank() { int r; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
inline int size() { int s; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }

// Rows [begin, end) of rank r: uneven shards (rank r gets a share proportional to r + 1), and
// the last rank holds no rows at all when there are 3 or more ranks.
inline std::pair<Index, Index> shard(Index n, int r, int p) {
  const int holders = p >= 3 ? p - 1 : p;
  if (r >= holders) return {n, n};
  Index total = 0;
  for (int k = 0; k < holders; ++k) total += k + 1;
  Index begin = 0;
  for (int k = 0; k < r; ++k) begin += n * (k + 1) / total;
  const Index end = r == holders - 1 ? n : begin + n * (r + 1) / total;
  return {begin, end};
}

}  // namespace nct
