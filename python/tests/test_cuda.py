"""The GPU path of the module: torch CUDA tensors go to nc::cuda on their device and torch's
current stream there (docs/python.md, "CUDA tensors").

Every GPU test runs a binding on CUDA tensors and compares it with the same binding on the
CPU copies, with the tolerances of the C++ GPU tests (tests/cuda/*.cu), and checks where and
of what kind the results are. They are skipped unless ncml was built with CUDA and torch sees
a device. The routing checks that need no device run in every CUDA build, and
test_cuda_tensor_without_cuda_in_the_build in the others (when torch has a device)."""
import numpy as np
import pytest

import ncml
from numpy_reference import clusters

torch = pytest.importorskip("torch")

HAVE_GPU = bool(ncml.with_cuda and torch.cuda.is_available())
gpu = pytest.mark.skipif(not HAVE_GPU, reason="needs ncml built with CUDA (ncml.with_cuda) and a CUDA device")
cuda_build = pytest.mark.skipif(not ncml.with_cuda, reason="ncml was built without CUDA")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def host(t):
    return t.detach().cpu().numpy()


def on_gpu(x, y):
    """CPU tensors (from NumPy) and their CUDA copies."""
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    return tx, ty, tx.cuda(), ty.cuda()


def assert_cuda_tensor(t, like, dtype):
    assert isinstance(t, torch.Tensor) and t.device == like.device and t.dtype == dtype


def sign_rows(n=600, d=16, classes=12, seed=3):
    """+-1 rows in 16 dimensions: every score (cosine 1/16 steps, inner product, squared
    distance) is exact in float32, so the GPU's neighbours and metrics equal the CPU's
    exactly, ties broken by gallery index on both."""
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n, d)) < 0.5, -1.0, 1.0).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return x, y


# ---------------------------------------------------------------- statistics and NC1


@gpu
def test_class_stats_matches_the_cpu():
    x, y = clusters(seed=5, classes=8, per_class=120, dim=24)
    tx, ty, cx, cy = on_gpu(x, y)
    cpu = ncml.class_stats(tx, ty)
    for labels in (cy, cy.to(torch.int32)):
        s = ncml.class_stats(cx, labels)
        assert isinstance(s, ncml.ClassStats) and s.has_scatter
        np.testing.assert_array_equal(s.counts(), cpu.counts())
        assert rel_err(s.means(), cpu.means()) <= 1e-5
        assert rel_err(s.class_sq_deviations(), cpu.class_sq_deviations()) <= 1e-5
        assert rel_err(s.within_scatter(), cpu.within_scatter()) <= 1e-5
    # Without the scatter; more classes than labels (empty classes are zeros).
    s = ncml.class_stats(cx, cy, 11, within_scatter=False)
    assert not s.has_scatter and s.num_classes == 11
    np.testing.assert_array_equal(s.counts()[8:], 0)
    assert rel_err(s.means()[:8], cpu.means()) <= 1e-5


@gpu
def test_class_stats_add_merges_gpu_batches():
    x, y = clusters(seed=6, classes=5, per_class=80, dim=12)
    tx, ty, cx, cy = on_gpu(x, y)
    gpu_stats, cpu_stats = ncml.ClassStats(5, 12), ncml.ClassStats(5, 12)
    for a in range(0, len(y), 150):
        gpu_stats.add(cx[a:a + 150], cy[a:a + 150])
        cpu_stats.add(tx[a:a + 150], ty[a:a + 150])
    assert gpu_stats.total_count == len(y)
    assert rel_err(gpu_stats.means(), cpu_stats.means()) <= 1e-5
    assert rel_err(gpu_stats.within_scatter(), cpu_stats.within_scatter()) <= 1e-5
    # A failing batch (label out of range) changes nothing.
    before = gpu_stats.means().copy()
    bad = cy[:10].clone()
    bad[4] = 5
    with pytest.raises(ValueError, match=r"labels has label 5 at row 4, out of range \[0, 5\)"):
        gpu_stats.add(cx[:10], bad)
    assert gpu_stats.total_count == len(y)
    np.testing.assert_array_equal(gpu_stats.means(), before)
    with pytest.raises(ValueError, match="features has 11 columns, expected dim = 12"):
        gpu_stats.add(cx[:, :11], cy)


