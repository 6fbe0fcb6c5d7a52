"""The engine core: recurrent layers and kernels against central differences, the NumPy reference
and PyTorch (outputs and every gradient), plus the user-facing errors."""
import numpy as np
import pytest

import rnnfast as rf
from rnnfast.kernels.cpu import reference

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def make_layer(cell, I, H, **kwargs):
    if cell.startswith("rnn"):
        return rf.RNN(I, H, nonlinearity=cell[4:], **kwargs)
    return {"lstm": rf.LSTM, "gru": rf.GRU}[cell](I, H, **kwargs)


def random_inputs(layer, T, B, rng, dtype):
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
    y, final = layer(x, as_state(layer, state), lengths)
    r_y = rng.standard_normal(y.shape)
    r_state = tuple(rng.standard_normal(f.shape) for f in as_tuple(final))
    layer.zero_grad()
    dx, dstate0 = layer.backward(r_y, as_state(layer, r_state))
    analytic = {"x": dx, **{f"state{i}": d for i, d in enumerate(as_tuple(dstate0))}, **layer.grads}
    variables = {"x": x, **{f"state{i}": s for i, s in enumerate(state)}, **layer.params}
    eps = 1e-6
    for name, value in variables.items():
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            old = value[i]
            value[i] = old + eps
            up = weighted_loss(layer, x, state, lengths, r_y, r_state)
            value[i] = old - eps
            down = weighted_loss(layer, x, state, lengths, r_y, r_state)
            value[i] = old
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-5, atol=1e-7, err_msg=name)
    if use_lengths:  # padded inputs cannot matter
        assert np.all(dx[2:, 1] == 0) and np.all(dx[1:, 2] == 0)


# -- the kernels against the plain NumPy reference ------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_kernels_match_reference(cell, dtype, tol):
    rng = np.random.default_rng(3)
    layer = make_layer(cell, 5, 6, dtype=dtype, seed=4)
    x, state = random_inputs(layer, 7, 4, rng, dtype)
    lengths = np.array([7, 5, 2, 1])
    y, final = layer(x, as_state(layer, state), lengths)
    step = {"lstm": reference.lstm_step, "gru": reference.gru_step}.get(cell, reference.rnn_step)
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}
    weights = {k: layer.params[f"{k.replace('w_', 'weight_').replace('b_', 'bias_')}_l0"].astype(np.float64)
               for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
    y_ref, final_ref = reference.run(lambda *a, **w: step(*a, **w, **kw), x.astype(np.float64),
                                     tuple(s[0].astype(np.float64) for s in state), lengths, **weights)
    np.testing.assert_allclose(y, y_ref, atol=tol, rtol=0)
    for f, r in zip(as_tuple(final), final_ref):
        np.testing.assert_allclose(f[0], r, atol=tol, rtol=0)


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
    eps = 1e-6

    def f(xx):
        h1, c1 = cell(xx, (h, c))
        return np.sum(h1 * dh) + np.sum(c1 * dc)

    numeric = np.array([[(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in row] for row in np.eye(6).reshape(2, 3, 2, 3)])
    np.testing.assert_allclose(dx, numeric, rtol=1e-6)
    assert set(cell.grads) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}


# -- parity with PyTorch --------------------------------------------------------------------------
def torch_layer(torch, cell, layer):
    common = dict(num_layers=layer.num_layers, bidirectional=layer.bidirectional, bias=layer.bias)
    if cell.startswith("rnn"):
        m = torch.nn.RNN(layer.input_size, layer.hidden_size, nonlinearity=cell[4:], **common)
    else:
        m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](layer.input_size, layer.hidden_size, **common)
    m = m.double() if layer.dtype == np.float64 else m.float()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return m


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-5), (np.float32, 1e-4)])
@pytest.mark.parametrize("num_layers,bidirectional,use_lengths",
                         [(1, False, False), (2, True, False), (2, False, True), (2, True, True), (1, True, True)])
def test_parity_with_pytorch(cell, dtype, rtol, num_layers, bidirectional, use_lengths):
    torch = pytest.importorskip("torch")
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

    m = torch_layer(torch, cell, layer)
    xt = torch.tensor(x, requires_grad=True)
    st = tuple(torch.tensor(s, requires_grad=True) for s in state)
    inp = xt if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
    yt, ft = m(inp, as_state(layer, st))
    if lengths is not None:
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, total_length=T)
    loss = (yt * torch.from_numpy(dy)).sum() + sum((f * torch.from_numpy(d)).sum() for f, d in zip(as_tuple(ft), dfinal))
    loss.backward()

    def close(ours, theirs, what):
        theirs = theirs.detach().numpy()
        scale = max(np.abs(theirs).max(), 1.0)
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale, err_msg=what)

    close(y, yt, "y")
    for a, b in zip(as_tuple(final), as_tuple(ft)):
        close(a, b, "final state")
    close(dx, xt.grad, "dx")
    for a, b in zip(as_tuple(dstate0), st):
        close(a, b.grad, "dstate0")
    for name, p in m.named_parameters():
        close(layer.grads[name], p.grad, name)


def test_batch_first_and_no_bias_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    layer = rf.GRU(3, 4, num_layers=2, bias=False, batch_first=True, dtype=np.float64, seed=0)
    assert all("bias" not in k for k in layer.params)
    x = rng.standard_normal((2, 5, 3))
    y, h = layer(x)
    m = torch.nn.GRU(3, 4, num_layers=2, bias=False, batch_first=True).double()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    yt, ht = m(xt)
    yt.sum().backward()
    dx, _ = layer.backward(np.ones_like(y))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10)


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
    w = layer.params["weight_ih_l0"]
    eps, i = 1e-6, (3, 1)
    old = w[i]
    outs = []
    for v in (old + eps, old - eps):
        w[i] = v
        layer.set_rng_state({"seed": 5, "stream": 0})
        outs.append(layer(x)[0].sum())
    w[i] = old
    np.testing.assert_allclose(layer.grads["weight_ih_l0"][i], (outs[0] - outs[1]) / (2 * eps), rtol=1e-6)


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


def test_mixed_devices_are_a_type_error_naming_both():
    class FakeCupy:  # the dispatcher recognises CuPy arrays by their module
        __module__ = "cupy._core.core"
        ndim = 3

    with pytest.raises(TypeError, match="numpy.ndarray and cupy"):
        rf.get_backend(np.zeros(3), FakeCupy())
