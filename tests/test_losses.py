"""Losses: values and gradients against torch.nn.functional and central differences (float64)."""
import numpy as np
import pytest
from rnnfast.testing import check_gradients

from rnnfast import losses


def torch_loss_and_grad(torch, fn, pred, *args, **kwargs):
    """torch's loss value and its gradient with respect to ``pred`` (a NumPy array)."""
    t = torch.from_numpy(pred.copy()).requires_grad_()
    out = fn(t, *args, **kwargs)
    out.backward()
    return out.item(), t.grad.numpy()


def torch_cross_entropy(torch, t, targets, ignore_index, reduction):
    """torch's cross-entropy on (..., V) logits (it wants the class axis second)."""
    V = t.shape[-1]
    return torch.nn.functional.cross_entropy(
        t.reshape(-1, V), torch.from_numpy(targets.reshape(-1).astype(np.int64)),
        ignore_index=-100 if ignore_index is None else ignore_index, reduction=reduction,
    )


# -- cross-entropy -----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 4)])
@pytest.mark.parametrize("ignore_index", [None, -100, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_torch(shape, ignore_index, reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    V = 5
    logits = rng.standard_normal(shape + (V,)) * 3
    targets = rng.integers(0, V, shape)
    if ignore_index == -100:
        targets.reshape(-1)[::3] = -100
    loss, dlogits = losses.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    t_loss, t_grad = torch_loss_and_grad(
        torch, lambda t: torch_cross_entropy(torch, t, targets, ignore_index, reduction), logits
    )
    if np.isnan(t_loss):  # every target ignored: torch gives NaN, rnnfast 0 with no gradient
        assert loss == 0.0 and not dlogits.any()
        return
    assert loss == pytest.approx(t_loss, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(dlogits, t_grad, rtol=1e-10, atol=1e-12)


def test_cross_entropy_float32_matches_torch_and_keeps_dtype():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 2, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (6, 2))
    loss, dlogits = losses.cross_entropy(logits, targets)
    t_loss, t_grad = torch_loss_and_grad(
        torch, lambda t: torch.nn.functional.cross_entropy(t.reshape(-1, 11), torch.from_numpy(targets.reshape(-1))),
        logits,
    )
    assert dlogits.dtype == np.float32 and isinstance(loss, float)
    assert loss == pytest.approx(t_loss, rel=1e-5)
    np.testing.assert_allclose(dlogits, t_grad.reshape(dlogits.shape), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("ignore_index", [None, -100, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_compiled_cross_entropy_matches_torch_on_a_language_model_batch(dtype, tol, ignore_index, reduction):
    """The compiled CPU pass on (T, B, V) logits as CharRNN makes them, given as a strided view,
    with int32 targets: value and gradient as torch's, the gradient in the logits' dtype."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    T, B, V = 16, 8, 65
    logits = (rng.standard_normal((B, T, V)) * 4).astype(dtype).transpose(1, 0, 2)
    targets = rng.integers(0, V, (T, B)).astype(np.int32)
    if ignore_index == -100:
        targets[::4] = -100
    loss, dlogits = losses.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    t_loss, t_grad = torch_loss_and_grad(
        torch,
        lambda t: torch_cross_entropy(torch, t, targets, ignore_index, reduction),
        np.ascontiguousarray(logits),
    )
    assert isinstance(loss, float) and dlogits.dtype == dtype and dlogits.shape == (T, B, V)
    assert loss == pytest.approx(t_loss, rel=tol)
    np.testing.assert_allclose(dlogits, t_grad, rtol=tol, atol=tol * 1e-2)
    if ignore_index is not None:
        assert not dlogits[targets == ignore_index].any()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradient_matches_central_differences(reduction):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 2, 4))
    targets = np.array([[0, 3], [1, -1], [2, 2]])
    _, dlogits = losses.cross_entropy(logits, targets, ignore_index=-1, reduction=reduction)
    check_gradients(lambda: losses.cross_entropy(logits, targets, ignore_index=-1, reduction=reduction)[0],
                    {"logits": logits}, {"logits": dlogits}, rtol=1e-6, atol=1e-9)
    assert not dlogits[1, 1].any()  # the ignored position gets no gradient


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4 + 1.0]])
    loss, dlogits = losses.cross_entropy(logits, np.array([1, 2]))
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    # sample 1 pays 1e4 nats, sample 2 pays log(2 e^-1 + 1)
    assert loss == pytest.approx((1e4 + np.log1p(2 * np.exp(-1.0))) / 2)


def test_cross_entropy_of_uniform_logits_is_log_v():
    loss, dlogits = losses.cross_entropy(np.zeros((4, 65)), np.arange(4))
    assert loss == pytest.approx(np.log(65))
    np.testing.assert_allclose(dlogits.sum(axis=-1), 0, atol=1e-15)  # softmax minus one-hot sums to 0


def test_cross_entropy_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"logits have shape \(4, 3, 5\) and targets \(3, 4\)"):
        losses.cross_entropy(np.zeros((4, 3, 5)), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="integer class targets, got dtype float64"):
        losses.cross_entropy(np.zeros((2, 5)), np.zeros(2))
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\).*got values in \[0, 5\]"):
        losses.cross_entropy(np.zeros((2, 5)), np.array([0, 5]))
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        losses.cross_entropy(np.zeros((2, 5)), np.array([0, 1]), reduction="avg")


def test_softmax_matches_torch_and_survives_huge_logits():
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(3).standard_normal((3, 4, 6)) * 50
    for axis in (-1, 1):
        np.testing.assert_allclose(losses.softmax(logits, axis), torch.softmax(torch.from_numpy(logits), axis).numpy(),
                                   rtol=1e-12, atol=1e-300)
    p = losses.softmax(np.array([1e5, 1e5, -1e5]))
    np.testing.assert_allclose(p, [0.5, 0.5, 0.0])


# -- MSE and BCE -------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_torch_and_central_differences(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    pred, target = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    loss, dpred = losses.mse(pred, target, reduction)
    t_loss, t_grad = torch_loss_and_grad(
        torch, lambda t: torch.nn.functional.mse_loss(t, torch.from_numpy(target), reduction=reduction), pred
    )
    assert loss == pytest.approx(t_loss, rel=1e-12)
    np.testing.assert_allclose(dpred, t_grad, rtol=1e-12)
    check_gradients(lambda: losses.mse(pred, target, reduction)[0], {"pred": pred}, {"pred": dpred},
                    rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_with_logits_matches_torch_and_central_differences(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 6)) * 4
    targets = rng.uniform(0, 1, (4, 6))
    targets[0] = (targets[0] > 0.5).astype(float)  # hard and soft labels alike
    loss, dlogits = losses.bce_with_logits(logits, targets, reduction)
    t_loss, t_grad = torch_loss_and_grad(
        torch,
        lambda t: torch.nn.functional.binary_cross_entropy_with_logits(t, torch.from_numpy(targets), reduction=reduction),
        logits,
    )
    assert loss == pytest.approx(t_loss, rel=1e-12)
    np.testing.assert_allclose(dlogits, t_grad, rtol=1e-10, atol=1e-15)
    check_gradients(lambda: losses.bce_with_logits(logits, targets, reduction)[0], {"logits": logits},
                    {"logits": dlogits}, rtol=1e-6, atol=1e-9)


def test_bce_with_logits_is_stable_for_huge_logits():
    logits = np.array([1000.0, -1000.0, 1000.0, -1000.0], np.float32)
    targets = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    loss, dlogits = losses.bce_with_logits(logits, targets, "sum")
    assert loss == pytest.approx(2000.0)  # two confident right answers cost 0, two wrong ones 1000 each
    np.testing.assert_allclose(dlogits, [0.0, 0.0, 1.0, -1.0])
    assert dlogits.dtype == np.float32


@pytest.mark.parametrize("fn", [losses.mse, losses.bce_with_logits])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError, match=r"shape \(3, 2\) but .* shape \(2, 3\)"):
        fn(np.zeros((3, 2)), np.zeros((2, 3)))


# -- GPU: CuPy arrays give the NumPy results --------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_losses_on_gpu_match_cpu(dtype, tol):
    import cupy as cp

    rng = np.random.default_rng(6)
    logits, targets = rng.standard_normal((4, 3, 7)).astype(dtype), rng.integers(0, 7, (4, 3))
    targets[0, 0] = -100
    x, y = rng.standard_normal((5, 2)).astype(dtype), rng.uniform(0, 1, (5, 2)).astype(dtype)
    cases = [
        (losses.cross_entropy, (logits, targets), {"ignore_index": -100}),
        (losses.mse, (x, y), {}),
        (losses.bce_with_logits, (x, y), {"reduction": "sum"}),
    ]
    for fn, args, kwargs in cases:
        loss_cpu, grad_cpu = fn(*args, **kwargs)
        loss_gpu, grad_gpu = fn(*(cp.asarray(a) for a in args), **kwargs)
        assert isinstance(grad_gpu, cp.ndarray) and grad_gpu.dtype == dtype
        assert loss_gpu == pytest.approx(loss_cpu, rel=tol)
        np.testing.assert_allclose(cp.asnumpy(grad_gpu), grad_cpu, rtol=tol, atol=tol)
    np.testing.assert_allclose(cp.asnumpy(losses.softmax(cp.asarray(logits))), losses.softmax(logits), rtol=tol)
