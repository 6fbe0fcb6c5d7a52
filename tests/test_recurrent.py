"""The engine core: recurrent layers against central differences and PyTorch (outputs and every
gradient), plus the user-facing errors. The kernels against the reference: test_reference.py."""
import numpy as np
import pytest

import rnnfast as rf
from rnnfast import testing

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def make_layer(cell, I, H, **kwargs):
    if cell.startswith("rnn"):
        return rf.RNN(I, H, nonlinearity=cell[4:], **kwargs)
    return {"lstm": rf.LSTM, "gru": rf.GRU}[cell](I, H, **kwargs)


def random_inputs(layer, T, B, rng, dtype=np.float64):
    x = rng.standard_normal((T, B, layer.input_size)).astype(dtype)
    shape = (layer.num_layers * layer.num_directions, B, layer.hidden_size)
    state = tuple(rng.standard_normal(shape).astype(dtype) for _ in range(2 if layer.has_cell_state else 1))
    return x, state


def as_state(layer, parts):
    return tuple(parts) if layer.has_cell_state else parts[0]


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def weighted_loss(layer, x, state, lengths, r_y, r_state):
    """A scalar with non-trivial gradients everywhere: sum(y * r_y) + sum(state_T * r_state)."""
    y, final = layer(x, as_state(layer, state), lengths)
    return float(np.sum(y * r_y) + sum(np.sum(f * r) for f, r in zip(as_tuple(final), r_state)))


def check_layer_gradients(layer, x, state, lengths, rng, entries=None):
    """Central differences in float64 for every input, initial state and parameter of ``layer`` on
    ``weighted_loss`` (random weights from ``rng``), with the layer's random draws (dropout, masks)
    replayed at each evaluation from its rng state now, so they are fixed. Returns dx."""
    start = layer.rng_state()

    def loss():
        layer.set_rng_state(start)  # the same masks at every evaluation
        return weighted_loss(layer, x, state, lengths, r_y, r_state)

    y, final = layer(x, as_state(layer, state), lengths)
    r_y = rng.standard_normal(y.shape)
    r_state = tuple(rng.standard_normal(f.shape) for f in as_tuple(final))
    layer.zero_grad()
    dx, dstate0 = layer.backward(r_y, as_state(layer, r_state))
    analytic = {"x": dx, **{f"state{i}": d for i, d in enumerate(as_tuple(dstate0))}, **layer.grads}
    variables = {"x": x, **{f"state{i}": s for i, s in enumerate(state)}, **layer.params}
    testing.check_gradients(loss, variables, analytic, rtol=1e-5, atol=1e-7, entries=entries)
    return dx


# -- gradient checks: every cell x {1, 2 layers} x {uni, bi} x {with, without lengths} ------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_gradients_match_central_differences(cell, num_layers, bidirectional, use_lengths):
    rng = np.random.default_rng(1)
    T, B, I, H = 4, 3, 3, 3
    layer = make_layer(cell, I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64, seed=2)
    x, state = random_inputs(layer, T, B, rng, np.float64)
    lengths = np.array([4, 2, 1]) if use_lengths else None
    dx = check_layer_gradients(layer, x, state, lengths, rng)
    if use_lengths:  # padded inputs cannot matter
        assert np.all(dx[2:, 1] == 0) and np.all(dx[1:, 2] == 0)


@pytest.mark.parametrize("cell", CELLS)
def test_sequence_equals_loop_of_cell_steps(cell):
    rng = np.random.default_rng(5)
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    cls = {"lstm": rf.LSTMCell, "gru": rf.GRUCell}.get(cell, rf.RNNCell)
    step = cls(4, 5, dtype=np.float64, seed=6, **kw)
    layer = make_layer(cell, 4, 5, dtype=np.float64)
    layer.load_state_dict({f"{k}_l0": v for k, v in step.state_dict().items()})
    x, state = random_inputs(layer, 6, 3, rng, np.float64)
    y, final = layer(x, as_state(layer, state))
    s = tuple(p[0] for p in state)
    s = s if layer.has_cell_state else s[0]
    for t in range(6):
        s = step(x[t], s)
        np.testing.assert_allclose(as_tuple(s)[0], y[t], atol=1e-13)
    for a, b in zip(as_tuple(s), as_tuple(final)):
        np.testing.assert_allclose(a, b[0], atol=1e-13)


def test_cell_backward_matches_layer_backward():
    rng = np.random.default_rng(7)
    cell = rf.LSTMCell(3, 4, dtype=np.float64, seed=8)
    x, h, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    dh, dc = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    cell((x), (h, c))
    dx, (dh0, dc0) = cell.backward((dh, dc))

    def loss():
        h1, c1 = cell(x, (h, c))
        return np.sum(h1 * dh) + np.sum(c1 * dc)

    testing.check_gradients(loss, {"x": x}, {"x": dx}, rtol=1e-6, atol=0)
    assert set(cell.grads) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}


