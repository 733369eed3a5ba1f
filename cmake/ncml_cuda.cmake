# ncml: the CUDA path, target ncml::cuda (included by the root CMakeLists.txt when
# NCML_WITH_CUDA is on). ncml::cuda is header-only like ncml::ncml: the public API is in
# include/nc/cuda/*.cuh and the kernel templates in kernels/*.cuh, compiled by the consumer's
# nvcc; it adds the CUDA runtime and cuBLAS.

# Architectures: Ampere and Hopper unless the caller chose (-DCMAKE_CUDA_ARCHITECTURES=...).
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures for ncml's GPU code")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

add_library(ncml_cuda INTERFACE)
add_library(ncml::cuda ALIAS ncml_cuda)
set_target_properties(ncml_cuda PROPERTIES EXPORT_NAME cuda)
target_include_directories(ncml_cuda INTERFACE
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/kernels>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}/ncml/kernels>)
target_compile_features(ncml_cuda INTERFACE cuda_std_17)
# ncml uses Eigen on the host only. Without EIGEN_NO_CUDA, Eigen turns off SIMD in nvcc's
# device pass, which changes its GEBP kernel constants that the CPU kNN headers rely on.
target_compile_definitions(ncml_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:EIGEN_NO_CUDA>)
target_link_libraries(ncml_cuda INTERFACE ncml::ncml CUDA::cudart CUDA::cublas)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/kernels/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/ncml/kernels
        FILES_MATCHING PATTERN "*.cuh")
install(TARGETS ncml_cuda EXPORT ncmlTargets)

# For ncml's own CUDA executables (tests, benchmarks): the host compiler gets the project's
# -march=native and OpenMP (the CPU references in the tests run in parallel); device code is
# built with line info for compute-sanitizer reports.
function(ncml_cuda_executable_defaults target)
  target_link_libraries(${target} PRIVATE ncml::cuda)
  if(NCML_NATIVE AND NCML_HAS_MARCH_NATIVE)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-march=native>)
  endif()
  if(NCML_USES_OPENMP)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-fopenmp>)
  endif()
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo>)
endfunction()

# NCCL (target ncml::nccl, include/nc/distributed/nccl.cuh): the reduction of GPU statistics
# across ranks, when NCCL is found (the CUDA toolkit's copy or a system package).
find_path(NCML_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
find_library(NCML_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
if(NCML_NCCL_INCLUDE_DIR AND NCML_NCCL_LIBRARY)
  add_library(ncml_nccl INTERFACE)
  add_library(ncml::nccl ALIAS ncml_nccl)
  set_target_properties(ncml_nccl PROPERTIES EXPORT_NAME nccl)
  target_include_directories(ncml_nccl INTERFACE ${NCML_NCCL_INCLUDE_DIR})
  target_link_libraries(ncml_nccl INTERFACE ncml_cuda ${NCML_NCCL_LIBRARY})
  install(TARGETS ncml_nccl EXPORT ncmlTargets)
  message(STATUS "ncml: NCCL found (${NCML_NCCL_LIBRARY}): ncml::nccl")
else()
  message(STATUS "ncml: NCCL not found, ncml::nccl is not built")
endif()
