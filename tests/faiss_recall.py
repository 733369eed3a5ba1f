#!/usr/bin/python3
"""Leave-one-out retrieval metrics with faiss IndexFlatIP, the way DML code computes them.

Usage: faiss_recall.py FEATURES.f32 LABELS.i64 N D K1,K2,... OUT.txt

FEATURES.f32: N x D float32, row-major; LABELS.i64: N int64. Rows are L2-normalized with
faiss.normalize_L2 (cosine similarity), the index searches k + 1 neighbours and the query's
own row is removed by index (not by dropping the first column). Writes one "name value" line
per metric: recall_at_K for each K, then precision_at_1, r_precision and
mean_average_precision_at_r as pytorch-metric-learning's AccuracyCalculator defines them
(R = number of other rows with the query's label; lone queries skipped).

Exit status 3 when faiss or numpy is missing, so the caller can skip.
"""
import sys

try:
    import faiss
    import numpy as np
except ImportError as exc:  # pragma: no cover - depends on the machine
    print(f"faiss_recall.py: {exc}", file=sys.stderr)
    sys.exit(3)


def main(argv):
    feat_path, label_path, n, d, ks, out_path = argv[1:7]
    n, d = int(n), int(d)
    ks = [int(k) for k in ks.split(",")]
    x = np.fromfile(feat_path, dtype=np.float32).reshape(n, d).copy()
    y = np.fromfile(label_path, dtype=np.int64)
    assert y.shape == (n,)
    faiss.normalize_L2(x)
    counts = np.bincount(y)
    r_per_query = counts[y] - 1
    depth = int(max(max(ks), r_per_query.max()))
    index = faiss.IndexFlatIP(d)
    index.add(x)
    _, nbrs = index.search(x, depth + 1)
    # Remove the query's own row by index; keep `depth` neighbours.
    own = nbrs == np.arange(n)[:, None]
    knn = np.empty((n, depth), dtype=np.int64)
    for i in range(n):
        row = nbrs[i][~own[i]]
        knn[i] = row[:depth]
    same = y[knn] == y[:, None]
    valid = r_per_query > 0
    out = {}
    for k in ks:
        out[f"recall_at_{k}"] = float(same[valid, :k].any(axis=1).mean())
    out["precision_at_1"] = float(same[valid, 0].mean())
    r_prec, map_r = [], []
    for i in np.nonzero(valid)[0]:
        r = r_per_query[i]
        rel = same[i, :r]
        r_prec.append(rel.sum() / r)
        precision_at_i = np.cumsum(rel) / np.arange(1, r + 1)
        map_r.append((precision_at_i * rel).sum() / r)
    out["r_precision"] = float(np.mean(r_prec))
    out["mean_average_precision_at_r"] = float(np.mean(map_r))
    with open(out_path, "w") as f:
        for name, value in out.items():
            f.write(f"{name} {value:.17g}\n")


if __name__ == "__main__":
    main(sys.argv)
