"""The command line end to end through Click's runner: train (charlm, forecast, classify), resume,
time budget, Ctrl-C, generate, eval, bench, config files, and every bad input of issue 4 (one line,
non-zero exit, no good checkpoint overwritten). Models are tiny so the file runs in well under 2 min."""
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnnfast.backend import gpu_unavailable_reason
from rnnfast.checkpoint import load_checkpoint, save_checkpoint
from rnnfast.cli import main

TINY = ["--hidden", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "8", "--device", "cpu", "--no-progress"]

try:
    import matplotlib  # noqa: F401

    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False


def run(*args, ok=True):
    """Invoke ``rnnfast *args``; with ``ok`` assert success, otherwise assert a one-line user error."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    else:
        assert_one_line_error(result)
    return result


def assert_one_line_error(result):
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr


def digests(directory: Path) -> dict:
    """Content hashes of a run directory's checkpoints, to prove that a failed command left them alone."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.safetensors"))}


# -- data ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(shakespeare_path, tmp_path_factory):
    """An 80 KB slice of tinyshakespeare."""
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:80_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sine_csv(tmp_path_factory):
    t = np.arange(400)
    values = np.sin(2 * np.pi * t / 25) + 0.1 * np.random.default_rng(0).standard_normal(t.size)
    path = tmp_path_factory.mktemp("data") / "sine.csv"
    path.write_text("t,value\n" + "".join(f"{a},{b:.5f}\n" for a, b in zip(t, values)))
    return path


@pytest.fixture(scope="module")
def reviews_tsv(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = {"pos": ["good", "great", "lovely", "fine"], "neg": ["bad", "awful", "poor", "dreadful"]}
    rows = []
    for _ in range(120):
        label = "pos" if rng.random() < 0.5 else "neg"
        rows.append(" ".join(rng.choice(words[label] + ["the", "food", "day"], size=5)) + "\t" + label)
    path = tmp_path_factory.mktemp("data") / "reviews.tsv"
    path.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def char_run(corpus, tmp_path_factory):
    """One small trained character model, shared by the generate/eval tests and the bad-input cases."""
    out = tmp_path_factory.mktemp("runs") / "char"
    result = run("train", corpus, *TINY, "--steps", 6, "--eval-every", 3, "--out", out)
    return out, result


# -- train --------------------------------------------------------------------------------------

def test_help_on_every_command():
    for command in ([], ["train"], ["generate"], ["eval"], ["bench"]):
        result = run(*command, "--help")
        assert "Usage:" in result.output and "--help" in result.output


def test_train_writes_metrics_checkpoints_config_and_plot(char_run):
    out, result = char_run
    assert {"latest.safetensors", "best.safetensors", "metrics.jsonl", "config.json"} <= {p.name for p in out.iterdir()}
    assert (out / "loss.png").is_file() == HAVE_MATPLOTLIB
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in events if e["event"] == "eval"] == [3, 6]
    assert events[-1]["event"] == "end"
    summary = result.stdout.splitlines()[0]
    assert "best validation loss" in summary and "bpc" in summary and "unigram baseline" in summary
    config = json.loads((out / "config.json").read_text())
    assert config["hidden"] == 16 and config["steps"] == 6


def test_train_without_corpus_uses_the_built_in_one(tmp_path):
    result = run("train", *TINY, "--steps", 1, "--out", tmp_path / "run")
    assert "the built-in corpus" in result.stderr
    assert (tmp_path / "run" / "latest.safetensors").is_file()


def test_progress_bar_shows_step_loss_val_tokens_and_eta(corpus, tmp_path):
    args = [a for a in TINY if a != "--no-progress"]
    result = run("train", corpus, *args, "--steps", 4, "--eval-every", 2, "--out", tmp_path / "run")
    bar = result.stderr
    for field in ("4/4", "loss=", "val=", "tok/s=", "eta="):
        assert field in bar, field
    assert "loss=" not in result.stdout


def test_resume_continues_exactly(corpus, tmp_path):
    common = [corpus, *TINY, "--dropout", "0.2", "--eval-every", 2]
    run("train", *common, "--steps", 6, "--out", tmp_path / "straight")
    run("train", *common, "--steps", 3, "--out", tmp_path / "split")
    result = run("train", "--resume", tmp_path / "split" / "latest.safetensors", "--steps", 6)
    assert "resuming" in result.stderr and "at step 3" in result.stderr
    straight, _ = load_checkpoint(tmp_path / "straight" / "latest.safetensors")
    resumed, meta = load_checkpoint(tmp_path / "split" / "latest.safetensors")
    assert meta["trainer"]["step"] == 6 and straight.keys() == resumed.keys()
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
             if '"event": "step"' in line]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_different_setting(char_run):
    out, _ = char_run
    before = digests(out)
    result = run("train", "--resume", out / "latest.safetensors", "--hidden", 64, ok=False)
    assert "--hidden 64 differs" in result.stderr
    assert digests(out) == before


