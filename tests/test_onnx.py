"""ONNX export (issue 14): the exported file run in onnxruntime against rnnfast's own outputs, to 1e-4
relative in float32, for every cell x {1, 2} layers x {uni, bi} x task, with nonzero initial states,
lengths where the model takes them, and two (T, B) shapes through one file; then ``rnnfast export``
end to end on checkpoints of ``rnnfast train``, and its one-line errors, none of which leaves a file.

A character model is one-directional (it predicts the next character), so charlm has no bi cases.
The models' ``cell="rnn"`` is the tanh RNN; the rnn_relu cases put a relu RNN of the same shape in
the model (``Module.add``), so every task's graph is held to both activations.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import rnnfast as rf
from rnnfast.checkpoint import load_model
from rnnfast.cli import main
from rnnfast.data import Vocab
from rnnfast.errors import ExportError
from rnnfast.testing import rel_err

TOLERANCE = 1e-4  # relative, float32
# (T, B, the longest length): one file runs at each; the second batch is padded past its longest
# sequence, which the classifier cuts off and the graph runs over
SHAPES = ((7, 3, 7), (4, 5, 3))
VOCAB, FEATURES, HIDDEN = 11, 3, 8
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
SPEAKERS = ("MARCIUS", "MENENIUS")
TINY = ["--hidden", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "8", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package: pip install 'rnnfast[onnx]'")
    return pytest.importorskip("onnxruntime", reason="the exported files run in onnxruntime: pip install onnxruntime")


def session(ort, path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the test machines' cores are shared
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# -- models -------------------------------------------------------------------------------------

def build(task: str, cell: str, layers: int, bidirectional: bool, seed: int = 0):
    """A small model of ``task`` with ``cell`` (a cell-table name) in eval mode."""
    kind = "rnn" if cell.startswith("rnn") else cell
    shape = dict(hidden_size=HIDDEN, num_layers=layers, cell=kind, seed=seed)
    if task == "charlm":
        model = rf.models.CharRNN(VOCAB, embedding_dim=6, **shape)
    elif task in ("forecast", "forecast_seq"):
        model = rf.models.SeqRegressor(FEATURES, output_size=2, bidirectional=bidirectional,
                                       many_to_many=task == "forecast_seq", **shape)
    else:
        model = rf.models.SeqClassifier(VOCAB, 3, embedding_dim=6, bidirectional=bidirectional, **shape)
    if cell == "rnn_relu":
        old = model.rnn
        model.add("rnn", rf.RNN(old.input_size, HIDDEN, num_layers=layers, bidirectional=old.bidirectional,
                                batch_first=old.batch_first, nonlinearity="relu", seed=seed + 1))
    return model.eval()


def inputs(task: str, model, T: int, B: int, longest: int, rng):
    """Time-major graph inputs and what rnnfast's model takes for the same values; lengths from 1
    to ``longest`` where the graph takes them."""
    rnn = model.rnn
    states = [rng.uniform(-0.5, 0.5, (rnn.num_layers * rnn.num_directions, B, HIDDEN)).astype(np.float32)
              for _ in rnn.spec.state]
    feed = {f"{part}0": s for part, s in zip(rnn.spec.state, states)}
    states = [s.astype(rnn.dtype) for s in states]  # the graph is float32 whatever the model's dtype
    state = tuple(states) if rnn.has_cell_state else states[0]
    lengths = None
    if task in ("classify", "forecast_seq"):
        lengths = rng.integers(1, longest + 1, B)
        lengths[[0, -1]] = 1, longest
        feed["lengths"] = lengths.astype(np.int64)
    if task in ("forecast", "forecast_seq"):
        x = rng.standard_normal((T, B, FEATURES)).astype(np.float32)
        feed["x"] = x
    else:
        x = rng.integers(0, VOCAB, (T, B))
        feed["ids"] = x
    return feed, x, state, lengths


def rnnfast_outputs(task: str, model, x, state, lengths) -> dict:
    """The model's outputs under the graph's output names, time-major as the graph gives them."""
    if task == "charlm":
        logits, final = model(x, state)
        out = {"logits": logits}
    else:
        x_bf = np.ascontiguousarray(x.swapaxes(0, 1))
        pred = model(x_bf, lengths, state)
        if task == "classify":
            out = {"logits": pred, "label": pred.argmax(axis=-1)}
            x_bf = model.embed(x_bf)
        else:
            out = {"prediction": pred.swapaxes(0, 1) if model.many_to_many else pred}
        _, final = model.rnn(x_bf, state, lengths)
    finals = final if isinstance(final, tuple) else (final,)
    out.update({f"{part}n": f for part, f in zip(model.rnn.spec.state, finals)})
    return out


def parity_errors(ort, task: str, model, path, lengths=None) -> dict:
    """{output name at (T, B): relative error} of the exported file against the model, at every shape."""
    rf.export.to_onnx(model, path, lengths=lengths)
    sess = session(ort, path)
    names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(1)
    errors = {}
    for T, B, longest in SHAPES:
        feed, x, state, lens = inputs(task, model, T, B, longest, rng)
        got = dict(zip(names, sess.run(None, feed)))
        want = rnnfast_outputs(task, model, x, state, lens)
        assert sorted(got) == sorted(want)
        for name, value in want.items():
            assert got[name].shape == value.shape, name
            # for the labels, the share of them that differ
            errors[f"{name} at T={T} B={B}"] = (float((got[name] != value).mean()) if name == "label"
                                                 else rel_err(got[name], value))
    return errors


# -- parity -------------------------------------------------------------------------------------

CASES = [(task, cell, layers, bi) for task in ("charlm", "forecast", "classify") for cell in CELLS
         for layers in (1, 2) for bi in (False, True) if not (task == "charlm" and bi)]


@pytest.mark.parametrize("task, cell, layers, bidirectional", CASES,
                         ids=[f"{t}-{c}-{l}l-{'bi' if b else 'uni'}" for t, c, l, b in CASES])
def test_onnxruntime_matches_rnnfast(ort, tmp_path, task, cell, layers, bidirectional):
    model = build(task, cell, layers, bidirectional)
    errors = parity_errors(ort, task, model, tmp_path / "model.onnx")
    assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_many_to_many_forecast_with_lengths(ort, tmp_path, cell, bidirectional):
    """Every step's prediction, past a length too (the head on zeros, in both), with lengths as input."""
    model = build("forecast_seq", cell, 2, bidirectional)
    errors = parity_errors(ort, "forecast_seq", model, tmp_path / "model.onnx", lengths=True)
    assert max(errors.values()) <= TOLERANCE, errors


