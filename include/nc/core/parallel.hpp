// ncml: thread-count handling. ncml parallelizes with OpenMP when the including program is
// compiled with it (the ncml::ncml target adds it when found) and runs serially otherwise.
// Results never depend on the thread count: parallel work writes disjoint outputs, every
// reduction combines partial results in a fixed order, and Eigen products inside ncml's
// parallel loops always run single-threaded, with the same blocking (hence the same rounding)
// whatever the number of threads.
#pragma once

#include <algorithm>
#include <exception>
#include <mutex>

#include <Eigen/Core>

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

/// Runs f(i) for i in [0, n) on `threads` workers (i = worker, worker + threads, ...).
/// The team always has at least two members, so Eigen (which parallelizes a product only
/// outside a multi-thread team) computes every product inside f serially; a surplus member
/// does no work. The first exception thrown by f is rethrown after the loop.
template <class F>
void parallel_for(Eigen::Index n, int threads, F&& f) {
  const int workers = static_cast<int>(std::max<Eigen::Index>(1, std::min<Eigen::Index>(resolve_threads(threads), n)));
  std::exception_ptr failure;
#if defined(_OPENMP)
  std::mutex m;
#pragma omp parallel num_threads(std::max(2, workers))
  {
    const int w = omp_get_thread_num();
    if (w < workers) {
      try {
        for (Eigen::Index i = w; i < n; i += workers) f(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(m);
        if (!failure) failure = std::current_exception();
      }
    }
  }
#else
  (void)workers;
  try {
    for (Eigen::Index i = 0; i < n; ++i) f(i);
  } catch (...) {
    failure = std::current_exception();
  }
#endif
  if (failure) std::rethrow_exception(failure);
}

/// Runs f() with the Eigen products inside it computed serially (see parallel_for).
template <class F>
void eigen_serial(F&& f) {
  parallel_for(1, 1, [&](Eigen::Index) { f(); });
}

}  // namespace nc::detail
