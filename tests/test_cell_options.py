"""recurrent_dropout=p (variational dropout on h where it meets W_hh) and zoneout=p on RNN, LSTM and
GRU: gradients against central differences with the masks fixed, the layer against the reference
cells run on the masks it drew, the masks' statistics, p=0 and eval mode, the CPU against the GPU
(real GPU only: the simulator's share is the kernel check of test_cuda_sim.py), and the errors.
The kernels with these options are held to the reference in test_reference.py."""
import json

import numpy as np
import pytest

import rnnfast as rf
from rnnfast.kernels.cpu import reference
from rnnfast.random import dropout_mask, uniform
from test_recurrent import as_state, as_tuple, check_layer_gradients, make_layer, random_inputs

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
OPTIONS = {"recurrent_dropout": {"recurrent_dropout": 0.4}, "zoneout": {"zoneout": 0.3},
           "both": {"recurrent_dropout": 0.3, "zoneout": 0.4}}


def drawn_options(layer, stream, T, B):
    """The cell options ``layer`` draws from ``stream`` on in training, per layer and direction in
    forward's order, redrawn here from the streams as the layer's docstring defines them."""
    H, out = layer.hidden_size, []
    for _ in range(layer.num_layers * layer.num_directions):
        options = {}
        if layer.recurrent_dropout > 0:
            options["h_mask"] = dropout_mask((B, H), layer.recurrent_dropout, layer.dropout_seed, stream, np,
                                             layer.dtype)
            stream += 1
        if any(layer.zoneout):
            zone = []
            for p in layer.zoneout:
                zone.append(None if p == 0 else
                            (uniform((T, B, H), layer.dropout_seed, stream, np) < p).astype(layer.dtype))
                stream += p > 0
            options["zone"] = tuple(zone)
        out.append(options)
    return out


def reference_layer(layer, x, state, options):
    """``layer`` (one direction, no lengths) run through the reference cells with ``options`` per layer."""
    forward = reference.KERNELS[layer.spec.name][0]
    inp, finals = x, []
    for l in range(layer.num_layers):
        inp, final, _ = forward(inp, tuple(s[l] for s in state), layer.direction_weights(l), None, **options[l])
        finals.append(final)
    return inp, tuple(np.stack(parts) for parts in zip(*finals))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_gradients_match_central_differences_with_the_masks_fixed(cell, option, num_layers, bidirectional,
                                                                  use_lengths):
    rng = np.random.default_rng(1)
    T, B, I, H = 4, 3, 3, 4
    layer = make_layer(cell, I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64, seed=2,
                       dropout=0.2, **OPTIONS[option])
    x, state = random_inputs(layer, T, B, rng)
    lengths = np.array([4, 2, 1]) if use_lengths else None
    check_layer_gradients(layer, x, state, lengths, rng, entries=6)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_the_layer_runs_the_reference_cells_on_the_masks_it_draws(cell, option):
    rng = np.random.default_rng(3)
    T, B = 6, 4
    layer = make_layer(cell, 5, 6, num_layers=2, dtype=np.float64, seed=4, **OPTIONS[option])
    x, state = random_inputs(layer, T, B, rng)
    options = drawn_options(layer, layer.rng_state()["stream"], T, B)
    y, final = layer(x, as_state(layer, state))
    y_ref, final_ref = reference_layer(layer, x, state, options)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(as_tuple(final), final_ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_lstm_zoneout_pair_zones_h_and_c_apart():
    rng = np.random.default_rng(5)
    T, B = 5, 3
    layer = rf.LSTM(3, 4, dtype=np.float64, seed=6, zoneout=(0.0, 0.5))
    x, state = random_inputs(layer, T, B, rng)
    options = drawn_options(layer, layer.rng_state()["stream"], T, B)
    assert options[0]["zone"][0] is None and options[0]["zone"][1] is not None
    y, final = layer(x, state)
    y_ref, final_ref = reference_layer(layer, x, state, options)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final[1], final_ref[1], rtol=1e-12, atol=1e-12)
    assert repr(layer).count("zoneout=(0.0, 0.5)") == 1


