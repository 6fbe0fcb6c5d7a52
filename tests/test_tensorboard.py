"""TensorBoard logging (issue 14): ``rnnfast train --tensorboard`` and :class:`rnnfast.TensorBoardLogger`.
The event files are read back with TensorBoard's own reader (what ``tensorboard --logdir`` shows,
purges included) and record by record; the scalars must be metrics.jsonl's, the charlm samples the
checkpointed model's, and a resumed run must show each step once."""
import errno
import json
import os
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import rnnfast as rf
from rnnfast.checkpoint import load_model
from rnnfast.cli import main
from rnnfast.models import CharRNN

pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402

TINY = ["--hidden", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "8", "--device", "cpu", "--no-progress"]
TRAIN_TAGS = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm",
              "train/tokens_per_s": "tokens_per_s"}
TEXT = "".join(np.random.default_rng(0).choice(list("abcdefgh .\n"), size=3000))


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def read(logdir) -> EventAccumulator:
    """The directory as TensorBoard shows it."""
    events = EventAccumulator(str(logdir))
    events.Reload()
    return events


def scalars(events: EventAccumulator) -> dict:
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def samples(events: EventAccumulator) -> dict:
    """step -> the sample's text, its Markdown indentation taken off."""
    texts = {e.step: e.tensor_proto.string_val[0].decode("utf-8") for e in events.Tensors("sample/text_summary")}
    return {step: "\n".join(line[4:] for line in text.split("\n")) for step, text in texts.items()}


def event_files(logdir) -> list:
    """Each event file's records, in the order TensorBoard reads the files."""
    return [list(EventFileLoader(str(path)).Load()) for path in sorted(logdir.glob("events.out.tfevents.*"))]


def as_logged(value) -> float:
    return float(np.float32(value))  # an event's scalar is a float32


def metrics(run_dir) -> tuple[list, list]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["event"] == "step"], [r for r in records if r["event"] == "eval"]


@pytest.fixture(scope="module")
def corpus(shakespeare_path, tmp_path_factory):
    """A 40 KB slice of tinyshakespeare."""
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def char_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "char"
    run("train", corpus, *TINY, "--steps", 6, "--eval-every", 3, "--out", out, "--tensorboard")
    return out


# -- rnnfast train --tensorboard --------------------------------------------------------------------

def test_train_writes_the_metrics_of_metrics_jsonl(char_run):
    steps, evals = metrics(char_run)
    shown = scalars(read(char_run / "tensorboard"))
    for tag, key in TRAIN_TAGS.items():
        assert shown[tag] == [(r["step"], as_logged(r[key])) for r in steps], tag
    assert [step for step, _ in shown["train/loss"]] == [1, 2, 3, 4, 5, 6]
    for name in ("loss", "bpc", "perplexity"):
        assert shown[f"val/{name}"] == [(r["step"], as_logged(r[f"val_{name}"])) for r in evals], name
    assert [step for step, _ in shown["val/loss"]] == [3, 6]
    assert json.loads((char_run / "config.json").read_text())["tensorboard"] is True


def test_a_charlm_run_logs_the_models_own_sample_at_each_evaluation(char_run, corpus):
    texts = samples(read(char_run / "tensorboard"))
    assert sorted(texts) == [3, 6]
    model, meta = load_model(char_run / "latest.safetensors")  # the model at step 6
    vocab = rf.Vocab.from_dict(meta["vocab"])
    assert texts[6] == model.sample("\n", 200, temperature=0.8, seed=6, vocab=vocab)
    assert len(texts[3]) == 201 and set(texts[3]) <= set(corpus.read_text(encoding="utf-8"))


def test_tensorboard_logdir_runs_shows_every_run(char_run, tmp_path):
    other = tmp_path / "runs"
    shutil.copytree(char_run, other / "a")
    shutil.copytree(char_run, other / "b")
    board = EventMultiplexer()
    board.AddRunsFromDirectory(str(other))
    board.Reload()
    assert sorted(board.Runs()) == ["a/tensorboard", "b/tensorboard"]


def test_a_resumed_run_keeps_logging_and_shows_each_step_once(char_run, tmp_path):
    out = tmp_path / "char"
    shutil.copytree(char_run, out)
    run("train", "--resume", out / "latest.safetensors", "--steps", 9, "--no-progress")  # no --tensorboard: kept
    files = event_files(out / "tensorboard")
    assert len(files) == 2
    opening = [e for e in files[1] if e.HasField("session_log")]
    assert opening[0].step == 7  # TensorBoard's purge marker: what earlier files hold from step 7 on is dropped
    steps, evals = metrics(out)
    shown = scalars(read(out / "tensorboard"))
    assert shown["train/loss"] == [(r["step"], as_logged(r["loss"])) for r in steps]
    assert [step for step, _ in shown["train/loss"]] == list(range(1, 10))
    assert [step for step, _ in shown["val/loss"]] == [3, 6, 9]
    assert sorted(samples(read(out / "tensorboard"))) == [3, 6, 9]


def test_a_forecast_run_logs_its_metrics_and_no_sample(tmp_path):
    t = np.arange(300)
    csv = tmp_path / "sine.csv"
    csv.write_text("t,value\n" + "".join(f"{a},{np.sin(a / 4):.5f}\n" for a in t))
    out = tmp_path / "run"
    run("train", csv, "--task", "forecast", "--column", "value", *TINY, "--window", 8, "--steps", 4, "--eval-every", 2, "--out", out,
        "--tensorboard")
    events = read(out / "tensorboard")
    shown = scalars(events)
    assert {"val/loss", "val/mae", "val/rmse"} <= set(shown) and [s for s, _ in shown["val/rmse"]] == [2, 4]
    assert events.Tags()["tensors"] == []


