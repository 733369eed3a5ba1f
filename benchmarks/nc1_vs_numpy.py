#!/usr/bin/env python3
"""NC1 side by side: numpy against ncml, same data, same run, same thread count.

Part 1, N=100000, D=512, C=100 float32 features (a seeded Gaussian mixture with an offset):
  numpy    np.trace(Sw @ np.linalg.pinv(Sb)) / C in float64, including its own class means and
           covariances (tests/numpy_nc1.py, the reference of the cross-check test)
  ncml     bench_nc1's nc1_e2e benchmarks on the same bytes: statistics + projected NC1 (one
           pass after the means, or from the stored scatter), the exact path, and the same
           from float64 features
Part 2, D=2048, C=100: ncml's projected path against its own exact path (statistics + NC1,
  and NC1 alone from the same statistics).

Prints medians, the ratios and the agreement of the NC1 values. Usage:
  /usr/bin/python3 benchmarks/nc1_vs_numpy.py [--build build-bench] [--threads 2] [--reps 3]
Builds bench_nc1 (Release, -march=native via the project's NCML_NATIVE) when it is missing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from numpy_nc1 import nc1_numpy  # noqa: E402


def make_data(n, d, c, seed=7):
    rng = np.random.default_rng(seed)
    centres = 0.3 * rng.standard_normal((c, d))
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)]).astype(np.int64)
    x = (centres[y] + rng.standard_normal((n, d)) + 1.0).astype(np.float32)
    return x, y


def numpy_path(x, y, c):
    # Everything numpy does, from the float32 features: float64 copy, means, covariances, pinv.
    return nc1_numpy(x.astype(np.float64), y, c)


def build(build_dir):
    exe = os.path.join(build_dir, "benchmarks", "bench_nc1")
    if not os.path.exists(exe):
        subprocess.run(["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                        "-DNCML_BUILD_TESTS=OFF", "-DNCML_BUILD_EXAMPLES=OFF"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", build_dir, "--target", "bench_nc1", "-j",
                        os.environ.get("NCML_JOBS", "1")], check=True)
    return exe


def run_bench(exe, flt, reps, env):
    out = subprocess.run([exe, f"--benchmark_filter={flt}", f"--benchmark_repetitions={reps}",
                          "--benchmark_report_aggregates_only=true", "--benchmark_format=json"],
                         check=True, capture_output=True, text=True, env=env).stdout
    res = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("aggregate_name") == "median":
            name = b["run_name"].split("/")[1]
            unit = {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0}[b["time_unit"]]
            res[name] = (b["real_time"] * unit, b["nc1"], int(b["rank"]))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-n", type=int, default=100000)
    ap.add_argument("-d", type=int, default=512)
    ap.add_argument("-c", type=int, default=100)
    a = ap.parse_args()
    t = str(a.threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = t
    exe = build(a.build)

    x, y = make_data(a.n, a.d, a.c)
    with tempfile.TemporaryDirectory() as tmp:
        xs, ys = os.path.join(tmp, "x.f32"), os.path.join(tmp, "y.i64")
        x.tofile(xs)
        y.tofile(ys)
        env = dict(os.environ, NCML_BENCH_X=xs, NCML_BENCH_Y=ys, NCML_BENCH_DIM=str(a.d))
        numpy_path(x[:2000], y[:2000], a.c)  # warm up BLAS threads
        times, ref = [], None
        for _ in range(a.reps):
            t0 = time.perf_counter()
            ref = numpy_path(x, y, a.c)
            times.append(time.perf_counter() - t0)
        t_np = statistics.median(times)
        cpp = run_bench(exe, f"nc1_e2e/.*/{a.n}/{a.d}/{a.c}/", a.reps, env)

    blas = "unknown"
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "blas" in line or "lapack" in line}
        blas = ", ".join(sorted(os.path.basename(p) for p in libs)) or blas
    except OSError:
        pass
    print(f"N={a.n} D={a.d} C={a.c} float32 features, {a.threads} threads, median of {a.reps}")
    print(f"numpy {np.__version__} ({blas})")
    print(f"{'path':<44}{'seconds':>10}{'numpy/this':>12}{'NC1':>22}{'rel. diff':>11}")
    print(f"{'numpy trace(Sw pinv(Sb))/C, float64':<44}{t_np:>10.4f}{1.0:>12.2f}{ref:>22.15g}{0.0:>11.1e}")
    labels = {
        "projected_pass": "ncml stats (no scatter) + projected pass",
        "projected_stats": "ncml stats (scatter) + projected",
        "exact_stats": "ncml stats (scatter) + exact",
        "projected_pass_f64": "  the same from float64 features",
        "projected_stats_f64": "  stats (scatter) + projected, float64",
    }
    for key, label in labels.items():
        if key in cpp:
            sec, v, _ = cpp[key]
            print(f"{label:<44}{sec:>10.4f}{t_np / sec:>12.2f}{v:>22.15g}{abs(v - ref) / abs(ref):>11.1e}")

    print(f"\nD=2048, C=100: projected vs exact (ncml only, synthetic mixture)")
    env = dict(os.environ)
    e2e = run_bench(exe, "nc1_e2e/(projected_pass|projected_stats|exact_stats)/32768/2048/100/", a.reps, env)
    only = run_bench(exe, "nc1_only/.*/20000/2048/100/", a.reps, env)
    ex = e2e["exact_stats"][0]
    for key in ("projected_pass", "projected_stats", "exact_stats"):
        sec, v, r = e2e[key]
        print(f"  N=32768 stats + NC1, {key:<18}{sec:>9.3f} s  exact/this {ex / sec:>7.2f}  NC1 {v:.12g} (rank {r})")
    ex = only["exact"][0]
    for key in ("projected", "exact"):
        sec, v, r = only[key]
        print(f"  NC1 alone from stored stats, {key:<11}{sec:>9.4f} s  exact/this {ex / sec:>7.1f}  NC1 {v:.12g} (rank {r})")


if __name__ == "__main__":
    main()
