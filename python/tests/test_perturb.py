"""Perturbation as a context manager: in-place noise, exact restore, gradient at the
perturbed point (autograd), layouts and errors; the two losses against torch autograd."""
import numpy as np
import pytest

import ncml


def test_numpy_perturbed_inside_restored_after():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(5, 8)).astype(np.float32)
    clean = W.copy()
    pert = ncml.Perturbation(sigma=0.1, seed=4)
    noise = pert.noise(5, 8, 3)
    assert noise.dtype == np.float32 and noise.shape == (5, 8)
    with pert.perturb(W, 3) as inside:
        assert inside is W
        np.testing.assert_array_equal(W, clean + noise)        # bitwise: the same float sum
    np.testing.assert_array_equal(W, clean)
    assert W.tobytes() == clean.tobytes()
    # The noise is a function of (seed, step): other steps and seeds differ, the same repeats.
    np.testing.assert_array_equal(pert.noise(5, 8, 3), noise)
    assert not np.array_equal(pert.noise(5, 8, 4), noise)
    assert not np.array_equal(ncml.Perturbation(sigma=0.1, seed=5).noise(5, 8, 3), noise)
    assert noise.std() == pytest.approx(0.1, rel=0.5)


def test_restored_when_the_block_raises():
    W = np.arange(12, dtype=np.float64).reshape(3, 4)
    clean = W.copy()
    pert = ncml.Perturbation(sigma=1.0)
    with pytest.raises(RuntimeError, match="boom"):
        with pert.perturb(W, 0):
            assert not np.array_equal(W, clean)
            raise RuntimeError("boom")
    np.testing.assert_array_equal(W, clean)


def test_scope_object_api():
    W = np.ones((2, 3), np.float32)
    scope = ncml.Perturbation(sigma=0.5, seed=1).perturb(W, 2)
    assert not scope.active and scope.step == 2 and scope.W is W
    scope.__enter__()
    assert scope.active
    np.testing.assert_array_equal(scope.clean(), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="already active"):
        scope.__enter__()
    scope.restore()
    scope.restore()                                   # idempotent
    assert not scope.active
    np.testing.assert_array_equal(W, 1.0)
    with pytest.raises(ValueError, match="not active"):
        scope.clean()


def test_nested_scopes_unwind_in_order():
    W = np.zeros((3, 3), np.float32)
    p = ncml.Perturbation(sigma=1.0, seed=9)
    with p.perturb(W, 0):
        once = W.copy()
        with p.perturb(W, 1):
            np.testing.assert_array_equal(W, once + p.noise(3, 3, 1))
        np.testing.assert_array_equal(W, once)
    np.testing.assert_array_equal(W, 0.0)


@pytest.mark.parametrize("layout", ["row_slice", "column_slice", "transposed", "fortran"])
def test_strided_layouts_in_place(layout):
    base = np.random.default_rng(1).normal(size=(8, 10))
    W = {"row_slice": base[::2], "column_slice": base[:, 2:7], "transposed": base.T,
         "fortran": np.asfortranarray(base)}[layout]
    base_clean = base.copy()
    clean = W.copy()
    p = ncml.Perturbation(sigma=0.01, seed=2)
    with p.perturb(W, 5):
        np.testing.assert_array_equal(W, clean + p.noise(*W.shape, 5, dtype=np.float64))
        if layout != "fortran":
            # Only W's own elements of the shared buffer changed.
            changed = base != base_clean
            assert changed.sum() == W.size
    np.testing.assert_array_equal(W, clean)
    if layout != "fortran":
        np.testing.assert_array_equal(base, base_clean)


def test_schedules():
    p = ncml.Perturbation(sigma=0.2, schedule="linear", total_steps=10)
    assert p.sigma_at(0) == pytest.approx(0.2) and p.sigma_at(5) == pytest.approx(0.1) and p.sigma_at(20) == 0
    c = ncml.Perturbation(sigma=0.2, schedule="cosine", total_steps=10)
    assert c.sigma_at(5) == pytest.approx(0.1) and c.sigma_at(10) == pytest.approx(0.0, abs=1e-15)
    assert (c.schedule, c.total_steps, c.sigma) == ("cosine", 10, 0.2)
    assert "sigma=0.2" in repr(c)
    W = np.ones((2, 2), np.float32)
    with ncml.Perturbation(sigma=0.0).perturb(W, 0):
        np.testing.assert_array_equal(W, 1.0)


def test_perturbation_errors():
    with pytest.raises(ValueError, match="sigma must be finite and non-negative, got -1"):
        ncml.Perturbation(sigma=-1.0)
    with pytest.raises(ValueError, match="total_steps must be positive for a linear or cosine schedule"):
        ncml.Perturbation(sigma=1.0, schedule="linear")
    with pytest.raises(ValueError, match="schedule must be one of"):
        ncml.Perturbation(sigma=1.0, schedule="step")
    p = ncml.Perturbation(sigma=1.0)
    with pytest.raises(ValueError, match="step must be non-negative, got -1"):
        p.perturb(np.zeros((2, 2), np.float32), -1)
    ro = np.zeros((2, 2), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="W is read-only"):
        with p.perturb(ro, 0):
            pass
    with pytest.raises(ValueError, match="W must be float32 or float64 to be perturbed in place, got dtype int64"):
        with p.perturb(np.zeros((2, 2), np.int64), 0):
            pass
    with pytest.raises(ValueError, match="W must be 2-D"):
        with p.perturb(np.zeros(4, np.float32), 0):
            pass
    with pytest.raises(ValueError, match="W must be a NumPy array or a torch tensor"):
        with p.perturb([[1.0, 2.0]], 0):
            pass
    with pytest.raises(ValueError, match="overlapping"):
        with p.perturb(np.lib.stride_tricks.as_strided(np.zeros(4, np.float32), (3, 2), (4, 4)), 0):
            pass