@pytest.mark.parametrize("cell", CELLS)
def test_p_zero_is_the_plain_layer_bitwise(cell):
    rng = np.random.default_rng(7)
    kwargs = dict(num_layers=2, bidirectional=True, dtype=np.float32, seed=8, dropout=0.2)
    layer = make_layer(cell, 4, 5, recurrent_dropout=0.0, zoneout=0.0, **kwargs)
    plain = make_layer(cell, 4, 5, **kwargs)
    x, state = random_inputs(layer, 6, 3, rng, np.float32)
    lengths = np.array([6, 2, 4])
    for _ in range(2):  # the dropout streams advance the same way
        y, final = layer(x, as_state(layer, state), lengths)
        y_plain, final_plain = plain(x, as_state(plain, state), lengths)
        assert np.array_equal(y, y_plain)
        assert all(np.array_equal(a, b) for a, b in zip(as_tuple(final), as_tuple(final_plain)))
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx, d0 = layer.backward(dy)
        dx_plain, d0_plain = plain.backward(dy)
        assert np.array_equal(dx, dx_plain)
        assert all(np.array_equal(a, b) for a, b in zip(as_tuple(d0), as_tuple(d0_plain)))
        assert all(np.array_equal(g, plain.grads[n]) for n, g in layer.grads.items())
    assert layer.rng_state() == plain.rng_state()


def test_recurrent_dropout_mask_rate_scale_and_one_mask_for_all_steps():
    layer = rf.GRU(3, 512, dtype=np.float32, seed=9, recurrent_dropout=0.3)
    T, B = 5, 64
    stream = layer.rng_state()["stream"]
    layer(np.ones((T, B, 3), np.float32))
    assert layer.rng_state()["stream"] == stream + 1  # one (B, H) draw for the call: variational
    (options,) = drawn_options(layer, stream, T, B)
    mask = options["h_mask"]
    assert mask.shape == (B, 512)
    assert abs(np.mean(mask == 0) - 0.3) < 0.01  # 32768 draws: the std of the rate is 0.0025
    assert np.allclose(mask[mask != 0], 1 / 0.7)


def test_zoneout_rate_and_fresh_draws_per_step():
    layer = rf.LSTM(3, 256, dtype=np.float32, seed=10, zoneout=0.25)
    T, B = 6, 32
    stream = layer.rng_state()["stream"]
    layer(np.ones((T, B, 3), np.float32))
    assert layer.rng_state()["stream"] == stream + 2  # one (T, B, H) draw for h, one for c
    (options,) = drawn_options(layer, stream, T, B)
    zone_h, zone_c = options["zone"]
    for zone in (zone_h, zone_c):
        assert set(np.unique(zone)) == {0.0, 1.0}
        assert abs(zone.mean() - 0.25) < 0.01  # 49152 draws: the std of the rate is 0.002
        assert np.mean(zone[0] != zone[1]) > 0.3  # a new draw at each step
    assert np.mean(zone_h != zone_c) > 0.3


def test_zoneout_keeps_the_old_state_where_it_draws_one():
    """Where a unit zones out at a step its state is the step before's, exactly."""
    layer = rf.RNN(3, 64, dtype=np.float64, seed=11, zoneout=0.5)
    T, B = 4, 8
    rng = np.random.default_rng(12)
    x, (h0,) = random_inputs(layer, T, B, rng)
    (options,) = drawn_options(layer, layer.rng_state()["stream"], T, B)
    y, _ = layer(x, h0)
    zone = options["zone"][0]
    previous = np.concatenate([h0, y[:-1]])
    assert np.array_equal(y[zone == 1], previous[zone == 1])
    assert not np.any(y[zone == 0] == previous[zone == 0])


