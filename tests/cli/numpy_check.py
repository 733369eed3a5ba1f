#!/usr/bin/env python3
"""The ncml tool on files written by numpy, checked against numpy references.

Usage: numpy_check.py <path to ncml> <scratch directory>

Writes a Gaussian mixture with np.save (float32 features, int32 / int64 / uint8 labels,
a float64 copy in .npy format 2.0), runs `ncml metrics --json`, `ncml init-head` and
`ncml knn`, and compares with float64 numpy computations of the same definitions
(docs/metrics.md, docs/retrieval.md); reads the tool's .npy outputs with np.load. Then checks
that numpy-written files ncml does not support (Fortran order, 3-D, float16, big-endian,
bool labels) fail with one line naming the file and exit status 2. Exits 77 (skipped) when
numpy is not installed.
"""
import json
import os
import subprocess
import sys

try:
    import numpy as np
except ImportError:
    print("numpy is not installed for", sys.executable, "- skipped (Debian: apt install python3-numpy)")
    sys.exit(77)

NCML, WORK = sys.argv[1], sys.argv[2]
os.makedirs(WORK, exist_ok=True)
failures = []


def path(name):
    return os.path.join(WORK, name)


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def close(a, b, rtol, what):
    a, b = float(a), float(b)
    check(abs(a - b) <= rtol * max(abs(b), 1e-300), f"{what}: ncml {a!r} numpy {b!r}")


def ncml(*args):
    return subprocess.run([NCML, *args], capture_output=True, text=True)


# --- data: C classes with planted means, unequal class sizes ---------------------------------
rng = np.random.default_rng(2024)
N, D, C = 900, 24, 12
centres = rng.normal(size=(C, D)) * 1.5
y = np.concatenate([np.arange(C), rng.integers(0, C, N - C)])
x = (centres[y] + rng.normal(size=(N, D))).astype(np.float32)
np.save(path("x.npy"), x)
np.save(path("y.npy"), y.astype(np.int32))
np.save(path("y8.npy"), y.astype(np.uint8))
np.save(path("y64.npy"), y.astype(np.int64))
with open(path("x64_v2.npy"), "wb") as f:
    np.lib.format.write_array(f, x.astype(np.float64), version=(2, 0))

xd = x.astype(np.float64)


def nc_reference(xd, y, w=None):
    counts = np.bincount(y, minlength=C)
    means = np.stack([xd[y == c].mean(axis=0) for c in range(C)])
    mu_g = xd.mean(axis=0)
    centred = xd - means[y]
    sw = centred.T @ centred / len(y)
    mt = means - mu_g
    sb = mt.T @ mt / C
    var = np.array([((xd[y == c] - means[c]) ** 2).sum(axis=1).mean() for c in range(C)])
    cdnv = np.mean([(var[a] + var[b]) / (2 * ((means[a] - means[b]) ** 2).sum())
                    for a in range(C) for b in range(a + 1, C)])
    ref = {
        "nc1": np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10)) / C,
        "trace_sw": np.trace(sw),
        "trace_sb": np.trace(sb),
        "trace_ratio": np.trace(sw) / np.trace(sb),
        "cdnv": cdnv,
        "num_samples": len(y),
        "rank": np.linalg.matrix_rank(mt),
    }
    if w is not None:
        wd = w.astype(np.float64)
        ref["nc3_self_duality"] = np.linalg.norm(wd / np.linalg.norm(wd) - mt / np.linalg.norm(mt))
        clf = np.argmax(xd @ wd.T, axis=1)
        ncc = np.argmin(((xd[:, None, :] - means[None, :, :]) ** 2).sum(axis=2), axis=1)
        ref["nc4"] = np.mean(clf != ncc)
    assert counts.min() > 0
    return ref


