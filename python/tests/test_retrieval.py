"""knn and evaluate_retrieval against brute force in NumPy."""
import numpy as np
import pytest

import ncml
import numpy_reference as ref


def check_knn(q, g, k, indices, scores, similarity="cosine", exclude_self=False, tol=1e-5):
    """Scores equal the brute-force top-k scores; every returned index has its score (ties may
    take any of the tied indices)."""
    sims = ref.similarities(q, g, similarity)
    order = ref.ranking(sims, exclude_self)
    assert indices.shape == scores.shape == (len(q), k)
    for i in range(len(q)):
        expected = sims[i, order[i][:k]]
        np.testing.assert_allclose(scores[i], expected, rtol=tol, atol=tol)
        np.testing.assert_allclose(sims[i, indices[i]], expected, rtol=tol, atol=tol)
        if exclude_self:
            assert i not in indices[i]
        assert len(set(indices[i].tolist())) == k


@pytest.mark.parametrize("similarity", ["cosine", "inner_product", "neg_squared_l2"])
def test_knn_query_gallery(data32, similarity):
    x, _ = data32
    q, g = x[:40], x[40:]
    idx, sc = ncml.knn(q, g, 7, similarity=similarity)
    assert idx.dtype == np.int64 and sc.dtype == np.float32
    check_knn(q, g, 7, idx, sc, similarity, tol=1e-4 if similarity == "neg_squared_l2" else 1e-5)


def test_knn_leave_one_out(data64):
    x, _ = data64
    idx, sc = ncml.knn(x, x, 5, exclude_self=True)
    check_knn(x, x, 5, idx, sc, exclude_self=True)
    idx2, sc2 = ncml.knn(x, None, 5, exclude_self=True)     # None: the queries themselves
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(sc, sc2)
    idx_all, _ = ncml.knn(x, x, 1)
    np.testing.assert_array_equal(idx_all[:, 0], np.arange(len(x)))   # each row is its own nearest


def test_knn_ties_by_index():
    x = np.ones((5, 3), np.float32)
    idx, sc = ncml.knn(x, x, 4, exclude_self=True)
    np.testing.assert_array_equal(idx[0], [1, 2, 3, 4])
    np.testing.assert_array_equal(idx[2], [0, 1, 3, 4])
    np.testing.assert_allclose(sc, 1.0, rtol=1e-6)


def test_retrieval_leave_one_out_matches_brute_force(data32):
    x, y = data32
    rep = ncml.evaluate_retrieval(x, y)
    expected = ref.retrieval(x, y)
    assert rep["ks"] == [1, 2, 4, 8]
    np.testing.assert_allclose(rep["recall_at_k"], expected["recall_at_k"], atol=1e-12)
    np.testing.assert_allclose(rep["precision_at_k"], expected["precision_at_k"], atol=1e-12)
    for key in ("map_at_r", "r_precision", "mrr"):
        assert rep[key] == pytest.approx(expected[key], abs=1e-12), key
    assert rep["num_queries"] == 150 and rep["num_lone_queries"] == 0


def test_retrieval_query_gallery_and_lone_queries(data64):
    x, y = data64
    q, qy, g, gy = x[:50], y[:50], x[50:], y[50:]
    gy = gy.copy()
    gy[gy == 5] = 4                                  # class 5 queries have no gallery item
    rep = ncml.evaluate_retrieval(q, qy, g, gy, ks=[1, 3, 10])
    expected = ref.retrieval(q, qy, g, gy, ks=(1, 3, 10))
    np.testing.assert_allclose(rep["recall_at_k"], expected["recall_at_k"], atol=1e-12)
    np.testing.assert_allclose(rep["precision_at_k"], expected["precision_at_k"], atol=1e-12)
    assert rep["map_at_r"] == pytest.approx(expected["map_at_r"], abs=1e-12)
    assert rep["num_lone_queries"] == expected["num_lone_queries"] == int((qy == 5).sum())


def test_retrieval_per_class(data32):
    x, y = data32
    rep = ncml.evaluate_retrieval(x, y, per_class=True, ks=(1, 2))
    assert rep["class_recall_at_k"].shape == (6, 2)
    np.testing.assert_array_equal(rep["class_num_queries"], np.bincount(y))
    np.testing.assert_allclose(rep["class_recall_at_k"].mean(0), rep["class_avg_recall_at_k"], atol=1e-12)
    # Balanced classes: the class average equals the query average.
    np.testing.assert_allclose(rep["class_avg_recall_at_k"], rep["recall_at_k"], atol=1e-12)
    assert "class_mrr" not in ncml.evaluate_retrieval(x, y)


def test_retrieval_errors(data32):
    x, y = data32
    with pytest.raises(ValueError, match=r"ks\[1\] = K = 200 is larger than the gallery \(149 rows"):
        ncml.evaluate_retrieval(x, y, ks=[1, 200])
    with pytest.raises(ValueError, match="labels has 149 entries, expected 150"):
        ncml.evaluate_retrieval(x, y[:-1])
    with pytest.raises(ValueError, match="gallery and gallery_labels go together"):
        ncml.evaluate_retrieval(x, y, x)
    with pytest.raises(ValueError, match="gallery has 9 columns but queries have 10"):
        ncml.evaluate_retrieval(x, y, x[:, :9], y)
    with pytest.raises(ValueError, match="similarity must be one of 'cosine', 'inner_product', 'neg_squared_l2'"):
        ncml.knn(x, x, 3, similarity="l2")
    with pytest.raises(ValueError, match="k = 150 is larger than the gallery"):
        ncml.knn(x, x, 150, exclude_self=True)
    with pytest.raises(ValueError, match="negative label -1 at row 0"):
        ncml.evaluate_retrieval(x, np.r_[-1, y[1:]])