@pytest.mark.parametrize("cell", CELLS)
def test_eval_mode_uses_the_expectation_and_is_deterministic(cell):
    rng = np.random.default_rng(13)
    T, B = 6, 3
    layer = make_layer(cell, 4, 5, num_layers=2, dtype=np.float64, seed=14, recurrent_dropout=0.5, zoneout=0.3)
    x, state = random_inputs(layer, T, B, rng)
    layer.eval()
    stream = layer.rng_state()["stream"]
    y1, final = layer(x, as_state(layer, state))
    y2, _ = layer(x, as_state(layer, state))
    assert np.array_equal(y1, y2) and layer.rng_state()["stream"] == stream  # nothing drawn
    zone = {"zone": tuple(np.full((T, B, 5), 0.3) for _ in layer.zoneout)}  # p * old + (1 - p) * new
    y_ref, final_ref = reference_layer(layer, x, state, [zone, zone])
    np.testing.assert_allclose(y1, y_ref, rtol=1e-12, atol=1e-12)
    plain = make_layer(cell, 4, 5, num_layers=2, dtype=np.float64, seed=14).eval()
    assert not np.allclose(y1, plain(x, as_state(plain, state))[0])  # zoneout's expectation changes the output
    layer.train()
    assert not np.allclose(layer(x, as_state(layer, state))[0], y1)


def test_a_cell_takes_zoneout_as_one_step_and_refuses_recurrent_dropout():
    cell = rf.LSTMCell(3, 4, dtype=np.float64, seed=15, zoneout=0.5)
    x = np.ones((2, 3))
    h, c = cell(x)
    assert h.shape == (2, 4)
    with pytest.raises(ValueError, match=r"rf.GRU\(\.\.\., recurrent_dropout=p\)") as info:
        rf.GRUCell(3, 4, recurrent_dropout=0.2)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs,words", [
    ({"recurrent_dropout": 1.0}, r"recurrent_dropout must be in \[0, 1\)"),
    ({"recurrent_dropout": -0.1}, r"recurrent_dropout must be in \[0, 1\)"),
    ({"zoneout": 1.0}, r"zoneout for h must be in \[0, 1\)"),
    ({"zoneout": (0.1, 1.5)}, r"zoneout for c must be in \[0, 1\)"),
    ({"zoneout": (0.1, 0.2, 0.3)}, r"zoneout must be a number or a pair \(p_h, p_c\)"),
    ({"zoneout": "0.1"}, r"zoneout for h must be in \[0, 1\)"),
])
def test_bad_options_are_one_line_errors(kwargs, words):
    with pytest.raises(ValueError, match=words) as info:
        rf.LSTM(3, 4, **kwargs)
    assert "\n" not in str(info.value)


def test_a_zoneout_pair_on_a_cell_with_only_h_is_an_error():
    with pytest.raises(ValueError, match=r"zoneout must be a number \(this cell has only h\)"):
        rf.GRU(3, 4, zoneout=(0.1, 0.2))


