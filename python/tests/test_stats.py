"""ClassStats, class_stats, nc1, nc1_detailed, nc_metrics and nc4 against NumPy references."""
import pickle

import numpy as np
import pytest

import ncml
import numpy_reference as ref


def test_class_stats_match_numpy(data64):
    x, y = data64
    s = ncml.ClassStats(6, x.shape[1])
    s.add(x, y)
    assert (s.num_classes, s.dim, s.total_count, s.num_nonempty_classes) == (6, 10, 150, 6)
    np.testing.assert_array_equal(s.counts(), np.bincount(y))
    assert s.counts().dtype == np.int64
    np.testing.assert_allclose(s.means(), ref.class_means(x, y), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.global_mean(), x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.within_covariance(), ref.within_covariance(x, y), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s.between_covariance(), ref.between_covariance(x, y), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s.within_scatter(), ref.within_covariance(x, y) * len(x), rtol=1e-10, atol=1e-10)
    dev = np.array([((x[y == c] - x[y == c].mean(0)) ** 2).sum() for c in range(6)])
    np.testing.assert_allclose(s.class_sq_deviations(), dev, rtol=1e-10)
    np.testing.assert_allclose(s.class_variances(), dev / np.bincount(y), rtol=1e-10)
    np.testing.assert_allclose(s.mean_of_class_means(), ref.class_means(x, y).mean(0), rtol=1e-12, atol=1e-12)


def test_float32_statistics_within_float_rounding(data32):
    x, y = data32
    s = ncml.class_stats(x, y)
    np.testing.assert_allclose(s.means(), ref.class_means(x, y), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s.within_covariance(), ref.within_covariance(x, y), rtol=1e-5, atol=1e-6)


