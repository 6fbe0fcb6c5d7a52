"""Embedding, Linear and Dropout: forward and backward against central differences (float64) and PyTorch."""
import numpy as np
import pytest

import rnnfast as rf
from rnnfast import testing


# -- Linear ------------------------------------------------------------------------------------
@pytest.mark.parametrize("lead", [(), (1,), (4,), (2, 3), (2, 1, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_match_central_differences(lead, bias):
    rng = np.random.default_rng(0)
    layer = rf.Linear(4, 3, bias=bias, dtype=np.float64, seed=1)
    x = rng.standard_normal(lead + (4,))
    r = rng.standard_normal(lead + (3,))  # loss = sum(r * y), so dy = r

    def loss():
        return float((r * layer(x)).sum())

    layer(x)
    dx = layer.backward(r)
    assert dx.shape == x.shape
    testing.check_gradients(loss, {"x": x, **layer.params}, {"x": dx, **layer.grads}, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_linear_matches_torch(dtype, tol):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    layer = rf.Linear(5, 7, dtype=dtype, seed=3)
    ref = torch.nn.Linear(5, 7).to(torch.float64 if dtype == np.float64 else torch.float32)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x = rng.standard_normal((3, 2, 5)).astype(dtype)
    dy = rng.standard_normal((3, 2, 7)).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_()
    ty = ref(tx)
    ty.backward(torch.from_numpy(dy))

    y = layer(x)
    dx = layer.backward(dy)
    assert y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["weight"], ref.weight.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["bias"], ref.bias.grad.numpy(), rtol=tol, atol=tol)


def test_linear_init_follows_pytorch_bounds_and_seed():
    layer = rf.Linear(100, 50, seed=7)
    bound = 1 / np.sqrt(100)
    w, b = layer.params["weight"], layer.params["bias"]
    assert w.shape == (50, 100) and b.shape == (50,) and w.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound  # the std of U(-a, a) is a / sqrt(3)
    np.testing.assert_array_equal(w, rf.Linear(100, 50, seed=7).params["weight"])
    assert not np.array_equal(w, rf.Linear(100, 50, seed=8).params["weight"])


def test_linear_grads_accumulate_until_zeroed():
    layer = rf.Linear(3, 2, dtype=np.float64, seed=0)
    x, dy = np.ones((4, 3)), np.ones((4, 2))
    layer(x)
    layer.backward(dy)
    once = layer.grads["weight"].copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads["weight"], 2 * once)
    layer.zero_grad()
    assert not layer.grads["weight"].any() and not layer.grads["bias"].any()


def test_linear_bad_input_is_a_clear_error():
    layer = rf.Linear(4, 3)
    with pytest.raises(ValueError, match=r"expects input \(\.\.\., 4\), got shape \(2, 5\)"):
        layer(np.zeros((2, 5), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        rf.Linear(4, 3).backward(np.zeros((2, 3), np.float32))
    layer(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"dy has shape \(2, 4\), expected \(2, 3\)"):
        layer.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="in_features >= 1"):
        rf.Linear(0, 3)


# -- Embedding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ids_shape", [(), (1,), (6,), (3, 4)])
def test_embedding_forward_is_lookup_and_backward_matches_central_differences(ids_shape):
    rng = np.random.default_rng(4)
    emb = rf.Embedding(5, 3, dtype=np.float64, seed=0)
    ids = rng.integers(0, 5, ids_shape)
    r = rng.standard_normal(ids_shape + (3,))
    y = emb(ids)
    assert y.shape == ids_shape + (3,)
    np.testing.assert_array_equal(y, emb.params["weight"][ids])
    assert emb.backward(r) is None

    def loss():
        return float((r * emb(ids)).sum())

    testing.check_gradients(loss, emb.params, emb.grads, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_matches_torch_with_repeated_ids(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    emb = rf.Embedding(6, 4, dtype=dtype, seed=1)
    ref = torch.nn.Embedding(6, 4).to(torch.float64 if dtype == np.float64 else torch.float32)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in emb.state_dict().items()})
    ids = np.array([[0, 1, 1], [5, 1, 0]])  # repeats must add up, not overwrite
    dy = rng.standard_normal((2, 3, 4)).astype(dtype)
    ty = ref(torch.from_numpy(ids))
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(emb(ids), ty.detach().numpy())
    emb.backward(dy)
    np.testing.assert_allclose(emb.grads["weight"], ref.weight.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ids_dtype", [np.int64, np.int32, np.uint8])
def test_embedding_backward_sums_repeated_ids_exactly_as_add_at(dtype, ids_dtype):
    """Thousands of repeats per id: the compiled scatter-add adds in id order, as np.add.at does,
    so even float32 sums come out bit for bit the same; gradients already there are added to, and
    rows never looked up keep theirs."""
    rng = np.random.default_rng(6)
    emb = rf.Embedding(7, 33, dtype=dtype, seed=2)
    ids = rng.integers(0, 3, (128, 40)).astype(ids_dtype)  # 3 of 7 ids, ~1700 repeats each
    dy = (rng.standard_normal((128, 40, 33)) * 10).astype(dtype)
    expected = rng.standard_normal((7, 33)).astype(dtype)
    emb.grads["weight"][...] = expected
    np.add.at(expected, ids.reshape(-1), dy.reshape(-1, 33))
    emb(ids)
    emb.backward(dy)
    np.testing.assert_array_equal(emb.grads["weight"], expected)
    emb.zero_grad()
    emb(ids[::2, ::3])  # a strided batch of ids and a non-contiguous dy
    emb.backward(dy[::2, ::3])
    expected = np.zeros((7, 33), dtype)
    np.add.at(expected, ids[::2, ::3].reshape(-1), dy[::2, ::3].reshape(-1, 33))
    np.testing.assert_array_equal(emb.grads["weight"], expected)


def test_embedding_init_is_standard_normal_and_seeded():
    emb = rf.Embedding(200, 100, seed=3)
    w = emb.params["weight"]
    assert w.shape == (200, 100) and w.dtype == np.float32
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1) < 0.02
    np.testing.assert_array_equal(w, rf.Embedding(200, 100, seed=3).params["weight"])


@pytest.mark.parametrize(
    "ids, words",
    [
        (np.array([0, 5]), r"ids must lie in \[0, 5\), got values in \[0, 5\]"),
        (np.array([-1, 2]), r"got values in \[-1, 2\]"),
        (np.array([0.0, 1.0]), "integer ids, got dtype float64"),
    ],
)
def test_embedding_bad_ids_are_a_clear_error(ids, words):
    with pytest.raises(ValueError, match=words):
        rf.Embedding(5, 3)(ids)


# -- Dropout -----------------------------------------------------------------------------------
def test_dropout_same_seed_gives_same_masks_and_calls_differ():
    x = np.ones((64, 32), np.float32)
    a, b = rf.Dropout(0.5, seed=11), rf.Dropout(0.5, seed=11)
    first, second = a(x), a(x)
    np.testing.assert_array_equal(first, b(x))
    np.testing.assert_array_equal(second, b(x))
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, rf.Dropout(0.5, seed=12)(x))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_drops_fraction_p_and_scales_the_rest(p):
    x = np.ones(200_000, np.float64)
    y = rf.Dropout(p, seed=0)(x)
    dropped = y == 0
    assert abs(dropped.mean() - p) < 0.01
    np.testing.assert_allclose(y[~dropped], 1 / (1 - p))
    assert abs(y.mean() - 1) < 0.02  # inverted dropout keeps the expectation


def test_dropout_is_identity_in_eval_mode_and_at_p_zero():
    x = np.random.default_rng(0).standard_normal((5, 4))
    drop = rf.Dropout(0.5).eval()
    assert drop(x) is x and drop.backward(x) is x
    assert drop.rng_state()["calls"] == 0  # eval draws no masks, so a resumed run is unaffected
    none = rf.Dropout(0.0)
    assert none(x) is x and none.backward(x) is x


def test_dropout_backward_matches_central_differences():
    rng = np.random.default_rng(6)
    drop = rf.Dropout(0.4, seed=2)
    x, r = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    state = drop.rng_state()

    def loss():
        drop.set_rng_state(state)  # the same mask for every evaluation
        return float((r * drop(x)).sum())

    loss()
    dx = drop.backward(r)
    testing.check_gradients(loss, {"x": x}, {"x": dx}, rtol=1e-7, atol=1e-8)
    assert (dx == 0).any() and (dx != 0).any()


def test_dropout_rng_state_resumes_the_same_masks():
    x = np.ones((10, 10), np.float32)
    run = rf.Dropout(0.3, seed=5)
    run(x)
    saved = run.rng_state()
    rest = [run(x) for _ in range(3)]
    resumed = rf.Dropout(0.3, seed=0)
    resumed.set_rng_state(saved)
    for expected in rest:
        np.testing.assert_array_equal(resumed(x), expected)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_bad_probability(p):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        rf.Dropout(p)


# -- GPU: the same layers on CuPy arrays give the NumPy results ---------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_layers_on_gpu_match_cpu(dtype, tol):
    import cupy as cp

    rng = np.random.default_rng(8)
    ids = rng.integers(0, 9, (4, 3))
    dy = rng.standard_normal((4, 3, 5)).astype(dtype)
    cpu = [rf.Embedding(9, 6, dtype=dtype, seed=0), rf.Linear(6, 5, dtype=dtype, seed=1)]
    gpu = [rf.Embedding(9, 6, dtype=dtype, seed=0).to("gpu"), rf.Linear(6, 5, dtype=dtype, seed=1).to("gpu")]
    drop_cpu, drop_gpu = rf.Dropout(0.5, seed=3), rf.Dropout(0.5, seed=3)
    y_cpu = drop_cpu(cpu[1](cpu[0](ids)))
    y_gpu = drop_gpu(gpu[1](gpu[0](cp.asarray(ids))))
    assert isinstance(y_gpu, cp.ndarray) and y_gpu.dtype == dtype
    np.testing.assert_allclose(cp.asnumpy(y_gpu), y_cpu, rtol=tol, atol=tol)
    cpu[0].backward(cpu[1].backward(drop_cpu.backward(dy)))
    gpu[0].backward(gpu[1].backward(drop_gpu.backward(cp.asarray(dy))))
    for c, g in zip(cpu, gpu):
        for name in c.grads:
            np.testing.assert_allclose(cp.asnumpy(g.grads[name]), c.grads[name], rtol=tol, atol=tol)
