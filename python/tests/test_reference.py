"""The module against the C++ library called directly: tests/reference.cpp (built as
ncml_python_reference, found through NCML_PY_REFERENCE) runs the same calls on .npy files;
the results must be bitwise equal (the library's results do not depend on thread counts,
and both sides read the same memory layout)."""
import subprocess

import numpy as np
import pytest

import ncml
import numpy_reference as ref


def retrieval_values(rep):
    return np.array(rep["recall_at_k"] + rep["precision_at_k"]
                    + [rep["map_at_r"], rep["r_precision"], rep["mrr"], rep["num_queries"], rep["num_lone_queries"]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bindings_equal_the_cpp_library(tmp_path, reference_program, dtype):
    x, y = ref.clusters(seed=7, classes=9, per_class=22, dim=16, dtype=dtype)
    W = np.random.default_rng(8).normal(size=(9, 16)).astype(np.float32)
    np.save(tmp_path / "features.npy", x)
    np.save(tmp_path / "labels.npy", y)
    np.save(tmp_path / "W.npy", W)
    subprocess.run([reference_program, str(tmp_path)], check=True)

    def cpp(name):
        return np.load(tmp_path / f"out_{name}.npy")

    def same(name, value):
        expected = cpp(name)
        assert value.dtype == expected.dtype, name
        np.testing.assert_array_equal(value, expected, err_msg=name)

    same("directions_pc1", ncml.nc_directions(x, y))
    same("directions_centered_mean", ncml.nc_directions(x, y, "centered_mean"))
    same("head_nc_pc1", ncml.init_head(x, y))
    same("head_aligned_etf", ncml.init_head(x, y, "aligned_etf", scale=2.0, seed=5))
    same("head_kaiming_normal", ncml.init_head(9, 16, "kaiming_normal", seed=7))

    s = ncml.class_stats(x, y)
    same("counts", s.counts())
    same("means", s.means())
    same("sq_deviations", s.class_sq_deviations())
    same("global_mean", s.global_mean())
    same("within_covariance", s.within_covariance())
    same("between_covariance", s.between_covariance())

    r = ncml.nc_metrics(s, W)
    same("nc", np.array([ncml.nc1(s), ncml.nc1(s, path="exact"), ncml.nc1(x, y, s), r["trace_sw"], r["trace_sb"],
                         r["trace_ratio"], r["cdnv"], r["nc2_etf_error"], r["nc2_equinorm"],
                         r["nc2_equiangularity"], r["nc2_max_angle"], r["nc3_self_duality"], r["nc3_etf_error"],
                         r["rank"], ncml.nc4(x, y, s, W)]))

    idx, sc = ncml.knn(x, x, 5, exclude_self=True)
    same("knn_indices", idx)
    same("knn_scores", sc)

    same("retrieval", retrieval_values(ncml.evaluate_retrieval(x, y)))
    half = len(x) // 2
    same("retrieval_query_gallery",
         retrieval_values(ncml.evaluate_retrieval(x[:half], y[:half], x[half:], y[half:], ks=[1, 5, 10])))

    pert = ncml.Perturbation(sigma=0.01, seed=3)
    same("noise", pert.noise(9, 16, 7))
    Wp = W.copy()
    with pert.perturb(Wp, 7):
        same("perturbed", Wp)
    np.testing.assert_array_equal(Wp, W)

    drift = ncml.DriftTracker(ncml.nc_directions(x, y).astype(np.float32))
    drift.update(W)
    same("drift", np.array([drift.mean_squared_distance()]))

    loss, gx, gw = ncml.proxy_anchor_loss(x[:64], y[:64], W.astype(dtype))
    same("proxy_anchor", np.array([loss]))
    same("proxy_anchor_grad_embeddings", gx)
    same("proxy_anchor_grad_weights", gw)


def test_torch_inputs_equal_the_cpp_library(tmp_path, reference_program, torch):
    x, y = ref.clusters(seed=9, classes=7, per_class=20, dim=12)
    W = np.random.default_rng(1).normal(size=(7, 12)).astype(np.float32)
    for name, a in (("features", x), ("labels", y), ("W", W)):
        np.save(tmp_path / f"{name}.npy", a)
    subprocess.run([reference_program, str(tmp_path)], check=True)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    np.testing.assert_array_equal(ncml.init_head(tx, ty).numpy(), np.load(tmp_path / "out_head_nc_pc1.npy"))
    np.testing.assert_array_equal(retrieval_values(ncml.evaluate_retrieval(tx, ty)),
                                  np.load(tmp_path / "out_retrieval.npy"))
    idx, sc = ncml.knn(tx, tx, 5, exclude_self=True)
    np.testing.assert_array_equal(idx.numpy(), np.load(tmp_path / "out_knn_indices.npy"))
    np.testing.assert_array_equal(sc.numpy(), np.load(tmp_path / "out_knn_scores.npy"))
