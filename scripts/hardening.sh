#!/usr/bin/env bash
# The hardening build (docs/errors.md): Clang with AddressSanitizer + UndefinedBehaviorSanitizer
# and -Wall -Wextra -Werror; the sanitized tests; a fixed-time run of each libFuzzer target
# on its committed corpus (tests/fuzz).
#
#   scripts/hardening.sh [build-dir]        (default build-hardening)
#
# Which tests: a sanitized build of one of ncml's Eigen-heavy test programs takes Clang 2 to
# 4 CPU-minutes, so the CI step (two cores, with the whole Release suite before it) builds the
# programs that reach every public entry point and every parser: the bad-input matrix
# (cpu.bad_inputs: each entry point on empty, non-finite, out-of-range and extreme inputs),
# the .npy tests (cpu.npy) and the three fuzz targets, which drive every entry point with
# random shapes, labels, values and options for NCML_FUZZ_SECONDS each. NCML_SANITIZE_ALL=1
# builds and runs every CPU and CLI test under the sanitizers instead (about 40 CPU-minutes).
#
# Environment: NCML_JOBS (parallel jobs, default nproc), NCML_FUZZ_SECONDS (default 15),
# NCML_SANITIZE_ALL. Needs clang and libclang-rt-14-dev (scripts/setup.sh installs them).
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
all=${NCML_SANITIZE_ALL:-0}
tools=OFF
[ "$all" = 1 ] && tools=ON
cmake -S . -B "$build" \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DCMAKE_CXX_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" \
  -DNCML_WARNINGS_AS_ERRORS=ON -DNCML_BUILD_FUZZERS=ON -DNCML_FUZZ_SECONDS="$fuzz_seconds" \
  -DNCML_BUILD_TESTS=ON -DNCML_BUILD_TOOLS=$tools -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON \
  -DNCML_BUILD_EXAMPLES=OFF -DNCML_BUILD_BENCHMARKS=OFF -DNCML_BUILD_PYTHON=OFF -DNCML_WITH_CUDA=OFF

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if [ "$all" = 1 ]; then
  cmake --build "$build" -j "$jobs"
  ctest --test-dir "$build" --output-on-failure -j "$jobs" -E '^install\.'
else
  cmake --build "$build" -j "$jobs" --target ncml_hardening  # test_bad_inputs test_npy fuzz_*
  ctest --test-dir "$build" --output-on-failure -j "$jobs" -R '^(cpu\.(bad_inputs|npy)|fuzz\.)'
fi
