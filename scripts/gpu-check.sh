#!/usr/bin/env bash
# The one GPU check of ncml (../shared/design/PERFORMANCE.md, "Working on a GPU").
#
#   scripts/gpu-check.sh OUT_DIR    on a GPU machine, in one call of about 8 minutes:
#                                   1. builds the GPU tests and bench_gpu (Release, sm_90 unless
#                                      NCML_CUDA_ARCH says otherwise) in $NCML_GPU_BUILD
#                                      (default /tmp/ncml-gpu-build);
#                                   2. runs the GPU tests (CPU reference comparisons);
#                                   3. times every kernel (bench_gpu) and the torch baselines
#                                      (scripts/gpu_torch_baselines.py) in the same run;
#                                   4. runs compute-sanitizer memcheck and racecheck on the
#                                      tests tagged [race] (small sizes, every kernel);
#                                   5. writes OUT_DIR/results.json (environment, steps, raw
#                                      timings, ratios against the targets) and OUT_DIR/gpu-check.log
#                                      (every step's output), and prints a short table last.
#   scripts/gpu-check.sh --bundle   on a machine with the Debian packages (scripts/setup.sh):
#                                   copies the Eigen, Catch2 and zlib headers into .gpu-deps/
#                                   (git-ignored through .git/info/exclude) for GPU machines
#                                   that lack them; carry .gpu-deps with the working tree.
#
# Environment: NCML_GPU_BUILD, NCML_CUDA_ARCH (90), NCML_GPU_TESTS (a Catch test spec, e.g.
# "~[large]"; default all), NCML_GPU_QUICK (1: short benchmark repetitions, the default),
# NCML_GPU_DEADLINE (seconds for the whole check, 480: each step's
# time limit is cut to what is left, the sanitizers run last and only in the time left).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

if [ "${1:-}" = "--bundle" ]; then
  deps=$repo/.gpu-deps
  rm -rf "$deps"
  mkdir -p "$deps/include/catch2" "$deps/lib/cmake/Eigen3" "$deps/lib/cmake/Catch2"
  cp -r /usr/include/eigen3 "$deps/include/" || exit 1
  cp /usr/include/catch2/catch.hpp "$deps/include/catch2/" || exit 1
  cp /usr/include/zlib.h /usr/include/zconf.h "$deps/include/" || exit 1
  cat >"$deps/lib/cmake/Eigen3/Eigen3Config.cmake" <<'EOF'
