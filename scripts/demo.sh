#!/usr/bin/env bash
# The main job: builds ncml's examples and runs them on the bundled data.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target quickstart
./build/examples/quickstart/quickstart
