// ncml GPU path: CUDA and cuBLAS error handling.
//
//   NC_CUDA_TRY(cudaMemcpyAsync(...));         // throws nc::cuda_error naming the call on failure
//   kernel<<<grid, block, 0, stream>>>(...);
//   NC_CUDA_CHECK_LAUNCH();                    // after every launch: configuration errors and
//                                              // asynchronous faults reported so far
//   NC_CUDA_TRY_NO_THROW(cudaFree(p));         // destructors: reports to stderr, never throws
//
// nc::cuda_error derives from std::runtime_error (include/nc/core/error.hpp); its message holds
// the failing call as written, the CUDA error name and string, and the file and line.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

#include "../core/error.hpp"

namespace nc::cuda::detail {

inline std::string base_name(const char* file) {
  std::string f(file);
  const auto slash = f.find_last_of("/\\");
  return slash == std::string::npos ? f : f.substr(slash + 1);
}

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* call, const char* file, int line) {
  throw ::nc::cuda_error("ncml: CUDA call " + std::string(call) + " failed: " +
                         cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") (" +
                         base_name(file) + ":" + std::to_string(line) + ")");
}

inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

[[noreturn]] inline void throw_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  throw ::nc::cuda_error("ncml: cuBLAS call " + std::string(call) + " failed: " +
                         cublas_status_name(s) + " (" + base_name(file) + ":" +
                         std::to_string(line) + ")");
}

}  // namespace nc::cuda::detail

/// Throws nc::cuda_error when the CUDA runtime call does not return cudaSuccess.
#define NC_CUDA_TRY(call)                                                       \
  do {                                                                          \
    const cudaError_t nc_cuda_try_e_ = (call);                                  \
    if (nc_cuda_try_e_ != cudaSuccess)                                          \
      ::nc::cuda::detail::throw_cuda(nc_cuda_try_e_, #call, __FILE__, __LINE__); \
  } while (0)

/// Throws nc::cuda_error when the cuBLAS call does not return CUBLAS_STATUS_SUCCESS.
#define NC_CUBLAS_TRY(call)                                                       \
  do {                                                                            \
    const cublasStatus_t nc_cublas_try_s_ = (call);                               \
    if (nc_cublas_try_s_ != CUBLAS_STATUS_SUCCESS)                                \
      ::nc::cuda::detail::throw_cublas(nc_cublas_try_s_, #call, __FILE__, __LINE__); \
  } while (0)

/// After a kernel launch: throws for a launch that failed (bad configuration, too much
/// shared memory) and for an asynchronous fault already reported by the device.
#define NC_CUDA_CHECK_LAUNCH() NC_CUDA_TRY(cudaPeekAtLastError())

/// For destructors and cleanup paths: reports a failing call to stderr and continues.
#define NC_CUDA_TRY_NO_THROW(call)                                                  \
  do {                                                                              \
    const cudaError_t nc_cuda_nt_e_ = (call);                                       \
    if (nc_cuda_nt_e_ != cudaSuccess)                                               \
      std::fprintf(stderr, "ncml: CUDA call %s failed: %s (%s:%d)\n", #call,        \
                   cudaGetErrorName(nc_cuda_nt_e_), __FILE__, __LINE__);            \
  } while (0)