@gpu
def test_nc1_matches_the_cpu():
    x, y = clusters(seed=7, classes=10, per_class=150, dim=32)
    tx, ty, cx, cy = on_gpu(x, y)
    ref = ncml.nc1_detailed(tx, ty)
    got = ncml.nc1_detailed(cx, cy)
    assert got["rank"] == ref["rank"] and got["num_classes_used"] == ref["num_classes_used"]
    assert got["path"] == "projected"
    assert rel_err(got["value"], ref["value"]) <= 1e-5
    assert rel_err(ncml.nc1(cx, cy), ncml.nc1(tx, ty)) <= 1e-5
    # With the statistics given (checked against the labels on the device).
    stats = ncml.class_stats(tx, ty, within_scatter=False)
    assert rel_err(ncml.nc1(cx, cy, stats), ref["value"]) <= 1e-5
    other = ncml.class_stats(tx[:-1], ty[:-1], 10, within_scatter=False)
    with pytest.raises(ValueError, match="disagree on the number of samples"):
        ncml.nc1(cx, cy, other)
    # float64 CUDA features are converted to float32 on the device.
    assert rel_err(ncml.nc1(cx.double(), cy), ref["value"]) <= 1e-5


# ---------------------------------------------------------------- directions and heads


@gpu
def test_nc_directions_match_the_cpu():
    x, y = clusters(seed=8, classes=7, per_class=60, dim=20)
    tx, ty, cx, cy = on_gpu(x, y)
    for method in ("pc1", "mean", "centered_mean"):
        got = ncml.nc_directions(cx, cy, method)
        assert_cuda_tensor(got, cx, torch.float32)
        assert got.shape == (7, 20)
        assert np.abs(host(got) - host(ncml.nc_directions(tx, ty, method))).max() <= 1e-5
    # The features' dtype, as on the CPU (computed in float32).
    got = ncml.nc_directions(cx.double(), cy)
    assert_cuda_tensor(got, cx, torch.float64)
    assert np.abs(host(got) - host(ncml.nc_directions(tx, ty))).max() <= 1e-5


@gpu
def test_init_head_matches_the_cpu():
    x, y = clusters(seed=9, classes=6, per_class=50, dim=16)
    tx, ty, cx, cy = on_gpu(x, y)
    for method in ("nc_pc1", "class_mean", "centered_mean", "aligned_etf"):
        got = ncml.init_head(cx, cy, method, scale=2.0)
        assert_cuda_tensor(got, cx, torch.float32)
        ref = host(ncml.init_head(tx, ty, method, scale=2.0))
        assert np.abs(host(got) - ref).max() <= (1e-4 if method == "aligned_etf" else 2e-5), method
    for method in ("simplex_etf", "kaiming_normal", "xavier_uniform"):
        got = ncml.init_head(cx, cy, method, seed=3)
        assert_cuda_tensor(got, cx, torch.float32)
        np.testing.assert_array_equal(host(got), host(ncml.init_head(tx, ty, method, seed=3)))
    # More classes than labels: the data-free methods need no sample per class.
    assert ncml.init_head(cx, cy, "kaiming_normal", num_classes=9).shape == (9, 16)
    with pytest.raises(ValueError, match="have no samples"):
        ncml.init_head(cx, cy, num_classes=9)


# ---------------------------------------------------------------- retrieval


@gpu
def test_knn_equals_the_cpu_on_exact_scores():
    x, _ = sign_rows()
    tx = torch.from_numpy(x)
    cx = tx.cuda()
    for similarity in ("cosine", "inner_product", "neg_squared_l2"):
        for exclude_self in (False, True):
            for k in (1, 8, 100):
                idx, sc = ncml.knn(cx, None, k, similarity=similarity, exclude_self=exclude_self)
                assert_cuda_tensor(idx, cx, torch.int64)
                assert_cuda_tensor(sc, cx, torch.float32)
                ref_idx, ref_sc = ncml.knn(tx, None, k, similarity=similarity, exclude_self=exclude_self)
                np.testing.assert_array_equal(host(idx), ref_idx.numpy())
                np.testing.assert_array_equal(host(sc), ref_sc.numpy())
        # Queries against a gallery.
        idx, sc = ncml.knn(cx[:200], cx[200:], 10, similarity=similarity)
        ref_idx, ref_sc = ncml.knn(tx[:200], tx[200:], 10, similarity=similarity)
        np.testing.assert_array_equal(host(idx), ref_idx.numpy())
        np.testing.assert_array_equal(host(sc), ref_sc.numpy())


