"""rnnfast predict (issue 14) end to end on real files, each checkpoint from rnnfast train: a sunspot-like
series (a noisy eleven-year cycle, monthly, with a correlated solar-flux column for the multivariate
forecaster), a TSV of tinyshakespeare's lines labelled with their speaker, and tinyshakespeare itself.

What predict gives is held to the model run by hand: the forecast's feeding of its own predictions
back in to a plain loop, in the column's units through the scaler inverted by hand; a label's
probability to the softmax of the logits; a line's nats per character to the cross-entropy of the
model on that line. Every bad input is one line on stderr, leaves no output file, and leaves the
checkpoints byte for byte as they were.
"""
import csv
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest

from rnnfast.checkpoint import load_model
from rnnfast.data import Vocab, load_csv_columns
from rnnfast.losses import cross_entropy, softmax
from rnnfast.tasks import encode_texts
from test_onnx import SPEAKERS, TINY, corpus, run, speakers_tsv  # noqa: F401  (fixtures used by name)

WINDOW, HORIZON = 24, 3
CPU = ("--device", "cpu")


def sunspot_rows(months: np.ndarray, seed: int = 0) -> list[tuple[int, float, float]]:
    """(month, sunspots, flux): counts that rise and fall over an eleven-year cycle with noise, never
    below zero, and a 10.7 cm radio flux that follows them (the two are correlated, as on the Sun)."""
    rng = np.random.default_rng(seed)
    phase = 2 * np.pi * months / 132
    spots = np.maximum(0.0, 90 * (0.5 - 0.5 * np.cos(phase)) ** 1.5 + rng.normal(0, 8, len(months)))
    flux = 65 + 0.9 * spots + rng.normal(0, 4, len(months))
    return list(zip(months.tolist(), spots.round(1).tolist(), flux.round(1).tolist()))


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sunspots_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "sunspots.csv", ("month", "sunspots", "flux"),
                     sunspot_rows(np.arange(600)))


def train(tmp_path_factory, name, *args):
    out = tmp_path_factory.mktemp("runs") / name
    run("train", *args, *TINY, "--steps", 12, "--eval-every", 12, "--out", out)
    return out / "best.safetensors"


@pytest.fixture(scope="module")
def forecaster(sunspots_csv, tmp_path_factory):
    return train(tmp_path_factory, "forecast", sunspots_csv, "--task", "forecast", "--column", "sunspots",
                 "--window", WINDOW, "--horizon", HORIZON)


@pytest.fixture(scope="module")
def multivariate(sunspots_csv, tmp_path_factory):
    return train(tmp_path_factory, "multivariate", sunspots_csv, "--task", "forecast", "--column", "sunspots",
                 "--features", "flux", "--window", WINDOW, "--horizon", HORIZON)


@pytest.fixture(scope="module")
def classifier(speakers_tsv, tmp_path_factory):
    return train(tmp_path_factory, "classify", speakers_tsv, "--task", "classify")


@pytest.fixture(scope="module")
def char_model(corpus, tmp_path_factory):
    return train(tmp_path_factory, "charlm", corpus)


def predict(*args, ok=True):
    return run("predict", *args, *CPU, ok=ok)


def read_rows(text: str, delimiter=","):
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    return rows[0], rows[1:]


def scaled_by_hand(meta, values):
    """A column scaled as training scaled it, from the scaler's offset and scale in the checkpoint."""
    return (values - np.asarray(meta["offset"])) / np.asarray(meta["scale"])


def forecast_by_hand(model, rows, steps, future=()):
    """The recursive forecast as a plain loop: rows (N, F) in the model's units; each pass predicts
    HORIZON values from the last WINDOW rows, which are appended (with the future features) and read."""
    rows, out = [list(r) for r in rows], []
    while len(out) < steps:
        pred = model.predict(np.array(rows[-WINDOW:])[None])[0]
        for k, value in enumerate(pred):
            out.append(float(value))
            done = len(out) - 1
            rows.append([value, *(future[done] if done < len(future) else [])])
    return np.array(out[:steps])


