"""layer_norm=True on RNN, LSTM and GRU (issue 13): the input and recurrent pre-activations each
normalised with their own gain and bias, and the LSTM's c' before the output tanh. Gradients of
the layer against float64 central differences (every cell x {1, 2} layers x {uni, bi} x lengths,
alone and with recurrent dropout, zoneout and weight drop, the masks fixed); the layer against the
reference cells; layer_norm=False as the plain layer bit for bit; the parameters' names, shapes and
init; the cells; errors. The kernels with the option are held to the reference in
test_reference.py and, under the CUDA simulator, test_cuda_sim.py."""
import numpy as np
import pytest

import rnnfast as rf
from rnnfast.kernels.cpu import reference
from rnnfast.recurrent import param_shapes
from test_recurrent import as_state, as_tuple, check_layer_gradients, make_layer, random_inputs

CELLS = ["rnn_tanh", "lstm", "gru"]
WITH = {"alone": {}, "regularised": {"recurrent_dropout": 0.3, "zoneout": 0.3, "weight_drop": 0.3}}


def scrambled(layer, rng):
    """``layer`` with its layer-norm gains and biases moved off their init (1 and 0), so that the
    gradient checks see every term."""
    for name, p in layer.params.items():
        if name.startswith("layernorm_"):
            p[...] = (1 if name.endswith(".weight") else 0) + 0.3 * rng.standard_normal(p.shape)
    return layer


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("option", list(WITH))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_gradients_match_central_differences(cell, option, num_layers, bidirectional, use_lengths):
    rng = np.random.default_rng(1)
    T, B, I, H = 4, 3, 3, 4
    layer = scrambled(make_layer(cell, I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64,
                                 seed=2, dropout=0.2, layer_norm=True, **WITH[option]), rng)
    x, state = random_inputs(layer, T, B, rng)
    lengths = np.array([4, 2, 1]) if use_lengths else None
    check_layer_gradients(layer, x, state, lengths, rng, entries=6)


