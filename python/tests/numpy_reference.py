"""Float64 NumPy references for the ncml bindings: straight from the definitions in
docs/metrics.md and docs/retrieval.md, no cleverness, small inputs only."""
import numpy as np


def clusters(seed=0, classes=6, per_class=25, dim=10, dtype=np.float32, spread=0.6, offset=1.0):
    """Gaussian clusters [N, dim] around random centres (shifted by `offset`), shuffled labels."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.normal(size=(classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    rng.shuffle(y)
    x = centres[y] + spread * rng.normal(size=(len(y), dim)) + offset
    return x.astype(dtype), y.astype(np.int64)


def class_means(x, y, num_classes=None):
    x = np.asarray(x, np.float64)
    c = int(y.max()) + 1 if num_classes is None else num_classes
    return np.stack([x[y == k].mean(0) if np.any(y == k) else np.zeros(x.shape[1]) for k in range(c)])


def within_covariance(x, y):
    x = np.asarray(x, np.float64)
    d = x - class_means(x, y)[y]
    return d.T @ d / len(x)


def between_covariance(x, y):
    x = np.asarray(x, np.float64)
    present = np.unique(y)
    m = class_means(x, y)[present] - x.mean(0)
    return m.T @ m / len(present)


def nc1(x, y):
    """(1/C) tr(Sigma_W Sigma_B^+), Papyan et al. 2020, with np.linalg.pinv."""
    sb = between_covariance(x, y)
    return float(np.trace(within_covariance(x, y) @ np.linalg.pinv(sb, rcond=1e-10)) / len(np.unique(y)))


def cdnv(x, y):
    x = np.asarray(x, np.float64)
    mu = class_means(x, y)
    classes = np.unique(y)
    var = {c: ((x[y == c] - mu[c]) ** 2).sum(1).mean() for c in classes}
    vals = [(var[a] + var[b]) / (2 * ((mu[a] - mu[b]) ** 2).sum()) for i, a in enumerate(classes) for b in classes[i + 1:]]
    return float(np.mean(vals))


def pc1_directions(x, y):
    """Top right singular vector of each class's uncentred rows, signed towards the class mean."""
    x = np.asarray(x, np.float64)
    out = []
    for c in range(int(y.max()) + 1):
        e = x[y == c]
        v = np.linalg.svd(e, full_matrices=False)[2][0]
        out.append(v if v @ e.mean(0) >= 0 else -v)
    return np.stack(out)


def similarities(q, g, similarity="cosine"):
    q = np.asarray(q, np.float64)
    g = np.asarray(g, np.float64)
    if similarity == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return q @ g.T
    if similarity == "inner_product":
        return q @ g.T
    return -((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)


def ranking(sims, exclude_self=False):
    """Gallery indices per query, best first, ties by index; the query itself removed."""
    order = []
    for i, s in enumerate(sims):
        idx = np.lexsort((np.arange(len(s)), -s))
        if exclude_self:
            idx = idx[idx != i]
        order.append(idx)
    return order


def retrieval(q, qy, g=None, gy=None, ks=(1, 2, 4, 8)):
    """Recall@K, Precision@K, MAP@R, R-Precision, MRR by brute force (leave-one-out when g is None)."""
    loo = g is None
    if loo:
        g, gy = q, qy
    order = ranking(similarities(q, g), exclude_self=loo)
    rec, prec, maps, rps, mrrs = [], [], [], [], []
    lone = 0
    for i, idx in enumerate(order):
        rel = gy[idx] == qy[i]
        r = int(rel.sum())
        if r == 0:
            lone += 1
            continue
        rec.append([float(rel[:k].any()) for k in ks])
        prec.append([rel[:k].sum() / k for k in ks])
        hits = np.cumsum(rel[:r])
        maps.append(float((hits / np.arange(1, r + 1) * rel[:r]).sum() / r))
        rps.append(rel[:r].sum() / r)
        mrrs.append(1.0 / (np.argmax(rel) + 1))
    return {
        "recall_at_k": np.mean(rec, 0),
        "precision_at_k": np.mean(prec, 0),
        "map_at_r": np.mean(maps),
        "r_precision": np.mean(rps),
        "mrr": np.mean(mrrs),
        "num_queries": len(rec),
        "num_lone_queries": lone,
    }
