#!/usr/bin/env bash
# Configures, builds and runs the ncml test suite (ctest). Usage: scripts/test.sh [build-dir]
# Release, -Wall -Wextra -Werror, each test program compiled as one translation unit.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
jobs=${NCML_JOBS:-$(nproc)}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DNCML_WARNINGS_AS_ERRORS=ON -DNCML_UNITY_BUILD=ON ${NCML_CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