@pytest.mark.parametrize("cell", CELLS)
def test_the_layer_runs_the_reference_cells(cell):
    rng = np.random.default_rng(3)
    layer = scrambled(make_layer(cell, 5, 6, num_layers=2, dtype=np.float64, seed=4, layer_norm=True), rng)
    x, state = random_inputs(layer, 6, 4, rng)
    y, final = layer(x, as_state(layer, state))
    forward = reference.KERNELS[layer.spec.name][0]
    inp, finals = x, []
    for l in range(2):
        norms = tuple(layer.params[n] for n in rf.recurrent.layer_norm_names(cell, l))
        inp, f, _ = forward(inp, tuple(s[l] for s in state), layer.direction_weights(l), None, layer_norm=norms)
        finals.append(f)
    np.testing.assert_allclose(y, inp, rtol=1e-12, atol=1e-12)
    for a, parts in zip(as_tuple(final), zip(*finals)):
        np.testing.assert_allclose(a, np.stack(parts), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_norm_false_is_the_plain_layer_bitwise(cell):
    rng = np.random.default_rng(7)
    kwargs = dict(num_layers=2, bidirectional=True, dtype=np.float32, seed=8, dropout=0.2)
    layer, plain = make_layer(cell, 4, 5, layer_norm=False, **kwargs), make_layer(cell, 4, 5, **kwargs)
    x, state = random_inputs(layer, 6, 3, rng, np.float32)
    lengths = np.array([6, 2, 4])
    y, final = layer(x, as_state(layer, state), lengths)
    y0, final0 = plain(x, as_state(plain, state), lengths)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, ds = layer.backward(dy)
    dx0, ds0 = plain.backward(dy)
    for a, b in [(y, y0), (dx, dx0), *zip(as_tuple(final), as_tuple(final0)), *zip(as_tuple(ds), as_tuple(ds0))]:
        assert np.array_equal(a, b)
    assert layer.grads.keys() == plain.grads.keys()
    assert all(np.array_equal(layer.grads[k], plain.grads[k]) for k in plain.grads)


def test_weights_are_those_of_the_plain_layer_and_the_norms_start_at_identity():
    """The same seed draws the same W and b with and without layer norm: gains 1 and biases 0 take
    no draw, so a layer-norm model differs from its plain twin only by the norms."""
    plain = rf.LSTM(3, 4, num_layers=2, bidirectional=True, seed=5)
    normed = rf.LSTM(3, 4, num_layers=2, bidirectional=True, seed=5, layer_norm=True)
    for name, p in plain.params.items():
        assert np.array_equal(p, normed.params[name])
    extra = sorted(set(normed.params) - set(plain.params))
    assert len(extra) == 2 * 2 * 6
    for name in extra:
        assert np.all(normed.params[name] == (1 if name.endswith(".weight") else 0)), name


@pytest.mark.parametrize("cell,gates,names", [
    ("lstm", 4, ["layernorm_ih_l{k}{s}.weight", "layernorm_ih_l{k}{s}.bias", "layernorm_hh_l{k}{s}.weight",
                 "layernorm_hh_l{k}{s}.bias", "layernorm_c_l{k}{s}.weight", "layernorm_c_l{k}{s}.bias"]),
    ("gru", 3, ["layernorm_ih_l{k}{s}.weight", "layernorm_ih_l{k}{s}.bias", "layernorm_hh_l{k}{s}.weight",
                "layernorm_hh_l{k}{s}.bias"]),
])
def test_state_dict_names_and_shapes(cell, gates, names):
    H = 5
    layer = make_layer(cell, 3, H, num_layers=2, bidirectional=True, layer_norm=True, seed=0)
    state = layer.state_dict()
    for k in range(2):
        for s in ("", "_reverse"):
            for name in names:
                full = name.format(k=k, s=s)
                assert state[full].shape == ((H,) if "_c_" in full else (gates * H,)), full
    assert {k: v.shape for k, v in state.items()} == param_shapes(cell, 3, H, 2, True, True, layer_norm=True)
    other = make_layer(cell, 3, H, num_layers=2, bidirectional=True, layer_norm=True, seed=1)
    other.load_state_dict(state)
    assert all(np.array_equal(other.params[k], v) for k, v in state.items())
    with pytest.raises(KeyError, match="unexpected"):
        make_layer(cell, 3, H, num_layers=2, bidirectional=True, seed=1).load_state_dict(state)


def test_eval_mode_is_deterministic_and_the_cells_take_layer_norm():
    rng = np.random.default_rng(9)
    cell = rf.LSTMCell(3, 4, dtype=np.float64, seed=0, layer_norm=True)
    assert "layernorm_c.weight" in cell.params and "layernorm_ih.bias" in cell.params
    layer = rf.GRU(3, 4, dtype=np.float64, seed=0, layer_norm=True, zoneout=0.2).eval()
    x = rng.standard_normal((5, 2, 3))
    assert np.array_equal(layer(x)[0], layer(x)[0])
    x1 = rng.standard_normal((2, 3))
    h, c = cell(x1)
    dx, (dh, dc) = cell.backward((np.ones_like(h), np.ones_like(c)))
    assert dx.shape == (2, 3) and np.all(np.isfinite(cell.grads["layernorm_c.weight"]))


def test_layer_norm_must_be_a_bool():
    with pytest.raises(TypeError, match="layer_norm must be True or False"):
        rf.GRU(3, 4, layer_norm="yes")


# -- models, checkpoints, the CLI ------------------------------------------------------------------
def test_models_take_record_and_rebuild_layer_norm():
    from rnnfast.models import CharRNN, SeqClassifier, SeqRegressor, from_config

    for model in (CharRNN(7, hidden_size=8, num_layers=2, seed=0, layer_norm=True),
                  SeqRegressor(2, hidden_size=8, cell="gru", bidirectional=True, seed=0, layer_norm=True),
                  SeqClassifier(7, 3, hidden_size=8, seed=0, layer_norm=True)):
        config = model.config()
        assert config["layer_norm"] is True and model.rnn.layer_norm
        assert type(model).param_shapes({k: v for k, v in config.items() if k != "class"}) == \
            {k: tuple(v.shape) for k, v in model.params.items()}
        assert "rnn.layernorm_hh_l0.weight" in model.params
        assert from_config(config).rnn.layer_norm
    old = CharRNN(7, hidden_size=8, seed=0).config()
    del old["layer_norm"]  # a config from before the option builds the plain model
    assert not from_config(old).rnn.layer_norm


def test_sampling_steps_aside_and_export_refuses():
    from rnnfast.errors import ExportError
    from rnnfast.export import onnx_model
    from rnnfast.models import CharRNN

    model = CharRNN(7, hidden_size=8, num_layers=1, seed=0, layer_norm=True).eval()
    assert model._compiled_sampler(True, 10**6) is None  # even asked for, and with a long text
    assert len(model.sample([1, 2], length=5, seed=0, compiled=True)) == 2 + 5  # the prime, then 5
    with pytest.raises(ExportError, match="--layer-norm"):
        onnx_model(model)


@pytest.fixture(scope="module")
def corpus(shakespeare_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def test_train_layer_norm_is_recorded_and_generate_eval_resume_rebuild_it(corpus, tmp_path):
    from rnnfast.checkpoint import load_checkpoint
    from rnnfast.models import from_config
    from test_cli import TINY, digests, run

    out = tmp_path / "run"
    run("train", corpus, *TINY, "--steps", 2, "--eval-every", 2, "--out", out, "--layer-norm")
    tensors, meta = load_checkpoint(out / "latest.safetensors")
    assert meta["cli"]["options"]["layer_norm"] is True and meta["model"]["layer_norm"] is True
    assert "rnn.layernorm_c_l0.weight" in tensors and from_config(meta["model"]).rnn.layer_norm
    assert "nats/char" in run("eval", out / "best.safetensors").stdout
    assert run("generate", out / "best.safetensors", "--length", 20).stdout
    run("train", "--resume", out / "latest.safetensors", "--steps", 3)
    result = run("train", "--resume", out / "latest.safetensors", "--steps", 4, "--no-layer-norm", ok=False)
    assert "--no-layer-norm" in result.stderr


def test_layer_norm_with_a_checkpoint_that_has_none_is_a_one_line_error(corpus, tmp_path):
    from rnnfast.checkpoint import load_checkpoint, save_checkpoint
    from test_cli import TINY, digests, run

    out = tmp_path / "run"
    run("train", corpus, *TINY, "--steps", 2, "--eval-every", 2, "--out", out)
    tensors, meta = load_checkpoint(out / "latest.safetensors")
    del meta["model"]["layer_norm"], meta["cli"]["options"]["layer_norm"]  # as written before the option
    save_checkpoint(out / "latest.safetensors", tensors, meta)
    before = digests(out)
    for flags in (["--resume", out / "latest.safetensors", "--steps", 3],
                  [corpus, "--init-from", out / "latest.safetensors", *TINY, "--steps", 1, "--out", tmp_path / "new"]):
        result = run("train", *flags, "--layer-norm", ok=False)
        assert "--layer-norm: the" in result.stderr and "has no layer norm" in result.stderr
    assert digests(out) == before and not (tmp_path / "new").exists()
    run("train", "--resume", out / "latest.safetensors", "--steps", 3)  # without the flag it resumes, plain