def test_batches_and_merge_equal_one_pass(data64):
    x, y = data64
    whole = ncml.class_stats(x, y)
    a = ncml.ClassStats(6, 10)
    b = ncml.ClassStats(6, 10)
    for lo in range(0, 100, 30):
        a.add(x[lo:min(lo + 30, 100)], y[lo:min(lo + 30, 100)])
    b.add(x[100:], y[100:])
    a.merge(b)
    assert a.total_count == whole.total_count
    np.testing.assert_allclose(a.means(), whole.means(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(a.within_covariance(), whole.within_covariance(), rtol=1e-11, atol=1e-13)


def test_empty_class_and_num_classes(data64):
    x, y = data64
    s = ncml.class_stats(x, y, num_classes=8)
    assert s.num_classes == 8 and s.num_nonempty_classes == 6
    assert s.counts()[6:].tolist() == [0, 0]
    assert np.all(np.isnan(s.class_variances()[6:]))
    r = ncml.nc_metrics(s)
    assert r["num_empty_classes"] == 2 and r["num_classes_used"] == 6


def test_pickle_and_from_parts(data64):
    x, y = data64
    s = ncml.class_stats(x, y)
    t = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(t.means(), s.means())
    np.testing.assert_array_equal(t.within_scatter(), s.within_scatter())
    np.testing.assert_array_equal(t.counts(), s.counts())
    u = ncml.ClassStats.from_parts(s.counts(), s.means(), s.class_sq_deviations())
    assert not u.has_scatter
    with pytest.raises(ValueError, match="within_scatter"):
        u.within_covariance()
    assert "total_count=150" in repr(s)


def test_nc1_matches_pinv_reference(data64):
    x, y = data64
    s = ncml.class_stats(x, y)
    expected = ref.nc1(x, y)
    assert ncml.nc1(s) == pytest.approx(expected, rel=1e-9)
    assert ncml.nc1(s, path="exact") == pytest.approx(expected, rel=1e-9)
    assert ncml.nc1(x, y) == pytest.approx(expected, rel=1e-9)          # one pass, no scatter
    assert ncml.nc1(x, y, s) == pytest.approx(expected, rel=1e-9)
    d = ncml.nc1_detailed(s)
    assert d["value"] == ncml.nc1(s)
    assert (d["rank"], d["num_classes_used"], d["path"]) == (5, 6, "projected")
    assert ncml.nc1_detailed(x, y)["rank"] == 5
    assert ncml.nc1_detailed(s, path="exact")["path"] == "exact"


def test_nc1_float32_one_pass(data32):
    x, y = data32
    assert ncml.nc1(x, y) == pytest.approx(ref.nc1(x, y), rel=1e-5)


def test_nc_metrics_report(data64):
    x, y = data64
    s = ncml.class_stats(x, y)
    mu = ref.class_means(x, y)
    W = (mu - x.mean(0)).astype(np.float32)
    r = ncml.nc_metrics(s, W)
    assert isinstance(r, dict)
    assert r["nc1"] == pytest.approx(ref.nc1(x, y), rel=1e-9)
    assert r["trace_sw"] == pytest.approx(np.trace(ref.within_covariance(x, y)), rel=1e-10)
    assert r["trace_sb"] == pytest.approx(np.trace(ref.between_covariance(x, y)), rel=1e-10)
    assert r["trace_ratio"] == pytest.approx(r["trace_sw"] / r["trace_sb"], rel=1e-12)
    assert r["cdnv"] == pytest.approx(ref.cdnv(x, y), rel=1e-9)
    assert r["num_samples"] == 150 and r["rank"] == 5
    # W equal to the centred means: self-duality is zero up to the float32 rounding of W.
    assert r["nc3_self_duality"] < 1e-6
    # NC2 equinorm from its definition.
    norms = np.linalg.norm(mu - x.mean(0), axis=1)
    assert r["nc2_equinorm"] == pytest.approx(norms.std() / norms.mean(), rel=1e-9)
    no_head = ncml.nc_metrics(s)
    assert np.isnan(no_head["nc3_self_duality"]) and no_head["nc1"] == r["nc1"]
    assert np.isnan(ncml.nc_metrics(ncml.class_stats(x, y, within_scatter=False))["nc1"])


def test_nc4_against_numpy(data64):
    x, y = data64
    s = ncml.class_stats(x, y)
    rng = np.random.default_rng(3)
    W = rng.normal(size=(6, 10))
    mu = ref.class_means(x, y)
    classifier = np.argmax(x @ W.T, 1)
    ncc = np.argmin(((x[:, None, :] - mu[None]) ** 2).sum(-1), 1)
    assert ncml.nc4(x, y, s, W) == pytest.approx(np.mean(classifier != ncc), abs=1e-15)
    bias = rng.normal(size=6)
    classifier_b = np.argmax(x @ W.T + bias, 1)
    assert ncml.nc4(x, y, s, W, bias) == pytest.approx(np.mean(classifier_b != ncc), abs=1e-15)
    assert 0.0 <= ncml.nc4(x, y, s, W, rule="cosine", per_class_average=True) <= 1.0


def test_stats_errors_carry_the_library_message(data64):
    x, y = data64
    s = ncml.ClassStats(6, 10)
    bad = y.copy()
    bad[7] = 6
    with pytest.raises(ValueError, match=r"labels has label 6 at row 7, out of range \[0, 6\)"):
        s.add(x, bad)
    assert s.total_count == 0  # nothing was added
    with pytest.raises(ValueError, match="features has 9 columns, expected dim = 10"):
        s.add(x[:, :9], y)
    with pytest.raises(ValueError, match="merge: dim differs"):
        s.merge(ncml.ClassStats(6, 9))
    with pytest.raises(ValueError, match="num_classes must be positive"):
        ncml.ClassStats(0, 3)
    with pytest.raises(ValueError, match="path must be one of 'projected', 'exact', got 'fast'"):
        ncml.nc1(ncml.class_stats(x, y), path="fast")
    one_class = ncml.class_stats(x[y == 0], np.zeros(25, np.int64))
    with pytest.raises(ValueError, match="at least 2 classes with samples"):
        ncml.nc1(one_class)