def test_time_budget_stops_cleanly_with_a_checkpoint(corpus, tmp_path):
    result = run("train", corpus, *TINY, "--time-budget", 0.5, "--out", tmp_path / "run")
    assert "--time-budget used up" in result.stdout
    _, meta = load_checkpoint(tmp_path / "run" / "latest.safetensors")
    assert meta["trainer"]["step"] >= 1


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(corpus, tmp_path):
    """A real SIGINT to a real `rnnfast train` process."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", "from rnnfast.cli import main; main()", "train", str(corpus),
                             *TINY, "--time-budget", "120", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not (out / "metrics.jsonl").exists()
                                           or (out / "metrics.jsonl").read_text().count('"event": "step"') < 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Ctrl-C" in stdout
    assert "--resume" in stderr
    _, meta = load_checkpoint(out / "latest.safetensors")
    assert meta["trainer"]["step"] >= 3


def test_forecast_on_a_csv(sine_csv, tmp_path):
    out = tmp_path / "run"
    result = run("train", sine_csv, "--task", "forecast", "--column", "value", "--window", 12, "--horizon", 2,
                 *TINY, "--steps", 8, "--eval-every", 4, "--out", out)
    assert "last value baseline" in result.stdout and "MSE" in result.stdout
    assert (out / "forecast.png").is_file() == HAVE_MATPLOTLIB
    result = run("eval", out / "best.safetensors", "--device", "cpu")
    for metric in ("loss", "mae", "rmse", "mae_original_units", "rmse_original_units"):
        assert any(line.split()[0] == metric for line in result.stdout.splitlines()), metric
    report = json.loads(run("eval", out / "best.safetensors", sine_csv, "--json").stdout)
    assert report["task"] == "forecast" and report["metrics"]["rmse"] > 0


def test_classify_on_a_tsv(reviews_tsv, tmp_path):
    out = tmp_path / "run"
    result = run("train", reviews_tsv, "--task", "classify", "--bidirectional", *TINY, "--steps", 8,
                 "--eval-every", 4, "--out", out)
    assert "label frequencies baseline" in result.stdout
    report = json.loads(run("eval", out / "best.safetensors", "--json").stdout)
    assert 0 <= report["metrics"]["accuracy"] <= 1 and "f1" in report["metrics"]
    run("eval", out / "best.safetensors", reviews_tsv)


def test_config_file_fills_defaults_and_the_command_line_wins(corpus, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[train]\nhidden = 12\nlayers = 1\nseq-len = 16\nbatch_size = 8\ncell = "gru"\n')
    run("train", corpus, "--config", config, "--hidden", 10, "--steps", 1, "--device", "cpu", "--no-progress",
        "--out", tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (saved["hidden"], saved["cell"], saved["seq_len"]) == (10, "gru", 16)
    # a run directory's config.json reproduces the run
    run("train", "--config", tmp_path / "a" / "config.json", "--no-progress", "--out", tmp_path / "b")
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == saved
    np.testing.assert_array_equal(*(load_checkpoint(tmp_path / d / "latest.safetensors")[0]["head.weight"]
                                    for d in ("a", "b")))


# -- generate and eval --------------------------------------------------------------------------

def test_generate_same_seed_same_text(char_run):
    ckpt = char_run[0] / "best.safetensors"
    first = run("generate", ckpt, "--prime", "ROMEO:", "--length", 40, "--seed", 7).stdout
    again = run("generate", ckpt, "--prime", "ROMEO:", "--length", 40, "--seed", 7).stdout
    other = run("generate", ckpt, "--prime", "ROMEO:", "--length", 40, "--seed", 8).stdout
    assert first == again != other
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 40 + 1


def test_generate_options_and_stream(char_run):
    ckpt = char_run[0] / "best.safetensors"
    args = ["--prime", "KING", "--length", 30, "--seed", 3, "--temperature", 0.7, "--top-k", 10, "--top-p", 0.9]
    plain = run("generate", ckpt, *args).stdout
    assert run("generate", ckpt, *args, "--stream").stdout == plain
    many = run("generate", ckpt, *args, "--num-samples", 3).stdout
    assert [line for line in many.splitlines() if line.startswith("--- sample")] == [
        f"--- sample {k} of 3 ---" for k in (1, 2, 3)]
    unseeded = run("generate", ckpt, "--length", 5)
    assert "--seed" in unseeded.stderr


def test_eval_reports_loss_bpc_perplexity_on_held_out_split_and_on_a_file(char_run, corpus):
    ckpt = char_run[0] / "best.safetensors"
    result = run("eval", ckpt)
    assert "held-out part" in result.stdout and "unigram baseline" in result.stdout
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert {"loss", "bpc", "perplexity"} <= set(names)
    report = json.loads(run("eval", ckpt, corpus, "--json").stdout)
    m = report["metrics"]
    assert m["bpc"] == pytest.approx(m["loss"] / np.log(2)) and m["perplexity"] == pytest.approx(np.exp(m["loss"]))


# -- bench --------------------------------------------------------------------------------------

def test_bench_json_on_a_tiny_scenario_set(monkeypatch):
    from rnnfast.bench import scenarios

    monkeypatch.setattr(scenarios, "QUICK", [scenarios.Scenario("gru", "fwd+bwd", 4, 2, 3, 5)])
    results = json.loads(run("bench", "--repeats", 1, "--json").stdout)
    assert results[0]["kind"] == "machine"
    assert [r["scenario"] for r in results[1:]] == ["fwd+bwd gru (4,2,3,5)"] and "error" not in results[1]
    assert "| scenario |" in run("bench", "--repeats", 1).stdout


# -- bad input: one line, non-zero exit, good checkpoints untouched -------------------------------

@pytest.fixture
def bad_files(tmp_path, corpus):
    files = {
        "empty": tmp_path / "empty.txt",
        "short": tmp_path / "short.txt",
        "binary": tmp_path / "data.bin",
        "latin1": tmp_path / "latin1.txt",
        "nonnumeric": tmp_path / "values.csv",
    }
    files["empty"].write_text("")
    files["short"].write_text("To be, or not")
    files["binary"].write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(32)) * 100)
    files["latin1"].write_bytes(("caf\u00e9 " + corpus.read_text()[:5000]).encode("latin-1", "replace"))
    files["nonnumeric"].write_text("t,value\n0,1.5\n1,n/a\n2,3.0\n")
    return files


@pytest.mark.parametrize("case, args, message", [
    ("missing file", ["{tmp}/nope.txt"], "not found"),
    ("directory", ["{tmp}"], "is a directory"),
    ("empty corpus", ["{empty}"], "is empty"),
    ("shorter than one sequence", ["{short}"], "too short"),
    ("binary file", ["{binary}"], "binary"),
    ("non-UTF-8 file", ["{latin1}"], "--encoding"),
    ("CSV without the column", ["{nonnumeric}", "--task", "forecast", "--column", "price"], "no column 'price'"),
    ("forecast without --column", ["{nonnumeric}", "--task", "forecast"], "needs --column"),
    ("non-numeric values", ["{nonnumeric}", "--task", "forecast", "--column", "value"], "not a number"),
    ("negative size", ["--hidden", "-4"], "'--hidden'"),
    ("zero layers", ["--layers", "0"], "'--layers'"),
    ("dropout of 1", ["--dropout", "1"], "'--dropout'"),
    ("negative learning rate", ["--lr", "-0.1"], "'--lr'"),
    ("validation fraction of 1", ["--val-frac", "1"], "'--val-frac'"),
    ("unknown cell", ["--cell", "transformer"], "'--cell'"),
    ("bidirectional char model", ["--bidirectional"], "--bidirectional"),
    ("missing config file", ["--config", "{tmp}/none.toml"], "not found"),
    ("unknown config key", ["--config", "{badconfig}"], "unknown option 'hiden'"),
    ("nonsense value in config", ["--config", "{negconfig}"], "'--eval-every'"),
])
def test_train_bad_input(case, args, message, bad_files, tmp_path, char_run):
    good = char_run[0]
    before = digests(good)
    (tmp_path / "bad.toml").write_text("hiden = 3\n")
    (tmp_path / "neg.toml").write_text("eval-every = -2\n")
    names = {**bad_files, "tmp": tmp_path, "badconfig": tmp_path / "bad.toml", "negconfig": tmp_path / "neg.toml"}
    args = [a.format(**names) for a in args]
    result = run("train", *TINY, "--steps", 1, "--out", tmp_path / "run", *args, ok=False)
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()
    assert digests(good) == before


def test_an_unwritable_run_directory_is_one_line(corpus, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    result = run("train", corpus, *TINY, "--steps", 1, "--out", tmp_path / "a-file" / "run", ok=False)
    assert "cannot create the run directory" in result.stderr


def test_the_named_encoding_reads_a_latin1_file(bad_files, tmp_path):
    run("train", bad_files["latin1"], "--encoding", "latin-1", *TINY, "--steps", 1, "--out", tmp_path / "run")


def test_an_existing_run_is_never_overwritten(char_run, corpus):
    out = char_run[0]
    before = digests(out)
    result = run("train", corpus, *TINY, "--steps", 1, "--out", out, ok=False)
    assert "already holds a run" in result.stderr and "--resume" in result.stderr
    assert digests(out) == before


@pytest.fixture
def broken_checkpoints(char_run, tmp_path, sine_csv):
    """Truncated, foreign (not rnnfast's), newer-version and other-model checkpoints."""
    good = char_run[0] / "latest.safetensors"
    data = good.read_bytes()
    paths = {name: tmp_path / f"{name}.safetensors" for name in ("truncated", "foreign", "newer")}
    paths["truncated"].write_bytes(data[: len(data) // 2])
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros(3, np.float32)}, str(paths["foreign"]))
    tensors, meta = load_checkpoint(good)
    save_checkpoint(paths["newer"], tensors, meta)
    raw = paths["newer"].read_bytes()
    paths["newer"].write_bytes(raw.replace(b'"version":"1"', b'"version":"9"'))
    assert raw != paths["newer"].read_bytes()
    forecast = tmp_path / "forecast"
    run("train", sine_csv, "--task", "forecast", "--column", "value", *TINY, "--steps", 1, "--out", forecast)
    paths["forecast model"] = forecast / "latest.safetensors"
    return paths


@pytest.mark.parametrize("kind, message", [
    ("truncated", "truncated or corrupt"), ("foreign", "did not write"), ("newer", "version"),
])
@pytest.mark.parametrize("command", ["generate", "eval", "resume"])
def test_bad_checkpoints(command, kind, message, broken_checkpoints, char_run):
    before = digests(char_run[0])
    path = broken_checkpoints[kind]
    args = ["train", "--resume", path, "--steps", 1, "--no-progress"] if command == "resume" else [command, path]
    result = run(*args, ok=False)
    assert message in result.stderr
    assert digests(char_run[0]) == before


def test_generate_refuses_a_model_of_another_task(broken_checkpoints):
    result = run("generate", broken_checkpoints["forecast model"], ok=False)
    assert "not a character model" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--prime", "ROMEO: \u00e9t\u00e9"], "not in the model's vocabulary"),
    (["--length", "0"], "'--length'"),
    (["--temperature", "-1"], "'--temperature'"),
    (["--top-k", "0"], "'--top-k'"),
    (["--top-p", "1.5"], "'--top-p'"),
    (["--num-samples", "2", "--stream"], "--stream"),
])
def test_generate_bad_input(args, message, char_run):
    result = run("generate", char_run[0] / "best.safetensors", *args, ok=False)
    assert message in result.stderr