if(NOT TARGET Eigen3::Eigen)
  add_library(Eigen3::Eigen INTERFACE IMPORTED)
  set_target_properties(Eigen3::Eigen PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/../../../include/eigen3")
endif()
set(EIGEN3_FOUND TRUE)
EOF
  cat >"$deps/lib/cmake/Catch2/Catch2Config.cmake" <<'EOF'
if(NOT TARGET Catch2::Catch2)
  add_library(Catch2::Catch2 INTERFACE IMPORTED)
  set_target_properties(Catch2::Catch2 PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${CMAKE_CURRENT_LIST_DIR}/../../../include")
endif()
EOF
  for pkg in Eigen3:3.4.0 Catch2:2.13.10; do
    name=${pkg%%:*} version=${pkg#*:}
    cat >"$deps/lib/cmake/$name/${name}ConfigVersion.cmake" <<EOF
set(PACKAGE_VERSION "$version")
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION OR NOT PACKAGE_FIND_VERSION_MAJOR EQUAL ${version%%.*})
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
endif()
EOF
  done
  if [ -d "$repo/.git" ] && ! grep -qx '/.gpu-deps/' "$repo/.git/info/exclude" 2>/dev/null; then
    echo '/.gpu-deps/' >>"$repo/.git/info/exclude"
  fi
  echo "gpu-check: bundled $(du -sh "$deps" | cut -f1) into .gpu-deps (carry it to the GPU machine)"
  exit 0
fi

out=${1:?usage: scripts/gpu-check.sh OUT_DIR | --bundle}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${NCML_GPU_BUILD:-/tmp/ncml-gpu-build}
arch=${NCML_CUDA_ARCH:-90}
quick=${NCML_GPU_QUICK:-1}
deadline=${NCML_GPU_DEADLINE:-480}
jobs=$(nproc 2>/dev/null || echo 4)
log=$out/gpu-check.log
work=$build/logs  # per-step files stay here; OUT_DIR gets two files
mkdir -p "$work"
: >"$log"
: >"$work/steps.jsonl"
t_start=$(date +%s)

# step NAME LOGFILE TIMEOUT COMMAND...: runs the command with its output in LOGFILE (and the
# last lines on stdout), records {step, rc, seconds} in steps.jsonl (rc 124: out of time).
# The time limit is cut to what is left before the deadline, less 20 s for the summary.
step() {
  local name=$1 file=$2 limit=$3
  shift 3
  local t0 rc left
  t0=$(date +%s)
  left=$((deadline - (t0 - t_start) - 20))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then
    echo "{\"step\": \"$name\", \"rc\": 124, \"seconds\": 0, \"note\": \"no time left\"}" >>"$work/steps.jsonl"
    return 124
  fi
  echo "== $name ($(date +%T))" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >"$file" 2>&1
  rc=$?
  tail -n 4 "$file" | sed 's/^/   /'
  cat "$file" >>"$log"
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(($(date +%s) - t0))}" >>"$work/steps.jsonl"
  return $rc
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
  nvcc --version | tail -n 2
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
  nproc
} >"$work/env.txt" 2>&1
cat "$work/env.txt"

# Dependencies: the system's, or the bundle (scripts/gpu-check.sh --bundle) when absent.
cmake_args=(-DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=$arch")
command -v ninja >/dev/null && cmake_args+=(-G Ninja)
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
if [ -d "$repo/.gpu-deps" ]; then
  cmake_args+=("-DCMAKE_PREFIX_PATH=$repo/.gpu-deps")
  if [ ! -f /usr/include/zlib.h ]; then
    libz=$(ldconfig -p 2>/dev/null | awk '/libz\.so\.1 .*x86-64/ {print $NF; exit}')
    cmake_args+=("-DZLIB_INCLUDE_DIR=$repo/.gpu-deps/include" "-DZLIB_LIBRARY=${libz:-/lib/x86_64-linux-gnu/libz.so.1}")
  fi
fi

mkdir -p "$build/src"
cat >"$build/src/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.18)
project(ncml_gpu_check LANGUAGES CXX CUDA)
set(NCML_WITH_CUDA ON CACHE BOOL "" FORCE)
add_subdirectory("$repo" ncml)
set(NCML_NATIVE ON)
include(CheckCXXCompilerFlag)
check_cxx_compiler_flag(-march=native NCML_HAS_MARCH_NATIVE)
find_package(OpenMP COMPONENTS CXX)
set(NCML_USES_OPENMP \${OpenMP_CXX_FOUND})
enable_testing()
add_subdirectory("$repo/tests/cuda" tests)
add_subdirectory("$repo/benchmarks/cuda" benchmarks)
EOF

built=0
if step configure "$work/configure.log" 300 cmake -S "$build/src" -B "$build/b" "${cmake_args[@]}" &&
  step build "$work/build.log" 600 cmake --build "$build/b" -j "$jobs"; then
  built=1
fi

tests=(cuda_test_stats cuda_test_knn)
[ -x "$build/b/tests/cuda_test_nccl" ] && tests+=(cuda_test_nccl)  # when NCCL is found
if [ $built = 1 ]; then
  # The test programs run side by side (their CPU references keep the host's cores busy).
  for t in "${tests[@]}"; do
    step "test:$t" "$work/$t.log" 420 "$build/b/tests/$t" --durations yes ${NCML_GPU_TESTS:+"$NCML_GPU_TESTS"} &
  done
  wait
  qflag=()
  [ "$quick" = 1 ] && qflag=(--quick)
  step torch "$work/torch.log" 240 python3 "$repo/scripts/gpu_torch_baselines.py" --out "$work/torch.jsonl" "${qflag[@]}"
  step bench "$work/bench.log" 240 "$build/b/benchmarks/bench_gpu" --json "$work/ncml.jsonl" "${qflag[@]}"
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      for t in "${tests[@]}"; do
        step "$tool:$t:[race]" "$work/$tool-$t.log" 180 \
          compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 30 "$build/b/tests/$t" "[race]" &
      done
    done
    wait
  else
    echo '{"step": "compute-sanitizer", "rc": -1, "seconds": 0, "note": "not installed"}' >>"$work/steps.jsonl"
  fi
fi

python3 - "$work" "$out" <<'EOF'
import json, os, sys

work, out = sys.argv[1], sys.argv[2]

def load(name):
    path = os.path.join(work, name)
    rows = {}
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if line:
                r = json.loads(line)
                rows[r["name"]] = r
    return rows

steps = [json.loads(l) for l in open(os.path.join(work, "steps.jsonl")) if l.strip()]
nc = load("ncml.jsonl")
th = load("torch.jsonl")
env = open(os.path.join(work, "env.txt")).read() if os.path.exists(os.path.join(work, "env.txt")) else ""

def ms(table, name):
    r = table.get(name)
    return r["ms"] if r else None

copy_gbps = nc.get("copy_1GiB", {}).get("gbps")
rows = []

def row(kernel, ours, ref_name, ref, kind, target):
    """kind 'speedup': ref/ours >= target; 'ratio': ours/ref <= target; 'fraction': value >= target."""
    if ours is None or ref is None:
        rows.append({"kernel": kernel, "ncml_ms": ours, "vs": ref_name, "ref_ms": ref, "value": None,
                     "target": target, "kind": kind, "pass": None})
        return
    value = ref / ours if kind == "speedup" else ours / ref
    ok = value >= target if kind == "speedup" else value <= target
    rows.append({"kernel": kernel, "ncml_ms": ours, "vs": ref_name, "ref_ms": ref, "value": value,
                 "target": target, "kind": kind, "pass": ok})

for c in (10, 1000, 100000):
    k = f"class_stats_C{c}"
    row(k, ms(nc, k), "torch index_add_", ms(th, f"torch_class_means_C{c}"), "speedup", 5.0)
    if copy_gbps and k in nc:
        frac = nc[k]["gbps"] / copy_gbps
        rows.append({"kernel": k, "ncml_ms": nc[k]["ms"], "vs": "copy bandwidth", "ref_ms": None,
                     "value": frac, "target": 0.7, "kind": "fraction", "pass": frac >= 0.7})
row("within_scatter", ms(nc, "within_scatter"), "cuBLAS X^T X", ms(nc, "within_scatter_ref_cublas_xtx"), "ratio", 1.3)
row("within_scatter", ms(nc, "within_scatter"), "torch sigma_w", ms(th, "torch_sigma_w"), "speedup", 1.0)
for p in ("fp32", "tf32"):
    row(f"nc1_d512_{p}", ms(nc, f"nc1_d512_C100_{p}"), "torch pinv", ms(th, "torch_nc1_pinv_d512_C100"), "speedup", 20.0)
    row(f"nc1_d2048_{p}", ms(nc, f"nc1_d2048_C100_{p}"), "torch pinv", ms(th, "torch_nc1_pinv_d2048_C100"), "speedup", 100.0)
for tag in ("n60000_d512_k8", "n60000_d512_k1000", "n200000_d512_k32", "n400000_d128_k16"):
    gemm = ms(nc, f"gemm_pairs_{tag}_fp32")
    row(f"knn_{tag}_fp32", ms(nc, f"knn_{tag}_fp32"), "cuBLAS SGEMM pairs", gemm, "ratio", 1.2)
    row(f"knn_{tag}_fp32", ms(nc, f"knn_{tag}_fp32"), "torch mm+topk fp32", ms(th, f"torch_topk_{tag}_fp32"), "speedup", 1.5)
    for p in ("tf32", "bf16", "bf16_rerank"):
        row(f"knn_{tag}_{p}", ms(nc, f"knn_{tag}_{p}"), "torch mm+topk tf32", ms(th, f"torch_topk_{tag}_tf32"), "speedup", 2.0)
    row(f"retrieval_{tag}_fp32", ms(nc, f"retrieval_{tag}_fp32"), "cuBLAS SGEMM pairs", gemm, "ratio", 1.2)
    row(f"retrieval_{tag}_fp32", ms(nc, f"retrieval_{tag}_fp32"), "torch mm+topk fp32", ms(th, f"torch_topk_{tag}_fp32"), "speedup", 1.5)
    row(f"retrieval_{tag}_tf32", ms(nc, f"retrieval_{tag}_tf32"), "torch mm+topk tf32", ms(th, f"torch_topk_{tag}_tf32"), "speedup", 2.0)

rows = [r for r in rows if r["ncml_ms"] is not None or r["ref_ms"] is not None]
json.dump({"env": env, "steps": steps, "ncml": nc, "torch": th, "comparisons": rows},
          open(os.path.join(out, "results.json"), "w"), indent=1)

print()
print("steps: " + ", ".join(f"{s['step']}={'ok' if s['rc'] == 0 else s['rc']}" for s in steps))
print(f"copy {copy_gbps or 0:.0f} GB/s; fp32 GEMM {nc.get('gemm_8192_fp32', {}).get('tflops', 0):.1f}, "
      f"tf32 {nc.get('gemm_8192_tf32', {}).get('tflops', 0):.1f} TFLOP/s")
print(f"{'kernel':<30} {'ncml ms':>9}  {'vs':<19} {'ref ms':>9} {'value':>7} {'target':>8}  ok")
for r in rows:
    v = "-" if r["value"] is None else f"{r['value']:.2f}"
    t = {"speedup": f">={r['target']:g}x", "ratio": f"<={r['target']:g}", "fraction": f">={r['target']:g}"}[r["kind"]]
    ours = "-" if r["ncml_ms"] is None else f"{r['ncml_ms']:.3f}"
    ref = "-" if r["ref_ms"] is None else f"{r['ref_ms']:.3f}"
    ok = "-" if r["pass"] is None else ("yes" if r["pass"] else "NO")
    print(f"{r['kernel']:<30} {ours:>9}  {r['vs']:<19} {ref:>9} {v:>7} {t:>8}  {ok}")
EOF
echo "gpu-check: $(($(date +%s) - t_start)) s; results in $out/results.json"
