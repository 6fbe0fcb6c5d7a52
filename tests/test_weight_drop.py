"""weight_drop=p (DropConnect on W_hh, AWD-LSTM style) on RNN, LSTM and GRU: gradients against
central differences with the mask held fixed, the mask against a plain layer run on the masked
weights (and torch), its statistics, p=0 and eval mode against the plain layer, and the errors."""
import numpy as np
import pytest

import rnnfast as rf
from rnnfast import testing
from rnnfast.random import dropout_mask
from test_recurrent import as_state, as_tuple, check_layer_gradients, make_layer, random_inputs

CELLS = ["rnn_tanh", "lstm", "gru"]


def masked_copy(layer, stream):
    """A plain layer (no weight drop) holding ``layer``'s weights with W_hh multiplied by the masks
    ``layer`` draws from ``stream`` on (one per layer and direction, in forward's order), and the masks."""
    kwargs = dict(num_layers=layer.num_layers, bidirectional=layer.bidirectional, dtype=layer.dtype)
    plain = make_layer(layer.spec.name, layer.input_size, layer.hidden_size, **kwargs)
    masks = {}
    for name, value in layer.params.items():
        plain.params[name][...] = value
    for l in range(layer.num_layers):
        for suffix in layer._suffixes:
            name = f"weight_hh_l{l}{suffix}"
            masks[name] = dropout_mask(layer.params[name].shape, layer.weight_drop,
                                       layer.dropout_seed, stream, np, layer.dtype)
            stream += 1
            plain.params[name][...] = layer.params[name] * masks[name]
    return plain, masks


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_gradients_match_central_differences_with_the_mask_fixed(cell, num_layers, bidirectional, use_lengths):
    rng = np.random.default_rng(1)
    T, B, I, H = 4, 3, 3, 4
    layer = make_layer(cell, I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64, seed=2,
                       weight_drop=0.4)
    x, state = random_inputs(layer, T, B, rng)
    lengths = np.array([4, 2, 1]) if use_lengths else None
    start = layer.rng_state()
    check_layer_gradients(layer, x, state, lengths, rng, entries=6)
    # dropped weights get no gradient
    for l in range(num_layers):
        for suffix in layer._suffixes:
            name = f"weight_hh_l{l}{suffix}"
            dropped = masked_copy(layer, start["stream"])[1][name] == 0
            assert dropped.any() and np.all(layer.grads[name][dropped] == 0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers,bidirectional,use_lengths", [(1, False, False), (2, True, True)])
def test_one_mask_for_the_batch_and_all_steps_equals_a_plain_layer_on_masked_weights(cell, num_layers,
                                                                                    bidirectional, use_lengths):
    rng = np.random.default_rng(3)
    layer = make_layer(cell, 5, 6, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64, seed=4,
                       weight_drop=0.3)
    x, state = random_inputs(layer, 7, 4, rng)
    lengths = np.array([7, 3, 5, 1]) if use_lengths else None
    plain, masks = masked_copy(layer, layer.rng_state()["stream"])
    y, final = layer(x, as_state(layer, state), lengths)
    y_plain, final_plain = plain(x, as_state(plain, state), lengths)
    np.testing.assert_allclose(y, y_plain, rtol=1e-13, atol=1e-13)
    for a, b in zip(as_tuple(final), as_tuple(final_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    dy = rng.standard_normal(y.shape)
    layer.zero_grad(), plain.zero_grad()
    dx, _ = layer.backward(dy)
    dx_plain, _ = plain.backward(dy)
    np.testing.assert_allclose(dx, dx_plain, rtol=1e-12, atol=1e-12)
    for name, g in layer.grads.items():
        expected = plain.grads[name] * masks[name] if name in masks else plain.grads[name]
        np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-12, err_msg=name)


def test_backward_adds_into_accumulated_gradients_without_masking_them():
    rng = np.random.default_rng(5)
    layer = rf.LSTM(3, 4, dtype=np.float64, seed=6, weight_drop=0.5)
    x, _ = random_inputs(layer, 5, 2, rng)
    before = rng.standard_normal(layer.grads["weight_hh_l0"].shape)
    y, _ = layer(x)
    layer.zero_grad()
    layer.grads["weight_hh_l0"][...] = before
    layer.backward(np.ones_like(y))
    once = layer.grads["weight_hh_l0"] - before
    layer.zero_grad()
    layer.backward(np.ones_like(y))
    np.testing.assert_allclose(once, layer.grads["weight_hh_l0"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_p_zero_is_the_plain_layer_bitwise(cell):
    rng = np.random.default_rng(7)
    kwargs = dict(num_layers=2, bidirectional=True, dtype=np.float32, seed=8, dropout=0.2)
    layer, plain = make_layer(cell, 4, 5, weight_drop=0.0, **kwargs), make_layer(cell, 4, 5, **kwargs)
    x, state = random_inputs(layer, 6, 3, rng, np.float32)
    for _ in range(2):  # the dropout streams advance the same way
        y, final = layer(x, as_state(layer, state))
        y_plain, final_plain = plain(x, as_state(plain, state))
        assert np.array_equal(y, y_plain)
        assert all(np.array_equal(a, b) for a, b in zip(as_tuple(final), as_tuple(final_plain)))
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, d0 = layer.backward(dy)
        dx_plain, d0_plain = plain.backward(dy)
        assert np.array_equal(dx, dx_plain)
        assert all(np.array_equal(a, b) for a, b in zip(as_tuple(d0), as_tuple(d0_plain)))
        assert all(np.array_equal(g, plain.grads[n]) for n, g in layer.grads.items())
    assert layer.rng_state() == plain.rng_state()


@pytest.mark.parametrize("cell", CELLS)
def test_eval_mode_is_the_plain_layer_and_deterministic(cell):
    rng = np.random.default_rng(9)
    layer = make_layer(cell, 4, 5, num_layers=2, dtype=np.float64, seed=10, weight_drop=0.5)
    plain = make_layer(cell, 4, 5, num_layers=2, dtype=np.float64, seed=10)
    x, _ = random_inputs(layer, 6, 3, rng)
    layer.eval(), plain.eval()
    y1, _ = layer(x)
    y2, _ = layer(x)
    assert np.array_equal(y1, y2) and np.array_equal(y1, plain(x)[0])
    layer.train()
    assert not np.allclose(layer(x)[0], y1)


def test_mask_rate_and_a_new_mask_each_forward_call():
    layer = rf.LSTM(8, 256, dtype=np.float32, seed=11, weight_drop=0.3)  # W_hh: 1024 x 256
    x = np.ones((2, 1, 8), np.float32)
    drawn = []
    for _ in range(2):
        stream = layer.rng_state()["stream"]
        layer(x)
        drawn.append(masked_copy(layer, stream)[1]["weight_hh_l0"])
        assert layer.rng_state()["stream"] == stream + 1
    for mask in drawn:
        assert abs(np.mean(mask == 0) - 0.3) < 0.005  # 262144 draws: the std of the rate is 0.0009
        assert np.allclose(mask[mask != 0], 1 / 0.7)
    assert np.mean(drawn[0] != drawn[1]) > 0.3


def test_rng_state_replays_the_same_masks():
    rng = np.random.default_rng(12)
    layer = rf.GRU(3, 4, num_layers=2, dropout=0.3, dtype=np.float64, seed=13, weight_drop=0.5)
    x, _ = random_inputs(layer, 5, 2, rng)
    start = layer.rng_state()
    y1, _ = layer(x)
    layer.set_rng_state(start)
    y2, _ = layer(x)
    assert np.array_equal(y1, y2)
    assert layer.rng_state()["stream"] == start["stream"] + 3  # two weight masks and one dropout mask


def test_matches_torch_with_the_masked_weights():
    pytest.importorskip("torch")
    rng = np.random.default_rng(14)
    layer = rf.LSTM(5, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=15, weight_drop=0.4)
    x, state = random_inputs(layer, 6, 3, rng)
    plain, masks = masked_copy(layer, layer.rng_state()["stream"])
    y, final = layer(x, as_state(layer, state))
    dy = rng.standard_normal(y.shape)
    dfinal = tuple(rng.standard_normal(f.shape) for f in final)
    layer.zero_grad()
    layer.backward(dy, dfinal)
    torch_lstm = testing.torch_recurrent("lstm", 5, 6, plain.state_dict(), np.float64, num_layers=2,
                                         bidirectional=True)
    theirs = testing.torch_run(torch_lstm, x, state, None, dy, dfinal)
    np.testing.assert_allclose(y, theirs["y"], rtol=1e-10, atol=1e-12)
    for name, g in layer.grads.items():
        expected = theirs[name] * masks[name] if name in masks else theirs[name]
        np.testing.assert_allclose(g, expected, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_bad_p_is_a_one_line_error(p):
    with pytest.raises(ValueError, match=r"weight_drop must be in \[0, 1\)") as info:
        rf.LSTM(3, 4, weight_drop=p)
    assert "\n" not in str(info.value)


def test_a_cell_refuses_weight_drop_and_says_what_to_use():
    with pytest.raises(ValueError, match=r"rf.LSTM\(\.\.\., weight_drop=p\)") as info:
        rf.LSTMCell(3, 4, weight_drop=0.2)
    assert "\n" not in str(info.value)
    rf.LSTMCell(3, 4, weight_drop=0.0)


def test_repr_shows_weight_drop():
    assert "weight_drop=0.25" in repr(rf.GRU(3, 4, weight_drop=0.25))


# -- rnnfast train --weight-drop ----------------------------------------------------------------
def test_train_records_weight_drop_so_resume_rebuilds_it(shakespeare_path, tmp_path):
    from rnnfast.checkpoint import load_checkpoint
    from rnnfast.models import from_config
    from test_cli import TINY, run

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_path.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    out = tmp_path / "run"
    run("train", corpus, *TINY, "--steps", 2, "--eval-every", 2, "--out", out, "--weight-drop", 0.25)
    _, meta = load_checkpoint(out / "latest.safetensors")
    assert meta["cli"]["options"]["weight_drop"] == 0.25
    assert from_config(meta["model"]).rnn.weight_drop == 0.25
    result = run("train", "--resume", out / "latest.safetensors", "--steps", 3, "--weight-drop", 0.5, ok=False)
    assert "--weight-drop 0.5 differs" in result.stderr
    run("train", "--resume", out / "latest.safetensors", "--steps", 3)
    assert run("train", corpus, *TINY, "--weight-drop", 1, "--out", tmp_path / "bad", ok=False).stderr
    assert not (tmp_path / "bad").exists()


def test_a_checkpoint_from_before_weight_drop_still_resumes(shakespeare_path, tmp_path):
    from rnnfast.checkpoint import load_checkpoint, save_checkpoint
    from test_cli import TINY, run

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_path.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    out = tmp_path / "run"
    run("train", corpus, *TINY, "--steps", 2, "--eval-every", 2, "--out", out)
    tensors, meta = load_checkpoint(out / "latest.safetensors")
    del meta["model"]["weight_drop"], meta["cli"]["options"]["weight_drop"]  # as written before the option
    save_checkpoint(out / "latest.safetensors", tensors, meta)
    result = run("train", "--resume", out / "latest.safetensors", "--steps", 3)
    assert "step 3" in result.stdout + result.stderr