def test_without_tensorboardx_it_is_one_line_and_no_run_directory(corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # what an import finds when it is not installed
    result = CliRunner().invoke(main, ["train", str(corpus), *TINY, "--steps", "2", "--out", str(tmp_path / "run"),
                                       "--tensorboard"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --tensorboard") and "pip install 'rnnfast[tensorboard]'" in lines[0]
    assert not (tmp_path / "run").exists()
    with pytest.raises(ImportError, match=r"pip install 'rnnfast\[tensorboard\]'"):
        rf.TensorBoardLogger(tmp_path / "tb")


def test_a_run_stopped_before_its_first_checkpoint_gives_its_directory_back(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(CharRNN, "train_step", lambda self, batch: {"loss": float("nan"), "tokens": 1})
    result = CliRunner().invoke(main, ["train", str(corpus), *TINY, "--steps", "2", "--out", str(tmp_path / "run"),
                                       "--tensorboard"])
    assert result.exit_code == 1 and result.stderr.strip().splitlines()[-1].startswith("Error: the loss is nan")
    assert not (tmp_path / "run").exists()


def test_a_full_disk_is_one_line_and_keeps_the_checkpoints(char_run, tmp_path, monkeypatch):
    from tensorboardX.event_file_writer import EventsWriter

    out = tmp_path / "char"
    shutil.copytree(char_run, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.safetensors")}
    write_event = EventsWriter.write_event
    writes = []

    def full_after_two(self, event):
        writes.append(event)
        if len(writes) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_event(self, event)

    monkeypatch.setattr(EventsWriter, "write_event", full_after_two)
    result = CliRunner().invoke(main, ["train", "--resume", str(out / "latest.safetensors"), "--steps", "9",
                                       "--eval-every", "100", "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: cannot write TensorBoard events") and "No space left on device" in line
    assert {p.name: p.read_bytes() for p in out.glob("*.safetensors")} == before


# -- rf.TensorBoardLogger with rf.Trainer -----------------------------------------------------------

def char_trainer(out_dir, callbacks=(), resume=None):
    vocab = rf.Vocab.from_text(TEXT)
    train, val, _ = rf.data.split_ids(vocab.encode(TEXT), val_frac=0.1)
    model = CharRNN(len(vocab), hidden_size=8, num_layers=1, dropout=0.2, dtype=np.float64, seed=0)
    return rf.Trainer(model, rf.optim.Adam(lr=1e-2), rf.StreamBatcher(train, 4, 25), val, eval_every=2,
                      out_dir=out_dir, callbacks=callbacks, meta={"vocab": vocab.to_dict()}, resume=resume)


def test_the_library_callback_logs_what_the_trainer_reports(tmp_path):
    history = rf.History()
    vocab = rf.Vocab.from_text(TEXT)
    logger = rf.TensorBoardLogger(tmp_path / "tb", sample_length=30, vocab=vocab)
    char_trainer(None, [logger, history]).run(steps=4)
    events = read(tmp_path / "tb")
    shown = scalars(events)
    assert shown["train/loss"] == [(s, as_logged(v)) for s, v in zip(history.steps, history.losses)]
    assert shown["train/lr"] == [(s, as_logged(v)) for s, v in zip(history.steps, history.lrs)]
    assert shown["val/loss"] == [(s, as_logged(v)) for s, v in zip(history.val_steps, history.val_losses)]
    texts = samples(events)
    assert sorted(texts) == [2, 4] and all(len(t) == 31 and set(t) <= set(vocab.chars) for t in texts.values())


def test_logging_does_not_change_the_training(tmp_path):
    plain = char_trainer(tmp_path / "plain").run(steps=6)
    logged = char_trainer(tmp_path / "logged", [rf.TensorBoardLogger(tmp_path / "logged" / "tb")]).run(steps=6)
    assert logged["losses"] == plain["losses"] and logged["best_val"] == plain["best_val"]


class CrashAt(rf.Callback):
    """A crash that no callback hears of (the process killed): raises at the end of step ``step``."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, logs):
        if step == self.step:
            raise SystemError("killed")


def test_events_up_to_a_checkpoint_survive_a_crash_and_a_resume_shows_each_step_once(tmp_path):
    out, logdir = tmp_path / "run", tmp_path / "run" / "tb"
    crashed = rf.TensorBoardLogger(logdir)
    with pytest.raises(SystemError):
        char_trainer(out, [crashed, CrashAt(5)]).run(steps=8)  # latest is step 4's; steps 5.. are lost
    # flushed at the checkpoint: on disk with the file still open, as a killed process leaves it
    assert [step for step, _ in scalars(read(logdir))["val/loss"]] == [2, 4]
    history = rf.History()
    resumed = char_trainer(out, [rf.TensorBoardLogger(logdir), history], resume=out / "latest.safetensors")
    resumed.run(steps=8)
    crashed.on_train_end(None, {})  # the crashed run's file, which a killed process would not have open
    first, second = event_files(logdir)
    assert [e.step for e in first if e.HasField("summary")][-1] == 5  # logged before the crash
    shown = scalars(read(logdir))
    assert [step for step, _ in shown["train/loss"]] == list(range(1, 9))
    assert shown["train/loss"][4:] == [(s, as_logged(v)) for s, v in zip(history.steps, history.losses)]
    assert [step for step, _ in shown["val/loss"]] == [2, 4, 6, 8]
