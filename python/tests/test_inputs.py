"""How inputs reach the C++ side: in place (no copy) where dtype and layout allow, converted
otherwise; results in the kind of the input; invalid input raises ValueError."""
import gc
import threading
import time
import tracemalloc

import numpy as np
import pytest

import ncml
import numpy_reference as ref


def address(a):
    return a.__array_interface__["data"][0]


# ---------------------------------------------------------------- NumPy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_features_read_in_place(dtype):
    x = np.zeros((10, 6), dtype)
    assert ncml._data_pointer(x) == address(x)
    rows = x[2:8]                          # row block
    assert ncml._data_pointer(rows) == address(rows)
    cols = x[:, 1:5]                       # column slice: rows at a stride of 6
    assert ncml._data_pointer(cols) == address(cols)
    every_other = x[::2]                   # rows at a stride of 12
    assert ncml._data_pointer(every_other) == address(every_other)


def test_numpy_features_converted_when_needed():
    x = np.zeros((10, 6), np.float32)
    assert ncml._data_pointer(x.T) != address(x.T)                          # column-major rows
    assert ncml._data_pointer(x[:, ::2]) != address(x[:, ::2])              # strided columns
    assert ncml._data_pointer(x.astype(np.float16)) != 0                    # converted to float32
    assert ncml._data_pointer(np.zeros((3, 4), np.int64)) != 0              # converted to float64
    assert ncml._data_pointer(x.astype(">f4")) != address(x)                # byte-swapped


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_labels_read_in_place(dtype):
    y = np.arange(10, dtype=dtype)
    assert ncml._data_pointer(y, "labels") == address(y)
    assert ncml._data_pointer(y[::2], "labels") != address(y[::2])          # strided: copied
    assert ncml._data_pointer(y.astype(np.uint8), "labels") != 0


def test_layouts_and_dtypes_give_the_same_results(data64):
    x, y = data64
    base = ncml.evaluate_retrieval(x, y)
    wide = np.zeros((150, 14))
    wide[:, 2:12] = x
    variants = [
        (np.asfortranarray(x), y),                                  # column-major: converted
        (wide[:, 2:12], y),                                         # row-strided: in place
        (x.astype(np.float32).astype(np.float64), y),
        (x, y.astype(np.int32)),
        (x, y.astype(np.uint8)),
        (x, np.repeat(y, 2)[::2]),                                  # strided labels
        (x.tolist(), y.tolist()),                                   # Python lists
    ]
    for xv, yv in variants:
        rep = ncml.evaluate_retrieval(xv, yv)
        assert rep["recall_at_k"] == base["recall_at_k"]
        assert rep["map_at_r"] == base["map_at_r"]
    s = ncml.class_stats(wide[:, 2:12], y.astype(np.int32))
    np.testing.assert_array_equal(s.means(), ncml.class_stats(x, y).means())
    np.testing.assert_array_equal(ncml.init_head(np.asfortranarray(x), y), ncml.init_head(x, y))


def test_integer_features_are_converted_to_float64():
    x = np.array([[1, 0], [2, 0], [0, 1], [0, 3]], np.int16)
    y = np.array([0, 0, 1, 1])
    v = ncml.nc_directions(x, y)
    assert v.dtype == np.float64
    np.testing.assert_allclose(v, [[1, 0], [0, 1]], atol=1e-12)


def test_float16_features_are_converted_to_float32(data32):
    x, y = data32
    v = ncml.nc_directions(x.astype(np.float16), y)
    assert v.dtype == np.float32