def test_eval_bad_data_file(char_run, bad_files):
    ckpt = char_run[0] / "best.safetensors"
    assert "is empty" in run("eval", ckpt, bad_files["empty"], ok=False).stderr
    assert "vocabulary" in run("eval", ckpt, bad_files["latin1"], "--encoding", "latin-1", ok=False).stderr


def test_resume_with_changed_data_keeps_the_checkpoint(corpus, tmp_path):
    copy = tmp_path / "corpus.txt"
    copy.write_text(corpus.read_text())
    run("train", copy, *TINY, "--steps", 2, "--out", tmp_path / "run")
    before = digests(tmp_path / "run")
    copy.write_text(corpus.read_text().replace("e", "\u00e9"))
    result = run("train", "--resume", tmp_path / "run" / "latest.safetensors", "--steps", 3, ok=False)
    assert "changed" in result.stderr
    assert digests(tmp_path / "run") == before


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(char_run, tmp_path, monkeypatch):
    from rnnfast.models import CharRNN

    out = tmp_path / "run"
    run("train", "--resume", char_run[0] / "latest.safetensors", "--steps", 7, "--out", out)  # a copy to spoil
    before = digests(out)
    monkeypatch.setattr(CharRNN, "train_step", lambda self, batch: {"loss": float("nan"), "tokens": 1})
    result = CliRunner().invoke(main, ["train", "--resume", str(out / "latest.safetensors"), "--steps", "9",
                                       "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error: the loss is nan")
    assert digests(out) == before


def test_gpu_without_a_gpu_says_how_to_install_it(corpus, tmp_path):
    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    for command in (["train", corpus, "--steps", "1", "--out", tmp_path / "run"], ["bench"]):
        result = run(*command, "--device", "gpu", ok=False)
        assert 'pip install "rnnfast[gpu]"' in result.stderr
    assert not (tmp_path / "run").exists()


def test_eval_finds_a_relative_data_path_from_another_directory(corpus, tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "corpus.txt").write_text(corpus.read_text())
    monkeypatch.chdir(tmp_path / "work")
    run("train", "corpus.txt", *TINY, "--steps", 1, "--out", "run")
    monkeypatch.chdir(tmp_path)
    assert "held-out part of" in run("eval", "work/run/latest.safetensors").stdout