# -- forecast -----------------------------------------------------------------------------------

def test_forecast_past_the_training_series_feeds_its_predictions_back(forecaster, sunspots_csv, tmp_path):
    out = tmp_path / "next.csv"
    result = predict(forecaster, "--steps", 10, "--out", out)
    assert result.stdout == f"wrote {out} (10 rows)\n"
    header, rows = read_rows(out.read_text())
    assert header == ["step", "sunspots"] and [int(r[0]) for r in rows] == list(range(1, 11))
    got = np.array([float(r[-1]) for r in rows])

    model, meta = load_model(forecaster)
    series = load_csv_columns(sunspots_csv, ["sunspots"])  # DATA defaults to the training CSV
    scaled = scaled_by_hand(meta["scaler"], series)
    want = forecast_by_hand(model, scaled, 10) * meta["scaler"]["scale"] + meta["scaler"]["offset"]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_forecast_within_the_horizon_is_one_pass_in_the_columns_units(forecaster, tmp_path):
    """Another series as DATA; the first pass by hand: the scaler applied and inverted with its numbers."""
    other = write_csv(tmp_path / "later.csv", ("month", "sunspots", "flux"), sunspot_rows(np.arange(600, 700), seed=1))
    result = predict(forecaster, other, "--json")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # --steps defaults to the horizon
    model, meta = load_model(forecaster)
    offset, scale = meta["scaler"]["offset"], meta["scaler"]["scale"]
    last = (load_csv_columns(other, ["sunspots"])[-WINDOW:, 0] - offset) / scale
    want = model.predict(last[None]).astype(np.float64)[0] * scale + offset
    np.testing.assert_allclose([r["sunspots"] for r in records], want, rtol=1e-12)
    assert 0 < np.mean(want) < 150  # sunspot counts, not standardised units


def test_forecast_plot(forecaster, tmp_path, monkeypatch):
    png = tmp_path / "forecast.png"
    pytest.importorskip("matplotlib")
    result = predict(forecaster, "--steps", 24, "--plot", png)
    assert result.stdout.endswith(f"wrote {png}\n") and result.stdout.startswith("step,sunspots\n")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without matplotlib: one line, and neither --out nor --plot written
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "rows.csv"
    result = predict(forecaster, "--plot", tmp_path / "again.png", "--out", out, ok=False)
    assert "pip install 'rnnfast[plot]'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forecast.png"]


# -- multivariate -------------------------------------------------------------------------------

def test_a_multivariate_forecaster_reads_the_same_columns_in_eval_and_predict(multivariate, sunspots_csv,
                                                                              tmp_path):
    model, meta = load_model(multivariate)
    assert model.input_size == 2 and meta["features"]["columns"] == ["flux"]
    assert meta["cli"]["options"]["features"] == "flux"
    values = load_csv_columns(sunspots_csv, ["sunspots", "flux"])
    a = int(round(len(values) * 0.9))  # each column standardised on the training part only
    np.testing.assert_allclose(meta["features"]["scaler"]["offset"], [values[:a, 1].mean()])
    np.testing.assert_allclose(meta["scaler"]["offset"], values[:a, 0].mean())

    held_out = json.loads(run("eval", multivariate, "--json", *CPU).stdout)
    other = write_csv(tmp_path / "later.csv", ("month", "sunspots", "flux"), sunspot_rows(np.arange(600, 700), 1))
    on_file = json.loads(run("eval", multivariate, other, "--json", *CPU).stdout)
    assert held_out["metrics"]["rmse_original_units"] > 0 and on_file["metrics"]["rmse_original_units"] > 0
    no_flux = write_csv(tmp_path / "no_flux.csv", ("month", "sunspots"), [(1, 2.0)] * 40)
    assert "has no column 'flux'" in run("eval", multivariate, no_flux, *CPU, ok=False).stderr

    # within the horizon the data's own rows suffice
    rows = np.column_stack([scaled_by_hand(meta["scaler"], values[:, 0]),
                            scaled_by_hand(meta["features"]["scaler"], values[:, 1])])
    unscale = lambda v: v * meta["scaler"]["scale"] + meta["scaler"]["offset"]  # noqa: E731
    got = [float(r[-1]) for r in read_rows(predict(multivariate).stdout)[1]]
    np.testing.assert_allclose(got, unscale(forecast_by_hand(model, rows, HORIZON)), rtol=1e-12)