@gpu
def test_knn_matches_the_cpu_on_float_data():
    x, _ = clusters(seed=10, classes=9, per_class=70, dim=33)
    tx = torch.from_numpy(x)
    cx = tx.cuda()
    idx, sc = ncml.knn(cx, None, 12, exclude_self=True)
    ref_idx, ref_sc = ncml.knn(tx, None, 12, exclude_self=True)
    got_sc, want_sc = host(sc).astype(np.float64), ref_sc.numpy().astype(np.float64)
    tol = 2e-5 * (1 + np.abs(want_sc))
    assert np.all(np.abs(got_sc - want_sc) <= tol)
    # Neighbours may differ only among scores that close: each one's true score is the CPU's.
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    true = np.take_along_axis(xn @ xn.T, host(idx), axis=1)
    assert np.all(np.abs(true - want_sc) <= tol)
    assert (host(idx) == ref_idx.numpy()).mean() > 0.99


@gpu
def test_evaluate_retrieval_equals_the_cpu_on_exact_scores():
    x, y = sign_rows(n=900, classes=30, seed=4)
    tx, ty, cx, cy = on_gpu(x, y)
    ks = [1, 2, 4, 8, 100]
    for similarity in ("cosine", "inner_product", "neg_squared_l2"):
        for args in ((cx, cy), (cx[:300], cy[:300], cx[300:], cy[300:])):
            got = ncml.evaluate_retrieval(*args, ks=ks, similarity=similarity, per_class=True)
            cpu_args = [a.cpu() for a in args]
            ref = ncml.evaluate_retrieval(*cpu_args, ks=ks, similarity=similarity, per_class=True)
            assert got.keys() == ref.keys()
            for key, want in ref.items():
                have = got[key]
                if isinstance(want, torch.Tensor):
                    assert have.device == cx.device and have.dtype == want.dtype, key
                    np.testing.assert_allclose(host(have), want.numpy(), rtol=0, atol=1e-12, err_msg=key)
                else:
                    np.testing.assert_allclose(have, want, rtol=0, atol=1e-12, err_msg=key)


@gpu
def test_evaluate_retrieval_matches_the_cpu_on_float_data():
    x, y = clusters(seed=11, classes=20, per_class=60, dim=32, spread=1.5)
    tx, ty, cx, cy = on_gpu(x, y)
    got = ncml.evaluate_retrieval(cx, cy, ks=[1, 10, 100])
    ref = ncml.evaluate_retrieval(tx, ty, ks=[1, 10, 100])
    for key in ("recall_at_k", "precision_at_k", "map_at_r", "r_precision", "mrr"):
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=2e-3, err_msg=key)
    assert got["num_queries"] == ref["num_queries"]


@gpu
def test_gpu_path_runs_on_the_current_stream():
    x, y = sign_rows(seed=5)
    tx, ty, cx, cy = on_gpu(x, y)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        idx, _ = ncml.knn(cx, None, 5, exclude_self=True)
        report = ncml.evaluate_retrieval(cx, cy)
        idx = idx.clone()                              # ordered after the search on `stream`
    torch.cuda.current_stream().wait_stream(stream)
    np.testing.assert_array_equal(host(idx), ncml.knn(tx, None, 5, exclude_self=True)[0].numpy())
    assert report["recall_at_k"] == ncml.evaluate_retrieval(tx, ty)["recall_at_k"]


# ---------------------------------------------------------------- no copies


@gpu
def test_features_read_in_place_on_the_device():
    x, y = sign_rows(n=2000, d=64)
    cx, cy = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    for view in (cx, cx[100:900], cx[:, 8:40], cx[::3]):
        assert ncml._data_pointer(view) == view.data_ptr()
    assert ncml._data_pointer(cy, "labels") == cy.data_ptr()
    assert ncml._data_pointer(cy.to(torch.int32), "labels") != 0
    for converted in (cx.T, cx[:, ::2], cx.double()):
        assert ncml._data_pointer(converted) != converted.data_ptr()
    # Nothing of the features' size is allocated through torch for a report (the scratch of
    # nc::cuda comes from the CUDA memory pool; a converted copy would come from torch).
    dx = cx.double()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ncml.evaluate_retrieval(cx, cy)
    ncml.nc1(cx, cy, num_classes=12)
    assert torch.cuda.max_memory_allocated() - base < 4096
    ncml.evaluate_retrieval(dx, cy)
    assert torch.cuda.max_memory_allocated() - base >= cx.numel() * 4   # the float32 copy


# ---------------------------------------------------------------- perturbation


