"""Weight interop: exact round trips, and Keras's equations on converted weights match PyTorch's layers."""
import numpy as np
import pytest

from rnnfast.interop import from_keras, from_torch_state_dict, to_keras, to_torch_state_dict

torch = pytest.importorskip("torch")

I, H, T, B = 3, 5, 7, 2


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


# Keras's own recurrences, written from its documentation, on Keras-layout weights (x: (T, B, I)).
def scan(step, x, recurrent_kernel, parts=1):
    """The outputs (T, B, H) of ``state = step(x_t, *state)`` from zero states, h first."""
    state = (np.zeros((x.shape[1], recurrent_kernel.shape[0])),) * parts
    ys = []
    for x_t in x:
        state = step(x_t, *state)
        ys.append(state[0])
    return np.stack(ys)


def keras_lstm(x, kernel, recurrent_kernel, bias):
    def step(x_t, h, c):
        i, f, c_bar, o = np.split(x_t @ kernel + h @ recurrent_kernel + bias, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(c_bar)
        return sigmoid(o) * np.tanh(c), c
    return scan(step, x, recurrent_kernel, parts=2)


def keras_gru_reset_after(x, kernel, recurrent_kernel, bias):
    def step(x_t, h):
        x_z, x_r, x_h = np.split(x_t @ kernel + bias[0], 3, axis=-1)
        h_z, h_r, h_h = np.split(h @ recurrent_kernel + bias[1], 3, axis=-1)
        z, r = sigmoid(x_z + h_z), sigmoid(x_r + h_r)
        return (z * h + (1 - z) * np.tanh(x_h + r * h_h),)
    return scan(step, x, recurrent_kernel)


def keras_simple_rnn(x, kernel, recurrent_kernel, bias):
    return scan(lambda x_t, h: (np.tanh(x_t @ kernel + h @ recurrent_kernel + bias),), x, recurrent_kernel)


CASES = [("lstm", torch.nn.LSTM, keras_lstm), ("gru", torch.nn.GRU, keras_gru_reset_after),
         ("rnn", torch.nn.RNN, keras_simple_rnn)]


def torch_layer(cls, **kwargs):
    torch.manual_seed(0)
    return cls(I, H, dtype=torch.float64, **kwargs)


@pytest.mark.parametrize("cell, cls, keras_fn", CASES)
def test_keras_equations_on_converted_weights_match_torch(cell, cls, keras_fn):
    layer = torch_layer(cls)
    x = np.random.default_rng(1).standard_normal((T, B, I))
    expected = layer(torch.from_numpy(x))[0].detach().numpy()
    keras = to_keras(from_torch_state_dict(layer.state_dict()), cell)
    np.testing.assert_allclose(keras_fn(x, **keras), expected, rtol=1e-12, atol=1e-12)
    # And back: Keras weights into a fresh torch layer compute the same function.
    fresh = torch_layer(cls)
    fresh.load_state_dict(to_torch_state_dict(from_keras(keras, cell), as_tensors=True))
    np.testing.assert_allclose(fresh(torch.from_numpy(x))[0].detach().numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell, gates", [("lstm", 4), ("gru", 3), ("rnn", 1)])
def test_keras_round_trips_are_exact(cell, gates):
    rng = np.random.default_rng(2)
    keras = {"kernel": rng.standard_normal((I, gates * H)), "recurrent_kernel": rng.standard_normal((H, gates * H)),
             "bias": rng.standard_normal((2, 3 * H) if cell == "gru" else (gates * H,))}
    back = to_keras(from_keras(keras, cell, layer=1, direction="_reverse"), cell, layer=1, direction="_reverse")
    assert back.keys() == keras.keys() and all(np.array_equal(back[k], keras[k]) for k in keras)
    # The list that Keras's layer.get_weights() returns works too.
    listed = from_keras([keras["kernel"], keras["recurrent_kernel"], keras["bias"]], cell)
    assert sorted(listed) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]
    assert listed["weight_ih_l0"].shape == (gates * H, I)


def test_torch_to_keras_to_torch_keeps_weights_and_merges_biases():
    params = from_torch_state_dict(torch_layer(torch.nn.LSTM).state_dict())
    back = from_keras(to_keras(params, "lstm"), "lstm")
    assert np.array_equal(back["weight_ih_l0"], params["weight_ih_l0"])
    assert np.array_equal(back["weight_hh_l0"], params["weight_hh_l0"])
    assert np.array_equal(back["bias_ih_l0"], params["bias_ih_l0"] + params["bias_hh_l0"])
    assert not back["bias_hh_l0"].any()
    gru = from_torch_state_dict(torch_layer(torch.nn.GRU).state_dict())
    back = from_keras(to_keras(gru, "gru"), "gru")
    assert all(np.array_equal(back[k], gru[k]) for k in gru)  # GRU keeps both biases: exact


def test_gru_gate_order_is_swapped():
    w_ih = np.repeat(np.array([1.0, 2.0, 3.0]), H)[:, None] * np.ones((1, I))  # r=1, z=2, n=3 rows
    keras = to_keras({"weight_ih_l0": w_ih, "weight_hh_l0": np.zeros((3 * H, H))}, "gru")
    assert keras["kernel"][0, ::H].tolist() == [2.0, 1.0, 3.0]  # z, r, h
    assert "bias" not in keras


def test_torch_state_dict_round_trip_and_selection():
    layer = torch_layer(torch.nn.GRU, num_layers=2, bidirectional=True)
    params = from_torch_state_dict(layer.state_dict())
    assert all(isinstance(v, np.ndarray) for v in params.values())
    assert set(params) == set(layer.state_dict())
    assert all(isinstance(v, np.ndarray) for v in to_torch_state_dict(params).values())
    fresh = torch_layer(torch.nn.GRU, num_layers=2, bidirectional=True)
    torch.nn.init.zeros_(fresh.weight_ih_l0)
    fresh.load_state_dict(to_torch_state_dict(params, as_tensors=True))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), layer.state_dict().values()))
    reverse = to_keras(params, "gru", layer=1, direction="_reverse")
    assert reverse["kernel"].shape == (2 * H, 3 * H)  # layer 1 reads both directions of layer 0


def test_bad_keras_weights():
    with pytest.raises(ValueError, match="reset_after=False"):
        from_keras({"kernel": np.zeros((I, 3 * H)), "recurrent_kernel": np.zeros((H, 3 * H)),
                    "bias": np.zeros(3 * H)}, "gru")
    with pytest.raises(ValueError, match=r"kernel \(I, 4H\) and recurrent_kernel \(H, 4H\)"):
        from_keras({"kernel": np.zeros((I, 3 * H)), "recurrent_kernel": np.zeros((H, 3 * H))}, "lstm")
    with pytest.raises(ValueError, match="unknown cell 'transformer'"):
        to_keras({}, "transformer")
    with pytest.raises(KeyError, match=r"no \['weight_ih_l2', 'weight_hh_l2'\]"):
        to_keras({"weight_ih_l0": np.zeros(1)}, "lstm", layer=2)