# -- parity with PyTorch --------------------------------------------------------------------------
def torch_layer(cell, layer):
    return testing.torch_recurrent(cell, layer.input_size, layer.hidden_size, layer.state_dict(), layer.dtype,
                                   num_layers=layer.num_layers, bidirectional=layer.bidirectional, bias=layer.bias,
                                   batch_first=layer.batch_first)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-5), (np.float32, 1e-4)])
@pytest.mark.parametrize("num_layers,bidirectional,use_lengths",
                         [(1, False, False), (2, True, False), (2, False, True), (2, True, True), (1, True, True)])
def test_parity_with_pytorch(cell, dtype, rtol, num_layers, bidirectional, use_lengths):
    pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    T, B, I, H = 6, 4, 5, 7
    layer = make_layer(cell, I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype, seed=10)
    x, state = random_inputs(layer, T, B, rng, dtype)
    lengths = np.array([6, 3, 5, 1]) if use_lengths else None
    y, final = layer(x, as_state(layer, state), lengths)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dfinal = tuple(rng.standard_normal(f.shape).astype(dtype) for f in as_tuple(final))
    layer.zero_grad()
    dx, dstate0 = layer.backward(dy, as_state(layer, dfinal))
    theirs = testing.torch_run(torch_layer(cell, layer), x, state, lengths, dy, dfinal)
    parts = ("h", "c") if layer.has_cell_state else ("h",)
    ours = {"y": y, **{f"{p}T": f for p, f in zip(parts, as_tuple(final))}, "dx": dx,
            **{f"d{p}0": d for p, d in zip(parts, as_tuple(dstate0))}, **layer.grads}
    assert set(ours) == set(theirs)
    for name, a in ours.items():
        scale = max(np.abs(theirs[name]).max(), 1.0)
        np.testing.assert_allclose(a, theirs[name], rtol=rtol, atol=rtol * scale, err_msg=name)


def test_batch_first_and_no_bias_match_pytorch():
    pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    layer = rf.GRU(3, 4, num_layers=2, bias=False, batch_first=True, dtype=np.float64, seed=0)
    assert all("bias" not in k for k in layer.params)
    x = rng.standard_normal((2, 5, 3))
    y, h = layer(x)
    theirs = testing.torch_run(torch_layer("gru", layer), x)  # the loss is y.sum()
    dx, _ = layer.backward(np.ones_like(y))
    np.testing.assert_allclose(y, theirs["y"], rtol=1e-10)
    np.testing.assert_allclose(dx, theirs["dx"], rtol=1e-10)


