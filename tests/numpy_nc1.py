#!/usr/bin/env python3
"""NC1 as the Neural Collapse literature computes it with numpy, for ncml's cross-check test.

Reads features (raw float64, row-major, --dim columns) and labels (raw int64), then prints

    nc1 <value>        np.trace(Sw @ np.linalg.pinv(Sb)) / C'
    rank <r>           np.linalg.matrix_rank(Sb)
    classes_used <C'>

with Sw = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T, mu_G the sample-weighted mean,
Sb = (1/C') sum_c (mu_c - mu_G)(mu_c - mu_G)^T over the C' classes that have samples, and
np.linalg.pinv with its default rcond (1e-15) unless --rcond is given. Everything in float64.
Used by tests/cpu/test_metrics_nc.cpp; needs only numpy (Debian's python3-numpy).
"""
import argparse
import sys

import numpy as np


def covariances(x, y, num_classes):
    """Sw [D, D], Sb [D, D] and C' (classes with samples), all in float64."""
    n = x.shape[0]
    counts = np.bincount(y, minlength=num_classes)
    used = np.flatnonzero(counts)
    onehot = np.zeros((num_classes, n))
    onehot[y, np.arange(n)] = 1.0
    means = (onehot @ x)[used] / counts[used, None]
    pos = np.full(num_classes, -1)
    pos[used] = np.arange(used.size)
    centred = x - means[pos[y]]
    sw = centred.T @ centred / n
    mt = means - x.mean(axis=0)
    sb = mt.T @ mt / used.size
    return sw, sb, used.size


def nc1_numpy(x, y, num_classes, rcond=None):
    """np.trace(Sw @ np.linalg.pinv(Sb)) / C' from float64 features x [N, D], labels y [N]."""
    sw, sb, used = covariances(x, y, num_classes)
    pinv = np.linalg.pinv(sb) if rcond is None else np.linalg.pinv(sb, rcond=rcond)
    return np.trace(sw @ pinv) / used


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--x", required=True, help="features, raw float64 row-major")
    ap.add_argument("--y", required=True, help="labels, raw int64")
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--num-classes", type=int, default=-1, help="-1: max(label) + 1")
    ap.add_argument("--rcond", type=float, default=None)
    a = ap.parse_args(argv)
    x = np.fromfile(a.x, dtype=np.float64).reshape(-1, a.dim)
    y = np.fromfile(a.y, dtype=np.int64)
    if y.size != x.shape[0]:
        sys.exit(f"labels: {y.size} entries for {x.shape[0]} rows")
    num_classes = a.num_classes if a.num_classes > 0 else int(y.max()) + 1
    sw, sb, used = covariances(x, y, num_classes)
    pinv = np.linalg.pinv(sb) if a.rcond is None else np.linalg.pinv(sb, rcond=a.rcond)
    print(f"nc1 {np.trace(sw @ pinv) / used!r}")
    print(f"rank {np.linalg.matrix_rank(sb)}")
    print(f"classes_used {used}")


if __name__ == "__main__":
    main(sys.argv[1:])