def test_input_errors(data32):
    x, y = data32
    with pytest.raises(ValueError, match=r"ncml: features must be 2-D \[rows, dim\], got shape \(150,\)"):
        ncml.init_head(x[:, 0], y)
    with pytest.raises(ValueError, match=r"labels must be 1-D \[rows\], got shape \(150, 1\) \(flatten"):
        ncml.init_head(x, y[:, None])
    with pytest.raises(ValueError, match="labels must hold integer class labels, got dtype float32"):
        ncml.init_head(x, y.astype(np.float32))
    with pytest.raises(ValueError, match="features must hold real numbers .* got dtype complex64"):
        ncml.init_head(x.astype(np.complex64), y)
    with pytest.raises(ValueError, match="features is None"):
        ncml.init_head(None, y)
    with pytest.raises(ValueError, match="features must hold real numbers"):
        ncml.init_head("abc", y)
    with pytest.raises(ValueError, match=r"features is empty \(0 rows\)"):
        ncml.class_stats(x[:0], y[:0], num_classes=3)
    inf = x.copy()
    inf[3, 1] = np.inf
    with pytest.raises(ValueError, match="features has a non-finite value inf at row 3, column 1") as e:
        ncml.evaluate_retrieval(inf, y)
    assert str(e.value).startswith("ncml: ")       # the nc::error message, verbatim
    assert "retrieval.hpp" in str(e.value) or "check.hpp" in str(e.value)


def test_numpy_in_numpy_out(data32):
    x, y = data32
    for out in (ncml.init_head(x, y), ncml.nc_directions(x, y), *ncml.knn(x, x, 2)):
        assert isinstance(out, np.ndarray)


def test_results_own_their_memory(data32):
    x, y = data32
    w = ncml.init_head(x, y)
    expected = w.copy()
    del x
    gc.collect()
    np.testing.assert_array_equal(w, expected)
    assert w.flags.owndata is False and w.base is not None   # held by a capsule, not a copy
    w[0, 0] = 5.0                                            # writable


def test_computation_releases_the_gil():
    x, y = ref.clusters(seed=3, classes=40, per_class=100, dim=128)
    duration = []

    def work():
        t = time.perf_counter()
        ncml.evaluate_retrieval(x, y, threads=1)
        duration.append(time.perf_counter() - t)

    worker = threading.Thread(target=work)
    ticks = [time.perf_counter()]
    worker.start()
    while worker.is_alive():           # runs only while the worker does not hold the GIL
        ticks.append(time.perf_counter())
    worker.join()
    if duration[0] < 0.05:
        pytest.skip("the call was too fast to observe")
    assert np.diff(ticks).max() < 0.5 * duration[0]


def test_version_and_build_info():
    assert isinstance(ncml.__version__, str) and ncml.__version__.count(".") == 2
    assert isinstance(ncml.with_cuda, bool)
    assert isinstance(ncml.with_openmp, bool)


# ---------------------------------------------------------------- torch


def test_torch_in_torch_out(torch, data32):
    x, y = data32
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    w = ncml.init_head(tx, ty)
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.shape == (6, 10)
    np.testing.assert_array_equal(w.numpy(), ncml.init_head(x, y))
    v = ncml.nc_directions(tx.double(), ty)
    assert isinstance(v, torch.Tensor) and v.dtype == torch.float64
    idx, sc = ncml.knn(tx, tx, 3, exclude_self=True)
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64 and sc.dtype == torch.float32
    np.testing.assert_array_equal(idx.numpy(), ncml.knn(x, x, 3, exclude_self=True)[0])
    rep = ncml.evaluate_retrieval(tx, ty, per_class=True)
    assert isinstance(rep["class_recall_at_k"], torch.Tensor)
    s = ncml.class_stats(tx, ty)                       # accumulators return NumPy arrays
    assert isinstance(s.means(), np.ndarray)
    _, gx, gw = ncml.proxy_anchor_loss(tx[:20], ty[:20], w)
    assert isinstance(gx, torch.Tensor) and isinstance(gw, torch.Tensor)


def test_torch_features_read_in_place(torch):
    t = torch.randn(40, 8)
    assert ncml._data_pointer(t) == t.data_ptr()
    assert ncml._data_pointer(t.double()) != t.data_ptr()
    d = t.double()
    assert ncml._data_pointer(d) == d.data_ptr()
    rows = t[5:30]
    assert ncml._data_pointer(rows) == rows.data_ptr()
    cols = t[:, 2:6]
    assert ncml._data_pointer(cols) == cols.data_ptr()
    assert ncml._data_pointer(t.t()) != t.data_ptr()                    # transposed: converted
    p = torch.nn.Parameter(torch.randn(4, 3))                           # requires_grad: detached view
    assert ncml._data_pointer(p) == p.data_ptr()
    y = torch.arange(40)
    assert ncml._data_pointer(y, "labels") == y.data_ptr()
    y32 = y.int()
    assert ncml._data_pointer(y32, "labels") == y32.data_ptr()
    assert ncml._data_pointer(y.to(torch.uint8), "labels") != 0