def test_init_follows_pytorch_bounds_and_names():
    layer = rf.LSTM(10, 16, num_layers=2, bidirectional=True, seed=0)
    names = {f"{w}_l{k}{s}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for k in (0, 1) for s in ("", "_reverse")}
    assert set(layer.params) == names
    assert layer.params["weight_ih_l1"].shape == (64, 32)
    bound = 1 / np.sqrt(16)
    for p in layer.params.values():
        assert p.dtype == np.float32 and np.abs(p).max() <= bound and np.abs(p).max() > 0.9 * bound
    np.testing.assert_array_equal(rf.LSTM(10, 16, seed=3).params["weight_hh_l0"], rf.LSTM(10, 16, seed=3).params["weight_hh_l0"])


def test_dropout_between_layers_trains_and_is_off_in_eval():
    rng = np.random.default_rng(12)
    layer = rf.LSTM(3, 8, num_layers=2, dropout=0.5, dtype=np.float64, seed=1)
    x = rng.standard_normal((5, 2, 3))
    y_eval1, _ = layer.eval()(x)
    y_eval2, _ = layer(x)
    np.testing.assert_array_equal(y_eval1, y_eval2)
    layer.train()
    y1, _ = layer(x)
    y2, _ = layer(x)
    assert not np.allclose(y1, y2) and not np.allclose(y1, y_eval1)
    # the gradient flows through the same mask as the forward: check one weight numerically
    layer.set_rng_state({"seed": 5, "stream": 0})
    y, _ = layer(x)
    layer.zero_grad()
    layer.backward(np.ones_like(y))

    def loss():
        layer.set_rng_state({"seed": 5, "stream": 0})
        return layer(x)[0].sum()

    testing.check_gradients(loss, {"w": layer.params["weight_ih_l0"]}, {"w": layer.grads["weight_ih_l0"]},
                            rtol=1e-6, atol=0, entries=[(3, 1)])


def test_grads_accumulate_and_zero():
    layer = rf.RNN(2, 3, dtype=np.float64, seed=0)
    x = np.ones((2, 1, 2))
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    once = layer.grads["weight_hh_l0"].copy()
    layer(x)
    layer.backward(np.ones_like(y))
    np.testing.assert_allclose(layer.grads["weight_hh_l0"], 2 * once)
    layer.zero_grad()
    assert not layer.grads["weight_hh_l0"].any()


# -- bad input: clear errors naming the argument ---------------------------------------------------
@pytest.mark.parametrize("make_call,error,words", [
    (lambda l: l(np.zeros((4, 3), np.float32)), ValueError, "3-D array"),
    (lambda l: l(np.zeros((4, 2, 5), np.float32)), ValueError, "input_size=3"),
    (lambda l: l(np.zeros((4, 2, 3), np.float64)), TypeError, "dtype"),
    (lambda l: l(np.zeros((4, 2, 3), np.int32)), TypeError, "dtype"),
    (lambda l: l(np.zeros((4, 2, 3), np.float16)), TypeError, "the layers run float32 or float64"),
    (lambda l: l(np.zeros((4, 2, 3), np.float64)), TypeError, "or build the layer with dtype=float64"),
    (lambda l: l([[[0.0] * 3] * 2] * 4), TypeError, "builtins.list; pass a NumPy array"),
    (lambda l: l(np.zeros((0, 2, 3), np.float32)), ValueError, "at least one time step"),
    (lambda l: l(np.full((4, 2, 3), np.nan, np.float32)), ValueError, "NaN"),
    (lambda l: l(np.zeros((4, 2, 3), np.float32), (np.zeros((1, 2, 4), np.float32),) * 2), ValueError, "h0 has shape"),
    (lambda l: l(np.zeros((4, 2, 3), np.float32), np.zeros((1, 2, 5), np.float32)), ValueError, "(h0, c0)"),
    (lambda l: l(np.zeros((4, 2, 3), np.float32), lengths=np.array([4])), ValueError, "lengths has shape"),
    (lambda l: l(np.zeros((4, 2, 3), np.float32), lengths=np.array([4, 0])), ValueError, "1..T=4"),
    (lambda l: l(np.zeros((4, 2, 3), np.float32), lengths=np.array([5, 1])), ValueError, "1..T=4"),
    (lambda l: l(np.zeros((4, 2, 3), np.float32), lengths=np.array([1.0, 2.0])), TypeError, "integers"),
    (lambda l: l.backward(np.zeros((4, 2, 5), np.float32)), RuntimeError, "before forward"),
    (lambda l: (l(np.zeros((4, 2, 3), np.float32)), l.backward(np.zeros((4, 2, 5), np.float32),
                                                                (np.zeros((1, 7, 5), np.float32),) * 2)),
     ValueError, "dhT has shape (1, 7, 5), expected (1, 2, 5)"),
    (lambda l: (l(np.zeros((4, 2, 3), np.float32)), l.backward(np.zeros((4, 2, 5), np.float32),
                                                                np.zeros((1, 2, 5), np.float32))),
     ValueError, "(dhT, dcT)"),
])
def test_bad_input_is_a_clear_error(make_call, error, words):
    layer = rf.LSTM(3, 5)
    with pytest.raises(error, match=None) as info:
        make_call(layer)
    assert words in str(info.value)


@pytest.mark.parametrize("kwargs,words", [
    (dict(input_size=0, hidden_size=4), "input_size"), (dict(input_size=3, hidden_size=-1), "hidden_size"),
    (dict(input_size=3, hidden_size=4, dropout=1.0), "dropout"), (dict(input_size=3, hidden_size=4, dtype=np.int64), "dtype"),
    (dict(input_size=3, hidden_size=4, nonlinearity="sigmoid"), "nonlinearity"),
])
def test_bad_constructor_arguments(kwargs, words):
    with pytest.raises((ValueError, TypeError)) as info:
        rf.RNN(**kwargs)
    assert words in str(info.value)


def test_a_torch_tensor_is_a_one_line_type_error_saying_what_to_pass():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"x is a torch.Tensor; pass a NumPy array \(a torch tensor: x.numpy\(\)\)"):
        rf.LSTM(3, 5)(torch.zeros(4, 2, 3))


def test_mixed_devices_are_a_type_error_naming_both():
    class FakeCupy:  # the dispatcher recognises CuPy arrays by their module
        __module__ = "cupy._core.core"
        ndim = 3

    with pytest.raises(TypeError, match="numpy.ndarray and cupy"):
        rf.get_backend(np.zeros(3), FakeCupy())