@gpu
def test_perturbation_of_a_cuda_parameter():
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(7, 12, device="cuda"))
    clean = W.detach().clone()
    pert = ncml.Perturbation(sigma=0.1, seed=3)
    cpu_W = host(W).copy()
    with pert.perturb(cpu_W, 5):
        cpu_inside = cpu_W.copy()
    with pert.perturb(W, 5) as inside_W:
        assert inside_W is W
        inside = W.detach().clone()
        # The CPU's float32 noise, to one float ulp (device float64 log/sin/cos may round differently).
        np.testing.assert_allclose(host(inside), cpu_inside, rtol=1e-6, atol=1e-7)
        assert not torch.equal(inside, clean)
        loss = (W * W).sum()
        W.grad = None
        loss.backward()                                # gradient at the perturbed point
    assert torch.equal(W.detach(), clean)              # bitwise
    assert torch.equal(W.grad, 2 * inside)
    # Restored when the block raises; clean() is a tensor on the device.
    with pytest.raises(RuntimeError, match="boom"):
        with pert.perturb(W, 6):
            raise RuntimeError("boom")
    assert torch.equal(W.detach(), clean)
    scope = pert.perturb(W, 7)
    scope.__enter__()
    scope_clean = scope.clean()
    assert scope_clean.device == W.device and torch.equal(scope_clean, clean)
    scope.restore()
    assert torch.equal(W.detach(), clean)
    # A graph built inside and differentiated outside fails (the version counter moved).
    with pert.perturb(W, 8):
        loss = (W * W).sum()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@gpu
def test_perturbation_of_a_column_block_on_the_device():
    base = torch.randn(5, 20, device="cuda")
    clean = base.clone()
    block = base[:, 4:13]                              # rows at stride 20, 9 columns
    pert = ncml.Perturbation(sigma=0.5, seed=1)
    with pert.perturb(block, 2):
        assert torch.equal(base[:, :4], clean[:, :4]) and torch.equal(base[:, 13:], clean[:, 13:])
        cpu = host(clean[:, 4:13]).copy()
        with pert.perturb(cpu, 2):
            np.testing.assert_allclose(host(block), cpu, rtol=1e-6, atol=1e-7)
    assert torch.equal(base, clean)
    with pytest.raises(ValueError, match="contiguous rows"):
        with pert.perturb(base.T, 0):
            pass
    with pytest.raises(ValueError, match="float32"):
        with pert.perturb(base.double(), 0):
            pass


# ---------------------------------------------------------------- errors


@gpu
def test_invalid_input_raises_the_library_message():
    x, y = clusters(seed=12)
    _, _, cx, cy = on_gpu(x, y)
    bad = cx.clone()
    bad[7, 3] = float("nan")
    nan = r"features has a non-finite value nan at row 7, column 3"
    for call in (lambda: ncml.class_stats(bad, cy), lambda: ncml.nc1(bad, cy), lambda: ncml.init_head(bad, cy),
                 lambda: ncml.nc_directions(bad, cy), lambda: ncml.init_head(bad, cy, "kaiming_normal")):
        with pytest.raises(ValueError, match=nan):
            call()
    # The GPU search calls name their inputs queries / query_labels, also for leave-one-out.
    for call in (lambda: ncml.knn(bad, None, 3), lambda: ncml.evaluate_retrieval(bad, cy)):
        with pytest.raises(ValueError, match=r"queries has a non-finite value nan at row 7, column 3"):
            call()
    wrong = cy.clone()
    wrong[11] = 9
    for call in (lambda: ncml.class_stats(cx, wrong, 6), lambda: ncml.nc1(cx, wrong, num_classes=6),
                 lambda: ncml.init_head(cx, wrong, num_classes=6)):
        with pytest.raises(ValueError, match=r"labels has label 9 at row 11, out of range \[0, 6\)"):
            call()
    wrong[11] = -1
    for call in (lambda: ncml.class_stats(cx, wrong), lambda: ncml.evaluate_retrieval(cx, wrong)):
        with pytest.raises(ValueError, match=r"labels has a negative label -1 at row 11"):
            call()
    with pytest.raises(ValueError, match=r"labels has 149 entries, expected 150 \(one per row\)"):
        ncml.nc1(cx, cy[1:])
    with pytest.raises(ValueError, match="labels must hold integer class labels"):
        ncml.nc1(cx, cy.float())
    with pytest.raises(ValueError, match=r"gallery has 9 columns but queries have 10"):
        ncml.knn(cx, cx[:, :9], 2)
    with pytest.raises(ValueError, match="k must be positive"):
        ncml.knn(cx, None, 0)


