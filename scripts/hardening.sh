#!/usr/bin/env bash
# The hardening build (docs/errors.md): Clang with AddressSanitizer + UndefinedBehaviorSanitizer
# and -Wall -Wextra -Werror; the sanitized tests; a fixed-time run of each libFuzzer target
# on its committed corpus (tests/fuzz).
#
#   scripts/hardening.sh [build-dir]        (default build-hardening)
#
# It builds and runs the whole CPU, command-line and MPI test suite (ctest, all but the
# install test) under the sanitizers, each test program compiled as one translation unit
# (NCML_UNITY_BUILD), which keeps a sanitized build of the suite to a few CPU-minutes. The
# examples, benchmarks, Python module and CUDA code are not part of this build.
#
# Environment: NCML_JOBS (parallel jobs, default nproc), NCML_FUZZ_SECONDS (default 15).
# Needs clang and libclang-rt-14-dev (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-hardening}
jobs=${NCML_JOBS:-$(nproc)}
fuzz_seconds=${NCML_FUZZ_SECONDS:-15}

if ! command -v clang++ >/dev/null; then
  echo "hardening: clang++ not found (Debian: clang libclang-rt-14-dev; scripts/setup.sh)" >&2
  exit 1
fi

san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B "$build" \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DCMAKE_CXX_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" \
  -DNCML_WARNINGS_AS_ERRORS=ON -DNCML_UNITY_BUILD=ON \
  -DNCML_BUILD_FUZZERS=ON -DNCML_FUZZ_SECONDS="$fuzz_seconds" \
  -DNCML_BUILD_TESTS=ON -DNCML_BUILD_TOOLS=ON \
  -DNCML_BUILD_EXAMPLES=OFF -DNCML_BUILD_BENCHMARKS=OFF -DNCML_BUILD_PYTHON=OFF -DNCML_WITH_CUDA=OFF

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs" -E '^install\.'