def retrieval_reference(q, yq, g, yg, ks, leave_one_out):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    s = qn @ gn.T
    recall, prec = np.zeros(len(ks)), np.zeros(len(ks))
    map_r = rp = mrr = 0.0
    n = 0
    for i in range(len(q)):
        order = np.lexsort((np.arange(len(g)), -s[i]))  # score descending, ties by index
        if leave_one_out:
            order = order[order != i]
        rel = yg[order] == yq[i]
        r = int(rel.sum())
        if r == 0:
            continue
        n += 1
        for j, k in enumerate(ks):
            recall[j] += rel[:k].any()
            prec[j] += rel[:k].sum() / k
        hits = np.cumsum(rel[:r])
        map_r += np.sum((hits / np.arange(1, r + 1))[rel[:r]]) / r
        rp += hits[-1] / r
        mrr += 1.0 / (np.argmax(rel) + 1)
    return {"recall_at_k": recall / n, "precision_at_k": prec / n, "map_at_r": map_r / n,
            "r_precision": rp / n, "mrr": mrr / n, "num_queries": n}


# --- metrics ---------------------------------------------------------------------------------
ks = [1, 2, 4, 8]
ref_nc = nc_reference(xd, y)
# Retrieval scores are float32 in ncml: a query whose ranking has a near tie at a boundary may
# differ from the float64 reference, so averages may differ by a few queries' worth.
tol_q = 3.0 / N
ref_r = retrieval_reference(xd, y, xd, y, ks, True)
for labels in ("y.npy", "y8.npy", "y64.npy"):
    r = ncml("metrics", "--features", path("x.npy"), "--labels", path(labels), "--k", "1,2,4,8", "--json")
    check(r.returncode == 0 and r.stderr == "", f"metrics with {labels} runs: {r.stderr.strip()}")
    if r.returncode != 0:
        continue
    j = json.loads(r.stdout)
    for key in ("nc1", "trace_sw", "trace_sb", "trace_ratio", "cdnv"):
        close(j["nc"][key], ref_nc[key], 1e-6, f"{labels}: {key}")
    check(j["nc"]["rank"] == ref_nc["rank"], f"{labels}: rank {j['nc']['rank']} == {ref_nc['rank']}")
    check(j["nc"]["num_samples"] == N, f"{labels}: num_samples")
    check(j["nc"]["nc3_self_duality"] is None and j["nc"]["nc4"] is None, f"{labels}: no head, NC3/NC4 null")
    rr = j["retrieval"]
    for i, k in enumerate(ks):
        check(abs(rr["recall_at_k"][str(k)] - ref_r["recall_at_k"][i]) <= tol_q, f"{labels}: Recall@{k}")
        check(abs(rr["precision_at_k"][str(k)] - ref_r["precision_at_k"][i]) <= tol_q, f"{labels}: Precision@{k}")
    for key in ("map_at_r", "r_precision", "mrr"):
        check(abs(rr[key] - ref_r[key]) <= tol_q, f"{labels}: {key} {rr[key]} vs {ref_r[key]}")
    check(rr["num_queries"] == ref_r["num_queries"], f"{labels}: num_queries")

# float64 features in format 2.0, a numpy-made head and query/gallery files.
w = np.stack([xd[y == c].mean(axis=0) for c in range(C)]).astype(np.float32)
np.save(path("w.npy"), w)
half = N // 2
np.save(path("q.npy"), x[:half])
np.save(path("qy.npy"), y[:half])
np.save(path("g.npy"), x[half:])
np.save(path("gy.npy"), y[half:].astype(np.int32))
r = ncml("metrics", "--features", path("x64_v2.npy"), "--labels", path("y.npy"), "--head", path("w.npy"),
         "--queries", path("q.npy"), "--query-labels", path("qy.npy"), "--gallery", path("g.npy"),
         "--gallery-labels", path("gy.npy"), "--k", "1,5", "--json")
check(r.returncode == 0, f"metrics with a head and query/gallery runs: {r.stderr.strip()}")
if r.returncode == 0:
    j = json.loads(r.stdout)
    check(j["features"]["dtype"] == "float64", "format 2.0 float64 features are read as float64")
    ref_h = nc_reference(xd, y, w)
    for key in ("nc1", "trace_sw", "cdnv", "nc3_self_duality"):
        close(j["nc"][key], ref_h[key], 1e-6, f"head: {key}")
    close(j["nc"]["nc4"] + 1, ref_h["nc4"] + 1, 1e-12, "head: nc4")
    ref_qg = retrieval_reference(xd[:half], y[:half], xd[half:], y[half:], [1, 5], False)
    check(j["retrieval"]["mode"] == "query_gallery", "query/gallery mode")
    for i, k in enumerate([1, 5]):
        check(abs(j["retrieval"]["recall_at_k"][str(k)] - ref_qg["recall_at_k"][i]) <= 3.0 / half,
              f"query/gallery Recall@{k}")