def test_past_the_horizon_a_multivariate_forecast_needs_the_future_features(multivariate, tmp_path):
    result = predict(multivariate, "--steps", 8, ok=False)
    assert "needs their values at the next 6 steps" in result.stderr and "--future" in result.stderr

    future_flux = np.array([r[2] for r in sunspot_rows(np.arange(600, 610), seed=2)])
    future = write_csv(tmp_path / "future.csv", ("month", "flux"), zip(range(600, 610), future_flux))
    got = [float(r[-1]) for r in read_rows(predict(multivariate, "--steps", 8, "--future", future).stdout)[1]]
    model, meta = load_model(multivariate)
    values = load_csv_columns(meta["cli"]["options"]["data"], ["sunspots", "flux"])
    rows = np.column_stack([scaled_by_hand(meta["scaler"], values[:, 0]),
                            scaled_by_hand(meta["features"]["scaler"], values[:, 1])])
    future_scaled = scaled_by_hand(meta["features"]["scaler"], future_flux)[:, None]
    want = forecast_by_hand(model, rows, 8, future_scaled) * meta["scaler"]["scale"] + meta["scaler"]["offset"]
    np.testing.assert_allclose(got, want, rtol=1e-12)

    short = write_csv(tmp_path / "short.csv", ("month", "flux"), [(600, 70.0), (601, 71.0)])
    result = predict(multivariate, "--steps", 8, "--future", short, ok=False)
    assert "the future values given hold 2; give 6 rows, or forecast at most 3 steps" in result.stderr


def test_a_multivariate_run_resumes_with_its_features(multivariate, tmp_path):
    copy = shutil.copytree(multivariate.parent, tmp_path / "run")  # the module's checkpoint stays as it is
    result = run("train", "--resume", copy / "latest.safetensors", "--features", "month", "--steps", 13,
                 "--no-progress", *CPU, ok=False)
    assert "--features month differs from the resumed run's flux" in result.stderr
    result = run("train", "--resume", copy / "latest.safetensors", "--steps", 13, "--no-progress", *CPU)
    assert "stopped at step 13" in result.stdout and "with features 'flux'" in result.stderr


def test_a_forecaster_from_before_features_resumes_evaluates_and_predicts(forecaster, tmp_path):
    from rnnfast.checkpoint import load_checkpoint, save_checkpoint

    copy = shutil.copytree(forecaster.parent, tmp_path / "run")
    tensors, meta = load_checkpoint(copy / "latest.safetensors")
    del meta["cli"]["options"]["features"]  # as written before the option
    save_checkpoint(copy / "latest.safetensors", tensors, meta)
    assert len(read_rows(predict(copy / "latest.safetensors", "--steps", 4).stdout)[1]) == 4
    assert json.loads(run("eval", copy / "latest.safetensors", "--json", *CPU).stdout)["metrics"]["rmse"] > 0
    result = run("train", "--resume", copy / "latest.safetensors", "--steps", 13, "--no-progress", *CPU)
    assert "stopped at step 13" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--task", "classify", "--features", "flux"], "--features is for --task forecast"),
    (["--task", "forecast", "--column", "sunspots", "--features", "sunspots"], "names the --column 'sunspots'"),
    (["--task", "forecast", "--column", "sunspots", "--features", "flux,flux"], "names 'flux' twice"),
    (["--task", "forecast", "--column", "sunspots", "--features", "flux,"], "has an empty column name"),
    (["--task", "forecast", "--column", "sunspots", "--features", "spots"], "no column 'spots'"),
])
def test_bad_features_are_one_line_and_leave_no_run(sunspots_csv, tmp_path, args, message):
    result = run("train", sunspots_csv, *args, *TINY, "--steps", 1, "--out", tmp_path / "run", ok=False)
    assert message in result.stderr
    if message.startswith("no column"):
        assert "(--features)" in result.stderr  # the option that named it
    assert not (tmp_path / "run").exists()