def proxy_anchor_torch(torch, x, y, P, alpha=32.0, delta=0.1):
    """Proxy-Anchor as in the authors' reference code (the loss of examples/finetune.py)."""
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(P, dim=1).T
    pos = torch.nn.functional.one_hot(y, P.shape[0]).to(cos.dtype)
    neg = 1 - pos
    pos_sum = (torch.exp(-alpha * (cos - delta)) * pos).sum(0)
    neg_sum = (torch.exp(alpha * (cos + delta)) * neg).sum(0)
    with_pos = (pos.sum(0) > 0).sum()
    return torch.log1p(pos_sum).sum() / with_pos + torch.log1p(neg_sum).sum() / P.shape[0]


def test_torch_parameter_gradient_at_the_perturbed_point(torch):
    torch.manual_seed(0)
    C, D, B = 7, 16, 32
    P = torch.nn.Parameter(torch.randn(C, D))
    x = torch.randn(B, D)
    y = torch.randint(0, C, (B,))
    clean = P.detach().clone()
    pert = ncml.Perturbation(sigma=0.05, seed=11)
    step = 4
    with pert.perturb(P, step) as inside:
        assert inside is P
        loss = proxy_anchor_torch(torch, x, y, P)
        loss.backward()
        grad_in_scope = P.grad.clone()
        perturbed = P.detach().clone()
    assert torch.equal(P.detach(), clean)                      # exactly the clean values again
    noise = torch.from_numpy(pert.noise(C, D, step))
    assert torch.equal(perturbed, clean + noise)
    # The same gradient computed directly at W + noise.
    Q = (clean + noise).requires_grad_(True)
    proxy_anchor_torch(torch, x, y, Q).backward()
    torch.testing.assert_close(grad_in_scope, Q.grad, rtol=0, atol=0)
    # ... and it differs from the gradient at the clean point.
    R = clean.clone().requires_grad_(True)
    proxy_anchor_torch(torch, x, y, R).backward()
    assert not torch.allclose(grad_in_scope, R.grad, atol=1e-7)


def test_torch_optimizer_updates_the_clean_weights(torch):
    torch.manual_seed(1)
    P = torch.nn.Parameter(torch.randn(4, 6))
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    opt = torch.optim.SGD([P], lr=0.1)
    pert = ncml.Perturbation(sigma=0.1)
    clean = P.detach().clone()
    with pert.perturb(P, 0):
        opt.zero_grad()
        proxy_anchor_torch(torch, x, y, P).backward()
    grad = P.grad.clone()
    opt.step()
    torch.testing.assert_close(P.detach(), clean - 0.1 * grad, rtol=0, atol=1e-7)


def test_backward_after_the_block_is_an_error(torch):
    P = torch.nn.Parameter(torch.randn(3, 4))
    x = torch.randn(5, 4)
    with ncml.Perturbation(sigma=0.1).perturb(P, 0):
        loss = (x @ torch.nn.functional.normalize(P, dim=1).T).exp().sum()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_torch_views_and_dtypes(torch):
    base = torch.randn(6, 9, dtype=torch.float64)
    W = base[:, 1:8].t()          # non-contiguous view, perturbed in its own storage
    clean = W.clone()
    p = ncml.Perturbation(sigma=0.3, seed=3)
    with p.perturb(W, 2):
        assert torch.equal(W, clean + torch.from_numpy(p.noise(7, 6, 2, dtype="float64")))
    assert torch.equal(W, clean)
    with pytest.raises(ValueError, match="W must be float32 or float64 to be perturbed in place, got torch.float16"):
        with p.perturb(torch.zeros(2, 2, dtype=torch.float16), 0):
            pass


def test_losses_match_torch_autograd(torch):
    torch.manual_seed(2)
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (12,))
    P = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    xg = x.clone().requires_grad_(True)
    loss = proxy_anchor_torch(torch, xg, y, P)
    loss.backward()
    value, gx, gp = ncml.proxy_anchor_loss(x, y, P)
    assert isinstance(gx, torch.Tensor) and gx.dtype == torch.float64
    assert value == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(gx, xg.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gp, P.grad, rtol=1e-10, atol=1e-12)

    W = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    xg = x.clone().requires_grad_(True)
    ns = torch.nn.functional.cross_entropy(
        torch.nn.functional.normalize(xg, dim=1) @ torch.nn.functional.normalize(W, dim=1).T / 0.05, y)
    ns.backward()
    value, gx, gw = ncml.norm_softmax_loss(x, y, W)
    assert value == pytest.approx(ns.item(), rel=1e-12)
    torch.testing.assert_close(gx, xg.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, W.grad, rtol=1e-10, atol=1e-12)