# --- init-head -------------------------------------------------------------------------------
r = ncml("init-head", "--features", path("x.npy"), "--labels", path("y64.npy"), "--method", "class_mean",
         "--out", path("w_mean.npy"))
check(r.returncode == 0, f"init-head class_mean runs: {r.stderr.strip()}")
if r.returncode == 0:
    got = np.load(path("w_mean.npy"))
    ref = w.astype(np.float64) / np.linalg.norm(w.astype(np.float64), axis=1, keepdims=True)
    check(got.dtype == np.float32 and got.shape == (C, D), "init-head writes float32 [C, D]")
    check(np.abs(got - ref).max() < 1e-5, "class_mean head = unit class means")
r = ncml("init-head", "--features", path("x.npy"), "--labels", path("y.npy"), "--out", path("w_pc1.npy"))
check(r.returncode == 0, f"init-head nc_pc1 runs: {r.stderr.strip()}")
if r.returncode == 0:
    got = np.load(path("w_pc1.npy"))
    ok = True
    for c in range(C):
        e = xd[y == c]
        v = np.linalg.svd(e, full_matrices=False)[2][0]
        if v @ e.mean(axis=0) < 0:
            v = -v
        ok &= np.abs(got[c] - v).max() < 1e-4
    check(ok, "nc_pc1 head = sign-fixed top right singular vectors of the uncentred classes")

# --- knn -------------------------------------------------------------------------------------
k = 7
r = ncml("knn", "--queries", path("x.npy"), "--k", str(k), "--exclude-self", "--out-indices", path("i.npy"),
         "--out-scores", path("s.npy"))
check(r.returncode == 0, f"knn runs: {r.stderr.strip()}")
if r.returncode == 0:
    idx, sc = np.load(path("i.npy")), np.load(path("s.npy"))
    check(idx.dtype == np.int64 and idx.shape == (N, k), "indices int64 [N, k]")
    check(sc.dtype == np.float32 and sc.shape == (N, k), "scores float32 [N, k]")
    xn = xd / np.linalg.norm(xd, axis=1, keepdims=True)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    check(not (idx == np.arange(N)[:, None]).any(), "no query is its own neighbour")
    check(np.abs(sc - np.take_along_axis(sim, idx, axis=1)).max() < 1e-5, "scores are the cosines of the indices")
    check((np.diff(sc, axis=1) <= 0).all(), "best first")
    kth = -np.sort(-sim, axis=1)[:, k - 1]
    check(np.abs(sc[:, -1] - kth).max() < 1e-5, "the k-th score is numpy's k-th largest cosine")

# --- numpy files ncml does not take ----------------------------------------------------------
bad = {
    "fortran.npy": (np.asfortranarray(x), "features", "Fortran-order"),
    "cube.npy": (x.reshape(N, 4, 6), "features", "3-D array"),
    "half.npy": (x.astype(np.float16), "features", "unsupported dtype '<f2'"),
    "big.npy": (x.astype(">f4"), "features", "big-endian"),
    "bool.npy": (y > 3, "labels", "boolean dtype"),
    "ycol.npy": (y[:, None], "labels", "expected 1-D"),
}
for name, (arr, role, problem) in bad.items():
    np.save(path(name), arr)
    out = path("never.npy")
    args = ["--features", path(name), "--labels", path("y.npy")] if role == "features" else \
           ["--features", path("x.npy"), "--labels", path(name)]
    r = ncml("init-head", *args, "--out", out)
    line = r.stderr
    check(r.returncode == 2 and line.count("\n") == 1 and line.startswith(f"ncml: {path(name)}: ")
          and problem in line and not os.path.exists(out), f"{name} rejected: {line.strip()}")

print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