# -- classify -----------------------------------------------------------------------------------

def test_classify_labels_each_line_of_a_text(classifier, speakers_tsv, tmp_path):
    texts = [row.split("\t")[0] for row in speakers_tsv.read_text(encoding="utf-8").splitlines()[1:6]]
    lines = tmp_path / "new.txt"
    lines.write_text(f"{texts[0]}\n\n" + "\n".join(texts[1:]) + "\n", encoding="utf-8")  # a blank line is skipped
    header, rows = read_rows(predict(classifier, lines).stdout)
    assert header == ["line", "text", "label", "probability"]
    assert [int(r[0]) for r in rows] == [1, 3, 4, 5, 6] and [r[1] for r in rows] == texts

    model, meta = load_model(classifier)
    ids, lengths = encode_texts(Vocab.from_dict(meta["vocab"]), texts, 16, "texts")
    probs = softmax(model(ids, lengths).astype(np.float64))
    assert [r[2] for r in rows] == [meta["labels"][k] for k in probs.argmax(-1)]
    np.testing.assert_allclose([float(r[3]) for r in rows], probs.max(-1), rtol=1e-5)

    records = [json.loads(line) for line in predict(classifier, lines, "--json").stdout.splitlines()]
    assert all(sorted(r["probabilities"]) == sorted(SPEAKERS) for r in records)
    np.testing.assert_allclose([sum(r["probabilities"].values()) for r in records], 1.0, rtol=1e-6)
    assert all(r["probabilities"][r["label"]] == r["probability"] for r in records)


def test_classify_reads_the_text_column_of_a_table(classifier, speakers_tsv, tmp_path):
    out = tmp_path / "labelled.tsv"
    predict(classifier, speakers_tsv, "--out", out)
    header, rows = read_rows(out.read_text(encoding="utf-8"), delimiter="\t")
    n_texts = len(speakers_tsv.read_text(encoding="utf-8").splitlines()) - 1
    assert header == ["line", "text", "label", "probability"] and len(rows) == n_texts
    assert {r[2] for r in rows} <= set(SPEAKERS) and all(0.5 <= float(r[3]) <= 1 for r in rows)
    renamed = tmp_path / "renamed.csv"
    with open(renamed, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["words"], *([r[1]] for r in rows[:3])])
    _, again = read_rows(predict(classifier, renamed, "--text-column", "words").stdout)
    assert [r[2:] for r in again] == [r[2:] for r in rows[:3]]


# -- charlm -------------------------------------------------------------------------------------

def test_charlm_scores_each_line(char_model, corpus, tmp_path):
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines()[40:50] if line][:3]
    lines.append("aaaa aaaa aaaa aaaa")
    text = tmp_path / "lines.txt"
    text.write_text(f"{lines[0]}\n\n" + "\n".join(lines[1:]) + "\n", encoding="utf-8")  # a blank line is skipped
    header, rows = read_rows(predict(char_model, text).stdout)
    assert header == ["line", "characters", "nats_per_char", "bpc", "perplexity", "text"]
    assert [r[-1] for r in rows] == lines and [int(r[1]) for r in rows] == [len(line) for line in lines]
    assert [int(r[0]) for r in rows] == [1, 3, 4, 5]

    model, meta = load_model(char_model)
    vocab = Vocab.from_dict(meta["vocab"])
    for row, line in zip(rows, lines):
        ids = vocab.encode("\n" + line).astype(np.int64)  # read after a new line, from a zero state
        logits, _ = model(ids[:-1, None])
        nats = cross_entropy(logits[:, 0], ids[1:])[0]
        assert float(row[2]) == pytest.approx(nats, rel=1e-5)
        assert float(row[3]) == pytest.approx(float(row[2]) / math.log(2), rel=1e-12)
        assert float(row[4]) == pytest.approx(math.exp(float(row[2])), rel=1e-12)


