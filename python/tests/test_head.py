"""nc_directions, init_head and DriftTracker against NumPy references."""
import numpy as np
import pytest

import ncml
import numpy_reference as ref


def test_pc1_directions_match_svd(data64):
    x, y = data64
    v = ncml.nc_directions(x, y)
    assert v.shape == (6, 10) and v.dtype == np.float64
    np.testing.assert_allclose(v, ref.pc1_directions(x, y), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)


def test_directions_float32_keep_dtype(data32):
    x, y = data32
    v = ncml.nc_directions(x, y)
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, ref.pc1_directions(x, y), atol=1e-5)


def test_mean_directions(data64):
    x, y = data64
    mu = ref.class_means(x, y)
    np.testing.assert_allclose(ncml.nc_directions(x, y, "mean"), mu / np.linalg.norm(mu, axis=1, keepdims=True),
                               atol=1e-12)
    c = mu - x.mean(0)
    np.testing.assert_allclose(ncml.nc_directions(x, y, method="centered_mean"),
                               c / np.linalg.norm(c, axis=1, keepdims=True), atol=1e-12)


def test_init_head_nc_pc1_is_scaled_directions(data64):
    x, y = data64
    w = ncml.init_head(x, y)
    assert w.dtype == np.float32 and w.shape == (6, 10)
    np.testing.assert_allclose(w, ref.pc1_directions(x, y), atol=1e-6)
    w3 = ncml.init_head(x, y, method="nc_pc1", scale=3.0)
    np.testing.assert_allclose(np.linalg.norm(w3, axis=1), 3.0, rtol=1e-6)
    wide = ncml.init_head(x, y, num_classes=6)
    np.testing.assert_array_equal(wide, w)


def test_init_head_other_methods(data64):
    x, y = data64
    mu = ref.class_means(x, y)
    np.testing.assert_allclose(ncml.init_head(x, y, "class_mean"), mu / np.linalg.norm(mu, axis=1, keepdims=True),
                               atol=1e-6)
    etf = ncml.init_head(x, y, "aligned_etf").astype(np.float64)
    g = etf @ etf.T
    np.testing.assert_allclose(np.diag(g), 1.0, atol=1e-6)
    np.testing.assert_allclose(g[~np.eye(6, dtype=bool)], -1 / 5, atol=1e-6)
    # Data-free methods: from the data's shape, or from (num_classes, dim).
    k1 = ncml.init_head(x, y, "kaiming_normal", seed=7)
    k2 = ncml.init_head(6, 10, "kaiming_normal", seed=7)
    np.testing.assert_array_equal(k1, k2)
    assert not np.array_equal(k2, ncml.init_head(6, 10, "kaiming_normal", seed=8))
    big = ncml.init_head(200, 300, "kaiming_normal", seed=1)
    assert big.std() == pytest.approx(np.sqrt(2 / 200), rel=0.02)
    b = np.sqrt(6 / (6 + 10))
    xu = ncml.init_head(6, 10, "xavier_uniform")
    assert np.all(np.abs(xu) <= b)
    s = ncml.init_head(4, 5, method="simplex_etf", seed=2).astype(np.float64)
    np.testing.assert_allclose(s @ s.T, (np.eye(4) * 4 - 1) / 3, atol=1e-6)


def test_head_errors(data64):
    x, y = data64
    with pytest.raises(ValueError, match="method must be one of 'nc_pc1', .*got 'pca'"):
        ncml.init_head(x, y, method="pca")
    with pytest.raises(ValueError, match="scale must be positive and finite, got -1"):
        ncml.init_head(x, y, scale=-1.0)
    with pytest.raises(ValueError, match="needs features and labels"):
        ncml.init_head(6, 10, "nc_pc1")
    with pytest.raises(ValueError, match=r"class\(es\) 6, 7 have no samples"):
        ncml.nc_directions(x, y, num_classes=8)
    z = x.copy()
    z[4, 2] = np.nan
    with pytest.raises(ValueError, match="features has a non-finite value nan at row 4, column 2"):
        ncml.init_head(z, y)


def test_drift_tracker(data64):
    x, y = data64
    v = ncml.nc_directions(x, y)
    drift = ncml.DriftTracker(v)
    drift.update(v * 5)                       # same directions: distance 0
    assert drift.mean_squared_distance() == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    w = rng.normal(size=v.shape)
    drift.update(w)
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    per = ((unit - v) ** 2).sum(1)
    np.testing.assert_allclose(drift.per_class(), per, atol=1e-6)
    assert drift.mean_squared_distance() == pytest.approx(per.mean(), abs=1e-6)
    assert drift.num_updates == 2
    assert drift.path_length() == pytest.approx(np.linalg.norm(w - 5 * v), rel=1e-5)
    assert drift.from_initial() == pytest.approx(np.linalg.norm(w - 5 * v) / np.linalg.norm(5 * v), rel=1e-5)
    np.testing.assert_allclose(drift.reference(), v, atol=1e-7)
    with pytest.raises(ValueError, match="W is 2 x 10, expected 6 x 10"):
        drift.update(w[:2])
    with pytest.raises(ValueError, match="no head recorded yet"):
        ncml.DriftTracker(v).mean_squared_distance()