def test_evaluate_retrieval_on_a_torch_tensor_costs_no_copy(torch):
    x, y = ref.clusters(seed=5, classes=20, per_class=100, dim=64)
    t = torch.from_numpy(x)
    ty = torch.from_numpy(y)
    # The address the C++ side reads is the tensor's own.
    assert ncml._data_pointer(t) == t.data_ptr()
    assert ncml._data_pointer(ty, "labels") == ty.data_ptr()
    # Memory accounting: a copy made by the binding is a NumPy allocation, which tracemalloc
    # sees; none of the feature matrix's size happens for the tensor ...
    ncml.evaluate_retrieval(t, ty)                     # warm up (first-call allocations)
    tracemalloc.start()
    rep = ncml.evaluate_retrieval(t, ty)
    _, peak_tensor = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # ... while a layout that needs a conversion shows it (the control).
    fortran = np.asfortranarray(x)
    tracemalloc.start()
    ncml.evaluate_retrieval(fortran, y)
    _, peak_converted = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak_tensor < x.nbytes // 10, peak_tensor
    assert peak_converted >= x.nbytes
    # And the same numbers as the NumPy call (the C++ call on the same memory).
    assert rep == ncml.evaluate_retrieval(x, y)


def test_torch_dtypes_and_layouts(torch, data64):
    x, y = data64
    base = ncml.evaluate_retrieval(x, y)
    t = torch.from_numpy(x)
    for tv, yv in [(t, torch.from_numpy(y)), (t.t().contiguous().t(), torch.from_numpy(y)),
                   (t, torch.from_numpy(y).int()), (t, torch.from_numpy(y).to(torch.int16)),
                   (t.requires_grad_(False), torch.from_numpy(y)[None, :].expand(2, -1)[1])]:
        assert ncml.evaluate_retrieval(tv, yv)["recall_at_k"] == base["recall_at_k"]
    h = ncml.nc_directions(t.half(), torch.from_numpy(y))
    assert h.dtype == torch.float32
    b = ncml.nc_directions(t.bfloat16(), torch.from_numpy(y))
    assert b.dtype == torch.float32


def test_torch_errors(torch, data32):
    x, y = data32
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    with pytest.raises(ValueError, match="labels must hold integer class labels, got torch.float32"):
        ncml.evaluate_retrieval(tx, ty.float())
    with pytest.raises(ValueError, match="features is complex"):
        ncml.evaluate_retrieval(tx.to(torch.complex64), ty)
    with pytest.raises(ValueError, match="features is a tensor on device meta"):
        ncml.evaluate_retrieval(torch.empty(4, 3, device="meta"), ty[:4])
    with pytest.raises(ValueError, match="features is a torch.sparse_coo tensor"):
        ncml.evaluate_retrieval(tx.to_sparse(), ty)
    with pytest.raises(ValueError, match=r"labels has label 9 at row 0, out of range \[0, 6\)"):
        ncml.init_head(tx, torch.cat([torch.tensor([9]), ty[1:]]), num_classes=6)


def test_cuda_tensors_raise_a_clear_error(torch):
    if ncml.with_cuda:
        pytest.skip("this build routes CUDA tensors to the GPU path (test_cuda.py)")
    class FakeCuda(torch.Tensor):
        """A CPU tensor that reports a CUDA device (this build has no CUDA to make a real one)."""

        @property
        def device(self):
            return torch.device("cuda", 0)

    t = torch.Tensor._make_subclass(FakeCuda, torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"features is a CUDA tensor \(cuda:0\) but this ncml module was built "
                                         r"without CUDA; pass features.cpu\(\)"):
        ncml.evaluate_retrieval(t, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="W is a CUDA tensor"):
        with ncml.Perturbation(sigma=1.0).perturb(t, 0):
            pass
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="built without CUDA"):
            ncml.knn(torch.zeros(4, 3, device="cuda"), None, 1)
