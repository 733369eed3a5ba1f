// ncml: thread-count handling. ncml parallelizes with OpenMP when the including program is
// compiled with it (the ncml::ncml target adds it when found) and runs serially otherwise.
// Results never depend on the thread count: parallel work writes disjoint outputs and every
// reduction combines partial results in a fixed order.
#pragma once

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace nc::detail {

/// Threads to use for a `threads` option: 0 means all available, n > 0 means n.
inline int resolve_threads(int threads) {
#if defined(_OPENMP)
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

}  // namespace nc::detail
