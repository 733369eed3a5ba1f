#!/usr/bin/env bash
# Installs the Debian packages ncml needs to build, test, benchmark and run its demo.
# Idempotent: packages already present are skipped; apt runs only when something is missing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libeigen3-dev catch2 libbenchmark-dev zlib1g-dev
  libopenmpi-dev openmpi-bin
  libtorch-dev
  libfaiss-dev python3-faiss libopenblas0-pthread
  libcli11-dev nlohmann-json3-dev
  python3 python3-numpy python3-dev pybind11-dev python3-pytest python3-torch
  clang libclang-rt-14-dev
  gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