def test_a_float64_model_exports_as_float32(ort, tmp_path):
    model = rf.models.SeqClassifier(VOCAB, 3, hidden_size=HIDDEN, num_layers=2, cell="gru", bidirectional=True,
                                    dtype=np.float64, seed=0).eval()
    errors = parity_errors(ort, "classify", model, tmp_path / "model.onnx")
    assert max(errors.values()) <= TOLERANCE, errors


def test_training_only_regularisers_export_as_the_plain_model(ort, tmp_path):
    """Weight drop and recurrent dropout act in training only, so the eval-mode model is plain."""
    model = rf.models.CharRNN(VOCAB, hidden_size=HIDDEN, num_layers=2, cell="lstm", embedding_dim=6, seed=0,
                              weight_drop=0.3, recurrent_dropout=0.4).eval()
    errors = parity_errors(ort, "charlm", model, tmp_path / "model.onnx")
    assert max(errors.values()) <= TOLERANCE, errors


def test_graph_shape_and_operators(ort, tmp_path):
    import onnx

    model = build("classify", "lstm", 2, True)
    proto = onnx.load(str(rf.export.to_onnx(model, tmp_path / "m.onnx", metadata={"task": "classify", "n": [1]})))
    assert proto.opset_import[0].version >= 17
    lstm = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert len(lstm) == 2  # one node per layer
    assert {a.name: a for a in lstm[0].attribute}["direction"].s == b"bidirectional"
    assert [i.name for i in proto.graph.input] == ["ids", "h0", "c0", "lengths"]
    assert [o.name for o in proto.graph.output] == ["logits", "label", "hn", "cn"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["T", "B"]
    assert {p.key: p.value for p in proto.metadata_props} == {"task": "classify", "n": "[1]"}


def test_gru_is_linear_before_reset(ort, tmp_path):
    import onnx

    proto = onnx.load(str(rf.export.to_onnx(build("forecast", "gru", 1, False), tmp_path / "m.onnx")))
    (gru,) = [n for n in proto.graph.node if n.op_type == "GRU"]
    assert {a.name: a.i for a in gru.attribute}["linear_before_reset"] == 1


# -- library errors -----------------------------------------------------------------------------

def test_library_errors(ort, tmp_path):
    with pytest.raises(ExportError, match="takes a CharRNN, SeqRegressor or SeqClassifier"):
        rf.export.to_onnx(rf.LSTM(3, 4), tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="without lengths"):
        rf.export.to_onnx(build("charlm", "lstm", 1, False), tmp_path / "m.onnx", lengths=True)
    zoned = rf.models.SeqRegressor(FEATURES, hidden_size=HIDDEN, cell="gru", zoneout=0.1, seed=0).eval()
    with pytest.raises(ExportError, match="zoneout=.*cannot express; export a model trained without --zoneout"):
        rf.export.to_onnx(zoned, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(ort, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the previous export")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ExportError, match="No space left on device"):
        rf.export.to_onnx(build("charlm", "gru", 1, False), out)
    assert out.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


# -- the command line ---------------------------------------------------------------------------

def run(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    else:
        assert result.exit_code not in (0, None), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return result


@pytest.fixture(scope="module")
def corpus(shakespeare_path, tmp_path_factory):
    """A 40 KB slice of tinyshakespeare, read from shared/ (never copied into the repository)."""
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def speakers_tsv(corpus, tmp_path_factory):
    """A real text as a labelled TSV: each line of the corpus spoken by MARCIUS or MENENIUS, labelled so."""
    rows, speaker = [], None
    for line in corpus.read_text(encoding="utf-8").splitlines():
        if line.endswith(":") and line[:-1].replace(" ", "").isalpha():
            speaker = line[:-1]
        elif line and speaker in SPEAKERS:
            rows.append(f"{line}\t{speaker}")
    path = tmp_path_factory.mktemp("data") / "speakers.tsv"
    path.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def char_checkpoint(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "char"
    # two layers (the later --layers wins), so that hn stacks more than one node's state
    run("train", corpus, *TINY, "--cell", "gru", "--layers", "2", "--steps", 3, "--eval-every", 3, "--out", out)
    return out / "best.safetensors"


def test_export_a_trained_character_model_and_run_it(ort, char_checkpoint, corpus, tmp_path):
    out = tmp_path / "char.onnx"
    result = run("export", char_checkpoint, out)
    assert f"wrote {out}" in result.stdout
    assert "inputs:  ids (T, B), h0 (2, B, 16)" in result.stdout
    assert "outputs: logits (T, B" in result.stdout and "hn (2, B, 16)" in result.stdout
    sess = session(ort, out)
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["task"] == "charlm"
    vocab = Vocab.from_dict(json.loads(meta["vocab"]))
    model, _ = load_model(char_checkpoint)
    text = corpus.read_text(encoding="utf-8")[1000:1240]
    ids = vocab.encode(text).reshape(4, 60).T.astype(np.int64)  # (T=60, B=4)
    h0 = np.zeros((2, 4, 16), np.float32)
    logits, hn = sess.run(None, {"ids": ids, "h0": h0})
    want_logits, want_hn = model(ids, h0)
    assert rel_err(logits, want_logits) <= TOLERANCE and rel_err(hn, want_hn) <= TOLERANCE
    # the state carries on: the next 60 characters from hn, as rnnfast's model does
    logits2, _ = sess.run(None, {"ids": ids[::-1].copy(), "h0": hn})
    assert rel_err(logits2, model(ids[::-1].copy(), want_hn)[0]) <= TOLERANCE


def test_export_a_trained_classifier_and_run_it(ort, speakers_tsv, tmp_path):
    run_dir = tmp_path / "run"
    run("train", speakers_tsv, "--task", "classify", "--bidirectional", *TINY, "--steps", 3, "--eval-every", 3,
        "--out", run_dir)
    out = tmp_path / "speakers.onnx"
    run("export", run_dir / "best.safetensors", out)
    sess = session(ort, out)
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["task"] == "classify" and sorted(json.loads(meta["labels"])) == sorted(SPEAKERS)
    vocab = Vocab.from_dict(json.loads(meta["vocab"]))
    texts = [row.split("\t")[0] for row in speakers_tsv.read_text(encoding="utf-8").splitlines()[1:6]]
    ids, lengths = rf.tasks.encode_texts(vocab, texts, 16, "texts")  # padded (B, T) as training padded them
    h0 = np.zeros((2, len(texts), 16), np.float32)
    logits, label, hn, cn = sess.run(None, {"ids": ids.T.astype(np.int64), "h0": h0, "c0": h0,
                                            "lengths": lengths.astype(np.int64)})
    model, _ = load_model(run_dir / "best.safetensors")
    want = model(ids, lengths)
    assert rel_err(logits, want) <= TOLERANCE and (label == want.argmax(-1)).all()


def test_export_a_trained_forecaster(ort, tmp_path):
    t = np.arange(300)
    csv = tmp_path / "sine.csv"
    csv.write_text("t,value\n" + "".join(f"{a},{np.sin(a / 4):.5f}\n" for a in t))
    run_dir = tmp_path / "run"
    run("train", csv, "--task", "forecast", "--column", "value", "--window", 12, "--horizon", 2, *TINY,
        "--steps", 3, "--out", run_dir)
    out = tmp_path / "sine.onnx"
    run("export", run_dir / "latest.safetensors", out)
    sess = session(ort, out)
    assert json.loads(sess.get_modelmeta().custom_metadata_map["scaler"])["kind"]
    x = np.sin(np.arange(24, dtype=np.float32) / 4).reshape(2, 12, 1)  # (B, T, 1)
    h0 = np.zeros((1, 2, 16), np.float32)
    (prediction, hn, cn) = sess.run(None, {"x": x.transpose(1, 0, 2).copy(), "h0": h0, "c0": h0})
    model, _ = load_model(run_dir / "latest.safetensors")
    assert prediction.shape == (2, 2) and rel_err(prediction, model(x)) <= TOLERANCE


def test_export_a_trained_multivariate_forecaster(ort, tmp_path):
    """train --features: x is (T, B, 1 + features), the target first, with the features' scaler in the metadata."""
    t = np.arange(300)
    csv = tmp_path / "two.csv"
    csv.write_text("t,value,lead\n" + "".join(f"{a},{np.sin(a / 4):.5f},{np.sin((a + 2) / 4):.5f}\n" for a in t))
    run_dir = tmp_path / "run"
    run("train", csv, "--task", "forecast", "--column", "value", "--features", "lead", "--window", 12, *TINY,
        "--steps", 3, "--out", run_dir)
    out = tmp_path / "two.onnx"
    result = run("export", run_dir / "latest.safetensors", out)
    assert "inputs:  x (T, B, 2)" in result.stdout
    sess = session(ort, out)
    features = json.loads(sess.get_modelmeta().custom_metadata_map["features"])
    assert features["columns"] == ["lead"] and features["scaler"]["kind"] == "standard"
    x = np.random.default_rng(0).standard_normal((3, 12, 2)).astype(np.float32)  # (B, T, 2)
    h0 = np.zeros((1, 3, 16), np.float32)
    prediction, _, _ = sess.run(None, {"x": x.transpose(1, 0, 2).copy(), "h0": h0, "c0": h0})
    model, _ = load_model(run_dir / "latest.safetensors")
    assert prediction.shape == (3, 1) and rel_err(prediction, model(x)) <= TOLERANCE


@pytest.fixture
def no_file_left(tmp_path):
    """A destination directory; after the test it must hold only what was there before."""
    directory = tmp_path / "dest"
    directory.mkdir()
    (directory / "old.onnx").write_bytes(b"an earlier export")
    yield directory
    assert [p.name for p in directory.iterdir()] == ["old.onnx"]
    assert (directory / "old.onnx").read_bytes() == b"an earlier export"


def test_missing_onnx_says_what_to_install(char_checkpoint, no_file_left, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    result = run("export", char_checkpoint, no_file_left / "old.onnx", ok=False)
    assert "pip install 'rnnfast[onnx]'" in result.stderr


@pytest.mark.parametrize("kind, message", [
    ("missing", "checkpoint not found"),
    ("truncated", "truncated or corrupt"),
    ("directory", "is a directory"),
])
def test_an_unreadable_checkpoint_is_one_line(ort, kind, message, char_checkpoint, no_file_left, tmp_path):
    path = tmp_path / "bad.safetensors"
    if kind == "truncated":
        path.write_bytes(char_checkpoint.read_bytes()[:500])
    elif kind == "directory":
        path.mkdir()
    result = run("export", path, no_file_left / "old.onnx", ok=False)
    assert message in result.stderr


@pytest.mark.parametrize("kind, message", [
    ("no such directory", "does not exist"),
    ("a file for a directory", "is not a directory"),
    ("a directory", "is a directory"),
    ("read-only directory", "Permission denied"),
])
def test_an_unwritable_out_is_one_line(ort, kind, message, char_checkpoint, no_file_left):
    out = {"no such directory": no_file_left / "missing" / "m.onnx", "a directory": no_file_left,
           "a file for a directory": no_file_left / "old.onnx" / "m.onnx",
           "read-only directory": no_file_left / "m.onnx"}[kind]
    if kind == "read-only directory" and os.geteuid() == 0:
        # root writes wherever a mode forbids it; sysfs refuses even root
        if not os.path.isdir("/sys"):
            pytest.skip("running as root without /sys: no directory refuses root's writes")
        out = Path("/sys/rnnfast-test.onnx")
    no_file_left.chmod(0o555 if kind == "read-only directory" else 0o755)
    try:
        result = run("export", char_checkpoint, out, ok=False)
    finally:
        no_file_left.chmod(0o755)
    assert message in result.stderr
    assert not out.exists() or out.is_dir()