@gpu
def test_mixed_devices_name_both():
    x, y = clusters(seed=13)
    tx, ty, cx, cy = on_gpu(x, y)
    with pytest.raises(ValueError, match=r"labels is on cpu but features is on cuda:\d"):
        ncml.nc1(cx, ty)
    with pytest.raises(ValueError, match=r"features is on cpu but labels is on cuda:\d"):
        ncml.class_stats(tx, cy)
    with pytest.raises(ValueError, match=r"labels is on the CPU \(a numpy.ndarray\) but features is on cuda:\d"):
        ncml.evaluate_retrieval(cx, y)
    with pytest.raises(ValueError, match=r"gallery is on cpu but queries is on cuda:\d"):
        ncml.knn(cx, tx, 1)
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match=r"labels is on cuda:1 but features is on cuda:0"):
            ncml.nc1(cx.to("cuda:0"), cy.to("cuda:1"))


@gpu
def test_second_device_runs_there():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x, y = clusters(seed=14)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    cx, cy = tx.to("cuda:1"), ty.to("cuda:1")
    before = torch.cuda.current_device()
    dirs = ncml.nc_directions(cx, cy)
    assert dirs.device == cx.device and torch.cuda.current_device() == before
    assert np.abs(host(dirs) - host(ncml.nc_directions(tx, ty))).max() <= 1e-5


# ---------------------------------------------------------------- routing without a device


class _FakeCuda(torch.Tensor):
    """A CPU tensor that reports a CUDA device: exercises the routing without a GPU."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def _fake_cuda(t):
    return torch.Tensor._make_subclass(_FakeCuda, t)


@cuda_build
def test_build_reports_cuda():
    assert ncml.with_cuda is True


@cuda_build
def test_routing_errors_before_any_device_work():
    x = _fake_cuda(torch.zeros(6, 3))
    y = torch.zeros(6, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"labels is on cpu but features is on cuda:0"):
        ncml.evaluate_retrieval(x, y)
    with pytest.raises(ValueError, match=r"labels is on the CPU \(a numpy.ndarray\) but features is on cuda:0"):
        ncml.init_head(x, y.numpy())
    # Calls without a GPU path name themselves.
    stats = ncml.class_stats(np.eye(3, dtype=np.float32), np.arange(3))
    with pytest.raises(ValueError, match=r"features is a CUDA tensor \(cuda:0\) but ncml.nc4 has no GPU path; "
                                         r"pass features.cpu\(\)"):
        ncml.nc4(_fake_cuda(torch.eye(3)), torch.arange(3), stats, np.eye(3))
    with pytest.raises(ValueError, match=r"W is a CUDA tensor \(cuda:0\) but ncml.nc_metrics has no GPU path"):
        ncml.nc_metrics(stats, _fake_cuda(torch.eye(3)))
    with pytest.raises(ValueError, match=r"ncml.DriftTracker has no GPU path"):
        ncml.DriftTracker(_fake_cuda(torch.eye(3)))
    with pytest.raises(ValueError, match=r"ncml.proxy_anchor_loss has no GPU path"):
        ncml.proxy_anchor_loss(_fake_cuda(torch.eye(3)), torch.arange(3), np.eye(3))
    if not torch.cuda.is_available():
        fy = _fake_cuda(torch.zeros(6, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"features is a CUDA tensor \(cuda:0\) but torch.cuda.is_available\(\) "
                                             r"is False; pass features.cpu\(\)"):
            ncml.nc1(x, fy)
        with pytest.raises(ValueError, match=r"W is a CUDA tensor \(cuda:0\) but torch.cuda.is_available\(\)"):
            with ncml.Perturbation(sigma=1.0).perturb(_fake_cuda(torch.zeros(2, 3)), 0):
                pass


@pytest.mark.skipif(ncml.with_cuda or not torch.cuda.is_available(),
                    reason="needs a CUDA device and an ncml built without CUDA")
def test_cuda_tensor_without_cuda_in_the_build():
    x = torch.zeros(4, 3, device="cuda")
    y = torch.zeros(4, dtype=torch.int64, device="cuda")
    with pytest.raises(ValueError, match=r"features is a CUDA tensor \(cuda:\d\) but this ncml module was built "
                                         r"without CUDA; pass features.cpu\(\)"):
        ncml.evaluate_retrieval(x, y)
    with pytest.raises(ValueError, match=r"W is a CUDA tensor \(cuda:\d\) but this ncml module was built without CUDA"):
        with ncml.Perturbation(sigma=1.0).perturb(x, 0):
            pass