# -- bad input ----------------------------------------------------------------------------------

@pytest.fixture
def untouched(forecaster, multivariate, classifier, char_model):
    """The checkpoints; after the test each must hold the bytes it held before."""
    paths = {"forecaster": forecaster, "multivariate": multivariate, "classifier": classifier, "charlm": char_model}
    before = {name: p.read_bytes() for name, p in paths.items()}
    yield paths
    assert {name: p.read_bytes() for name, p in paths.items()} == before


BAD = {
    "a forecaster given a TSV of texts": ("forecaster", ["{speakers}"], "has no column 'sunspots'"),
    "a classifier given a series": ("classifier", ["{sunspots}"], "has no column 'text'"),
    "a character model given a binary file": ("charlm", ["{checkpoint}"], "not valid utf-8 text"),
    "a classifier given characters it does not know": ("classifier", ["{snowman}"],
                                                       "line 2: 1 character(s) not in the model's vocabulary: '☃'"),
    "a character model given characters it does not know": ("charlm", ["{snowman}"],
                                                            "line 2: 1 character(s) not in the model's vocabulary"),
    "a series shorter than --window": ("forecaster", ["{short}"], "too short: 10 values, but at least 24"),
    "--steps 0": ("forecaster", ["--steps", "0"], "Invalid value for '--steps'"),
    "--steps for a classifier": ("classifier", ["{speakers}", "--steps", "3"], "--steps is for a forecaster"),
    "--future for a forecaster without features": ("forecaster", ["--future", "{short}"], "reads none"),
    "a classifier without DATA": ("classifier", [], "pass DATA"),
    "--out in a missing directory": ("forecaster", ["--out", "{tmp}/missing/f.csv"], "No such file or directory"),
    "--out a directory": ("forecaster", ["--out", "{tmp}"], "Is a directory"),
    "--out the checkpoint": ("forecaster", ["--out", "{checkpoint}"], "is the checkpoint"),
    "--out the data": ("classifier", ["{speakers}", "--out", "{speakers}"], "is DATA"),
    "--plot the checkpoint": ("forecaster", ["--plot", "{checkpoint}"], "is the checkpoint"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_and_touches_nothing(name, untouched, speakers_tsv, sunspots_csv, tmp_path):
    which, args, message = BAD[name]
    snowman = tmp_path / "snowman.txt"
    snowman.write_text("First Citizen:\nWe are all \u2603 resolved\n", encoding="utf-8")
    short = write_csv(tmp_path / "short.csv", ("month", "sunspots", "flux"), sunspot_rows(np.arange(10)))
    before = sorted(p.name for p in tmp_path.iterdir())
    fill = dict(speakers=speakers_tsv, sunspots=sunspots_csv, checkpoint=untouched[which], snowman=snowman,
                short=short, tmp=tmp_path)
    result = predict(untouched[which], *(a.format(**fill) for a in args), ok=False)
    assert message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(forecaster, tmp_path, monkeypatch):
    out = tmp_path / "f.csv"
    out.write_text("the previous forecast\n")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    result = predict(forecaster, "--out", out, ok=False)
    assert "cannot write" in result.stderr and "No space left on device" in result.stderr
    assert out.read_text() == "the previous forecast\n" and [p.name for p in tmp_path.iterdir()] == ["f.csv"]