@pytest.mark.gpu
@pytest.mark.parametrize("cell", CELLS)
def test_cpu_and_gpu_draw_the_same_masks_and_agree(cell):
    import cupy as cp

    rng = np.random.default_rng(16)
    T, B = 7, 5
    layer = make_layer(cell, 4, 32, num_layers=2, bidirectional=True, dtype=np.float64, seed=17,
                       recurrent_dropout=0.3, zoneout=0.2)
    x, state = random_inputs(layer, T, B, rng)
    lengths = np.array([7, 3, 5, 1, 6])
    start = layer.rng_state()
    y, final = layer(x, as_state(layer, state), lengths)
    dy = rng.standard_normal(y.shape)
    dx, _ = layer.backward(dy)
    grads = {n: g.copy() for n, g in layer.grads.items()}
    layer.zero_grad()
    layer.to("gpu")
    layer.set_rng_state(start)
    y_gpu, _ = layer(cp.asarray(x), as_state(layer, tuple(map(cp.asarray, state))), lengths)
    dx_gpu, _ = layer.backward(cp.asarray(dy))
    np.testing.assert_allclose(cp.asnumpy(y_gpu), y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cp.asnumpy(dx_gpu), dx, rtol=1e-10, atol=1e-12)
    for name, g in layer.grads.items():
        np.testing.assert_allclose(cp.asnumpy(g), grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


# -- rnnfast train --recurrent-dropout, --zoneout ---------------------------------------------
@pytest.fixture(scope="module")
def corpus(shakespeare_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def test_train_records_the_options_so_generate_eval_and_resume_rebuild_them(corpus, tmp_path):
    from rnnfast.checkpoint import load_checkpoint
    from rnnfast.models import from_config
    from test_cli import TINY, run

    out = tmp_path / "run"
    run("train", corpus, *TINY, "--steps", 2, "--eval-every", 2, "--out", out, "--recurrent-dropout", 0.25,
        "--zoneout", "0.1,0.05")
    _, meta = load_checkpoint(out / "latest.safetensors")
    assert meta["cli"]["options"]["recurrent_dropout"] == 0.25 and meta["cli"]["options"]["zoneout"] == [0.1, 0.05]
    model = from_config(meta["model"])
    assert model.rnn.recurrent_dropout == 0.25 and model.rnn.zoneout == (0.1, 0.05)
    assert json.loads((out / "config.json").read_text())["zoneout"] == [0.1, 0.05]
    assert "nats/char" in run("eval", out / "best.safetensors").stdout
    assert run("generate", out / "best.safetensors", "--length", 20).stdout
    for flag, value in (("--zoneout", 0.3), ("--recurrent-dropout", 0.5)):
        result = run("train", "--resume", out / "latest.safetensors", "--steps", 3, flag, value, ok=False)
        assert f"{flag} {value} differs" in result.stderr
    run("train", "--resume", out / "latest.safetensors", "--steps", 3)


def test_eval_of_a_zoneout_model_scores_with_the_expectation(corpus, tmp_path):
    """The eval score is the model's in eval mode: zoneout's expectation, not a draw, so it repeats."""
    from test_cli import TINY, run

    out = tmp_path / "run"
    run("train", corpus, *TINY, "--steps", 2, "--eval-every", 2, "--out", out, "--zoneout", 0.5)
    scores = [run("eval", out / "best.safetensors").stdout for _ in range(2)]
    assert scores[0] == scores[1]


def test_a_checkpoint_from_before_the_options_still_resumes(corpus, tmp_path):
    from rnnfast.checkpoint import load_checkpoint, save_checkpoint
    from test_cli import TINY, run

    out = tmp_path / "run"
    run("train", corpus, *TINY, "--steps", 2, "--eval-every", 2, "--out", out)
    tensors, meta = load_checkpoint(out / "latest.safetensors")
    for name in ("recurrent_dropout", "zoneout"):  # as written before the options
        del meta["model"][name], meta["cli"]["options"][name]
    save_checkpoint(out / "latest.safetensors", tensors, meta)
    result = run("train", "--resume", out / "latest.safetensors", "--steps", 3)
    assert "step 3" in result.stdout + result.stderr


@pytest.mark.parametrize("args, message", [
    (["--recurrent-dropout", 1], "--recurrent-dropout"),
    (["--zoneout", -0.1], "give one fraction in [0, 1)"),
    (["--zoneout", "0.1,0.2,0.3"], "or two (P_H,P_C)"),
    (["--zoneout", "a"], "is not a number or a pair"),
    (["--zoneout", "0.1,0.2", "--cell", "gru"], "--zoneout P_H,P_C is for --cell lstm"),
])
def test_bad_options_are_one_line_cli_errors_that_create_nothing(corpus, tmp_path, args, message):
    from test_cli import TINY, run

    result = run("train", corpus, *TINY, *args, "--steps", 2, "--out", tmp_path / "run", ok=False)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
