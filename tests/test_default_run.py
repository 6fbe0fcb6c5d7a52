"""The default run ends at its best: without --patience a run stops once validation has not improved
for DEFAULT_PATIENCE validations in a row and says why; --patience 0 turns it off; a resumed run
keeps the patience it ran with (one from before the default: none)."""
import json

import pytest

from rnnfast.checkpoint import load_checkpoint, save_checkpoint
from test_cli import run

# a small model on 3 KB at a high rate: the best validation comes within 50 steps, then it overfits
FAST = ["--hidden", 64, "--layers", 1, "--seq-len", 32, "--batch-size", 16, "--lr", 0.02, "--dropout", 0,
        "--eval-every", 10, "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def small(shakespeare_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    return path


def evals(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"event": "eval"' in line]


def test_without_patience_a_run_stops_ten_validations_after_its_best_and_says_why(small, tmp_path):
    from rnnfast.cli.train import DEFAULT_PATIENCE

    result = run("train", small, *FAST, "--steps", 1500, "--out", tmp_path / "run")
    records = evals(tmp_path / "run")
    losses = [r["val_loss"] for r in records]
    best = losses.index(min(losses))
    assert len(records) == best + 1 + DEFAULT_PATIENCE  # stopped at the tenth validation without a better one
    assert records[-1]["step"] < 1500
    assert (f"no better validation loss in the last {DEFAULT_PATIENCE} validations: --patience {DEFAULT_PATIENCE}, "
            "0 turns it off") in result.stdout
    _, meta = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert meta["trainer"]["step"] == records[best]["step"]


def test_patience_zero_runs_to_the_end_and_resume_keeps_the_runs_patience(small, tmp_path):
    run("train", small, *FAST, "--steps", 200, "--patience", 0, "--out", tmp_path / "off")
    assert evals(tmp_path / "off")[-1]["step"] == 200
    run("train", "--resume", tmp_path / "off" / "latest.safetensors", "--steps", 400)
    assert evals(tmp_path / "off")[-1]["step"] == 400  # still off: the run's own patience
    run("train", "--resume", tmp_path / "off" / "latest.safetensors", "--steps", 2000, "--patience", 3)
    assert evals(tmp_path / "off")[-1]["step"] < 2000


def test_a_checkpoint_from_before_the_default_resumes_without_early_stopping(small, tmp_path):
    out = tmp_path / "run"
    run("train", small, *FAST, "--steps", 20, "--out", out)
    path = out / "latest.safetensors"
    tensors, meta = load_checkpoint(path)
    meta["cli"]["schedule"]["patience"] = None  # as runs without --patience recorded it before
    save_checkpoint(path, tensors, meta)
    run("train", "--resume", path, "--steps", 400)
    assert evals(out)[-1]["step"] == 400


def test_negative_patience_is_a_one_line_error(small, tmp_path):
    result = run("train", small, *FAST, "--patience", -1, "--out", tmp_path / "run", ok=False)
    assert "--patience" in result.stderr
