#!/usr/bin/env bash
# The main-job demo (docs/demo.md): builds the LibTorch finetuning example in build/ (Release),
# runs it and, for the full run, regenerates docs/demo.md's results table, the plots in
# docs/demo/*.png and the logs in docs/demo/*.csv.
#
#   scripts/demo.sh            full run: 3 seeds, sigma sweep, balanced and long-tailed (~435 CPU-seconds)
#   scripts/demo.sh --quick    CI-sized run (one seed, 3 epochs); writes build/demo-quick/ only
#
# Further arguments go to finetune_omniglot (see `finetune_omniglot --help`); a full run with
# extra arguments writes build/demo/ but leaves docs/ alone unless NCML_DEMO_DOCS=1.
# Environment: NCML_BUILD_DIR (default build), NCML_JOBS (build jobs, default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

build=${NCML_BUILD_DIR:-build}
jobs=${NCML_JOBS:-$(nproc)}
# OpenMP threads that spin while waiting (libgomp's default) slow LibTorch down several times on
# a machine whose cores are shared; waiting threads sleep instead unless the caller says otherwise.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DNCML_BUILD_EXAMPLES=ON ${NCML_CMAKE_ARGS:-}
exe="$build/examples/finetune_omniglot/finetune_omniglot"
if ! cmake --build "$build" -j "$jobs" --target finetune_omniglot; then
  echo "demo.sh: could not build finetune_omniglot; it needs LibTorch (Debian: libtorch-dev, scripts/setup.sh)" >&2
  exit 1
fi

quick=0
for a in "$@"; do [ "$a" = "--quick" ] && quick=1; done
if [ "$quick" = 1 ]; then
  out="$build/demo-quick"
else
  out="$build/demo"
fi

start=$(date +%s)
"$exe" --out "$out" "$@"
echo "demo.sh: finetune_omniglot took $(( $(date +%s) - start )) s"

if [ "$quick" = 1 ] || { [ $# -gt 0 ] && [ "${NCML_DEMO_DOCS:-0}" != 1 ]; }; then
  echo "demo.sh: results in $out (docs/ unchanged)"
  exit 0
fi

mkdir -p docs/demo
cp "$out"/epochs.csv "$out"/summary.csv "$out"/curves.csv "$out"/timing.csv docs/demo/
if command -v gnuplot > /dev/null; then
  gnuplot -e "curves='$out/curves.csv'; outdir='docs/demo'" scripts/plot_demo.gp
else
  echo "demo.sh: gnuplot not found (Debian: gnuplot-nox); plots not regenerated" >&2
fi
# The table between the markers in docs/demo.md is replaced by the run's table.md.
awk -v table="$out/table.md" '
  /<!-- demo-table:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
  /<!-- demo-table:end -->/ { skip = 0 }
  !skip { print }
' docs/demo.md > docs/demo.md.tmp && mv docs/demo.md.tmp docs/demo.md
echo "demo.sh: updated docs/demo.md (table), docs/demo/*.png and docs/demo/*.csv"
