"""Runs that survive faults (issue 12): kill -9 at random points, two runs on one directory, run
names chosen at the same moment, a full disk while logging, Ctrl-C during start-up, a kill between
the writes of latest and best, and checkpoints that --resume must refuse before writing anything.
Each case is one finding of the fault-injection pass; every run is tiny, so each takes seconds."""
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import rnnfast as rf
from rnnfast.checkpoint import load_checkpoint, save_checkpoint
from rnnfast.cli import main
from rnnfast.models import CharRNN
from rnnfast.rundir import new_run_dir

TINY = ["--hidden", "8", "--layers", "1", "--seq-len", "16", "--batch-size", "4", "--device", "cpu", "--no-progress"]
TEXT = "".join(np.random.default_rng(0).choice(list("abcdefgh .\n"), size=20_000))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(TEXT)
    return path


def run(*args, ok=True):
    """``rnnfast *args`` in this process; with ``ok`` it must succeed, else end in one ``Error:`` line."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    else:
        assert result.exit_code not in (0, None), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return result


def rnnfast_process(*args, cwd, **kwargs) -> subprocess.Popen:
    """``rnnfast *args`` as its own process (its own session, so a kill reaches the compile helper too)."""
    return subprocess.Popen([sys.executable, "-c", "from rnnfast.cli import main; main()", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def wait_for(condition, proc=None, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if proc is not None and proc.poll() is not None:
            return
        time.sleep(0.005)


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl, every line of which must be whole JSON."""
    text = (run_dir / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def steps_of(run_dir: Path) -> list[int]:
    return [r["step"] for r in records(run_dir) if r["event"] == "step"]


def digests(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def trained_run(corpus, tmp_path, name="run", steps=4) -> Path:
    out = tmp_path / name
    run("train", corpus, *TINY, "--steps", steps, "--eval-every", 2, "--out", out)
    return out


# -- kill -9 ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_at_random_points_leaves_one_history_and_the_uninterrupted_result(corpus, tmp_path):
    args = ["train", corpus, *TINY, "--patience", 0, "--steps", 300, "--eval-every", 3]  # all 300 steps
    run(*args, "--out", tmp_path / "straight")
    out, rng, kills = tmp_path / "killed", random.Random(12), 0
    while True:
        latest = out / "latest.safetensors"
        command = ["train", "--resume", latest, *TINY[-1:], *args[-2:]] if latest.exists() else [*args, "--out", out]
        metrics = out / "metrics.jsonl"
        seen = metrics.stat().st_mtime_ns if metrics.exists() else None
        proc = rnnfast_process(*command, cwd=tmp_path)
        done = latest.exists() and load_checkpoint(latest)[1]["trainer"]["step"] == 300
        if kills == 8 or done:  # this one runs to its end, for the summary
            stdout, stderr = proc.communicate(timeout=120)
            break
        # once training has begun (the metrics file changes), at a random point of it
        wait_for(lambda: metrics.exists() and metrics.stat().st_mtime_ns != seen, proc)
        time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            break
        kill(proc)
        kills += 1
    assert proc.returncode == 0, stderr
    assert kills >= 2 and "Traceback" not in stderr

    straight, killed = records(tmp_path / "straight"), records(out)  # every line whole JSON
    losses = {(r["step"], r["loss"]) for r in straight if r["event"] == "step"}
    assert [(r["step"], r["loss"]) for r in killed if r["event"] == "step"] == sorted(losses)  # each step once
    assert [r["step"] for r in killed if r["event"] == "eval"] == list(range(3, 301, 3))
    written = [(r["step"], r["kind"]) for r in killed if r["event"] == "checkpoint"]
    assert len(written) == len(set(written))
    ends = [i for i, r in enumerate(killed) if r["event"] == "end"]  # one per run that got to its end
    assert ends and ends[0] > max(i for i, r in enumerate(killed) if r["event"] == "step")
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    best_step = int(stdout.split(" at step ")[1].split(";")[0])
    for name in ("latest.safetensors", "best.safetensors"):
        mine, meta = load_checkpoint(out / name)
        theirs, _ = load_checkpoint(tmp_path / "straight" / name)
        assert meta["trainer"]["best_step"] == best_step
        for key in theirs:
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=f"{name} {key}")
    assert load_checkpoint(out / "best.safetensors")[1]["trainer"]["step"] == best_step


def test_a_crash_after_a_checkpoint_is_logged_once_after_resume(tmp_path):
    """What the kill loop finds, in one process: steps logged after the last checkpoint and a half line."""
    ids = rf.data.Vocab.from_text(TEXT).encode(TEXT[:3000])

    def trainer(resume=None, callbacks=()):
        model = CharRNN(11, hidden_size=8, num_layers=1, dtype=np.float64, seed=0)
        return rf.Trainer(model, rf.optim.Adam(lr=1e-2), rf.data.StreamBatcher(ids, 4, 16), ids[:300], eval_every=7,
                          out_dir=tmp_path, resume=resume, callbacks=[rf.JSONLLogger(tmp_path / "metrics.jsonl"),
                                                                      *callbacks])

    class Crash(rf.Callback):
        def on_step_end(self, trainer, step, logs):
            if step == 10:
                raise RuntimeError("the machine went down")

    with pytest.raises(RuntimeError):
        trainer(callbacks=[Crash()]).run(steps=20)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"event": "step", "step": 11, "lo')  # what a full disk or a kill mid-line leaves
    (tmp_path / ".latest.safetensors.x1y2.tmp").write_bytes(b"")  # and a kill mid-checkpoint
    (tmp_path / "notes.tmp").write_text("the user's")
    trainer(resume=tmp_path / "latest.safetensors").run(steps=14)
    assert steps_of(tmp_path) == list(range(1, 15))
    assert [r["step"] for r in records(tmp_path) if r["event"] == "eval"] == [7, 14]
    assert not (tmp_path / ".latest.safetensors.x1y2.tmp").exists() and (tmp_path / "notes.tmp").exists()


def test_a_kill_between_latest_and_best_is_completed_on_resume(corpus, tmp_path):
    out = trained_run(corpus, tmp_path, steps=2)
    old_best = (out / "best.safetensors").read_bytes()
    run("train", "--resume", out / "latest.safetensors", "--steps", 4)
    _, meta = load_checkpoint(out / "latest.safetensors")
    assert meta["trainer"]["best_step"] == 4  # the loss still falls: step 4 wrote latest, then best
    (out / "best.safetensors").write_bytes(old_best)  # killed between the two writes
    result = run("train", "--resume", out / "latest.safetensors", "--steps", 4)
    assert "at step 4;" in result.stdout
    best, best_meta = load_checkpoint(out / "best.safetensors")
    latest, _ = load_checkpoint(out / "latest.safetensors")
    assert best_meta["trainer"]["step"] == 4
    for key in latest:
        np.testing.assert_array_equal(best[key], latest[key])


# -- two runs, one directory ----------------------------------------------------------------------

def test_a_second_run_on_a_held_directory_fails_naming_the_holder(corpus, tmp_path):
    resumed = trained_run(corpus, tmp_path, "resumed", steps=2)
    fresh = tmp_path / "fresh"
    # no checkpoint while they run, so only the lock can stop the second
    holders = [rnnfast_process("train", corpus, *TINY, "--time-budget", 60, "--eval-every", 10**6, "--out", fresh,
                               cwd=tmp_path),
               rnnfast_process("train", "--resume", resumed / "latest.safetensors", "--time-budget", 60,
                               "--eval-every", 10**6, "--no-progress", cwd=tmp_path)]
    try:
        size = (resumed / "metrics.jsonl").stat().st_size
        wait_for(lambda: (fresh / "metrics.jsonl").exists() and (resumed / "metrics.jsonl").stat().st_size > size)
        for holder, args in zip(holders, (["train", corpus, *TINY, "--steps", 2, "--out", fresh],
                                          ["train", "--resume", resumed / "latest.safetensors", "--steps", 3])):
            result = run(*args, ok=False)
            assert f"in use by another rnnfast run (PID {holder.pid})" in result.stderr
            assert holder.poll() is None
    finally:
        for holder in holders:
            kill(holder)
    assert not list(fresh.glob("*.safetensors"))  # the second fresh run wrote nothing


def test_two_runs_started_in_the_same_second_get_two_directories(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    strftime = time.strftime
    monkeypatch.setattr(time, "strftime", lambda fmt, *t: "20260101-000000" if fmt == "%Y%m%d-%H%M%S" else strftime(fmt, *t))
    first, second = (run("train", corpus, *TINY, "--steps", 1).stderr for _ in range(2))
    assert first.splitlines()[0].endswith("run directory runs/charlm-lstm-20260101-000000")
    assert second.splitlines()[0].endswith("run directory runs/charlm-lstm-20260101-000000-1")

    base, start = tmp_path / "together" / "charlm-lstm", threading.Barrier(16)
    made = []

    def make():
        start.wait()
        made.append(new_run_dir(base))

    threads = [threading.Thread(target=make) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 16 and all(p.is_dir() for p in made)


# -- a full disk ----------------------------------------------------------------------------------

def full_disk_after(monkeypatch, path: Path, writes: int) -> None:
    """os.write to ``path`` takes ``writes`` lines, then only half of each (as a full disk does)."""
    real, count = os.write, {"n": 0}

    def write(fd, data):
        if path.exists() and os.fstat(fd).st_ino == path.stat().st_ino:
            count["n"] += 1
            if count["n"] > writes:
                return real(fd, data[: len(data) // 2])
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_full_disk_while_logging_is_one_line_and_keeps_the_checkpoints(corpus, tmp_path, monkeypatch):
    out = trained_run(corpus, tmp_path)
    checkpoints = {k: v for k, v in digests(out).items() if k.endswith(".safetensors")}
    with monkeypatch.context() as patch:
        full_disk_after(patch, out / "metrics.jsonl", 3)
        result = run("train", "--resume", out / "latest.safetensors", "--steps", 50, "--eval-every", 1000,
                     "--no-progress", ok=False)
    assert "No space left on device" in result.stderr and "free some disk space" in result.stderr
    assert f"continue from step 4 with --resume {out / 'latest.safetensors'}" in result.stderr
    assert {k: v for k, v in digests(out).items() if k.endswith(".safetensors")} == checkpoints
    assert steps_of(out) == [1, 2, 3, 4, 5, 6, 7]  # whole lines only, the half one undone
    run("train", "--resume", out / "latest.safetensors", "--steps", 8)
    assert steps_of(out) == list(range(1, 9))

    with monkeypatch.context() as patch:  # before the first checkpoint: nothing to keep
        full_disk_after(patch, tmp_path / "fresh" / "metrics.jsonl", 2)
        result = run("train", corpus, *TINY, "--steps", 50, "--eval-every", 1000, "--out", tmp_path / "fresh", ok=False)
    assert "start the run again" in result.stderr
    assert not (tmp_path / "fresh").exists()


# -- Ctrl-C during start-up -----------------------------------------------------------------------

def test_ctrl_c_before_the_first_checkpoint_leaves_no_run_directory(corpus, tmp_path, monkeypatch):
    def interrupted(self, **limits):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(rf.Trainer, "run", interrupted)
        result = CliRunner().invoke(main, ["train", str(corpus), *TINY, "--steps", "5", "--out", str(tmp_path / "a")])
    assert result.exit_code != 0 and not (tmp_path / "a").exists()

    # a real SIGINT the moment the run directory appears: the run is gone, or it has its checkpoint
    out = tmp_path / "b"
    proc = rnnfast_process("train", corpus, *TINY, "--steps", 5, "--out", out, cwd=tmp_path,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(out.exists, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in stderr
    assert not out.exists() or (out / "latest.safetensors").exists(), sorted(p.name for p in out.iterdir())


# -- resume checks everything before writing anything ---------------------------------------------

def spoil(out: Path, change) -> None:
    tensors, meta = load_checkpoint(out / "latest.safetensors")
    change(tensors, meta)
    save_checkpoint(out / "latest.safetensors", tensors, meta)


def wrong_optimizer_state(tensors, meta):
    name = next(k for k in tensors if k.startswith("optim/"))
    tensors[name] = np.zeros((3, 3), tensors[name].dtype)


@pytest.mark.parametrize("change, says, not_says", [
    (wrong_optimizer_state, "holds optimizer state ", "Traceback"),
    (lambda t, m: t.update({"carry/h": np.zeros((1, 2, 8), np.float32)}), "carried state h", "Traceback"),
    (lambda t, m: m["model"].update(hidden_size=9), "does not fit this CharRNN", "from_config"),
    (lambda t, m: m["cli"]["options"].update(hidden=10**9), "say --hidden 1000000000, but the model it holds has "
     "hidden_size=8", "MemoryError"),
    (lambda t, m: (m["model"].update(hidden_size=10**9), m["cli"]["options"].update(hidden=10**9)),
     "claims a hidden size of 1,000,000,000", "MemoryError"),
    (lambda t, m: m.pop("vocab"), "lacks the vocab", "changed since"),
    (lambda t, m: m["trainer"].pop("step"), "damaged metadata", "Traceback"),
], ids=["optimizer shape", "carried shape", "model config", "run settings", "both sizes", "no vocabulary", "no step"])
def test_resume_refuses_a_damaged_checkpoint_before_writing_anything(change, says, not_says, corpus, tmp_path):
    out = trained_run(corpus, tmp_path)
    spoil(out, change)
    before = digests(out)
    result = run("train", "--resume", out / "latest.safetensors", "--steps", 6, ok=False)
    assert says in result.stderr and not_says not in result.stderr
    assert "damaged or was edited" in result.stderr
    assert digests(out) == before  # config.json, metrics.jsonl and both checkpoints as they were


def test_a_resumed_run_keeps_its_evaluation_schedule(corpus, tmp_path):
    # --eval-every decides the checkpoints and the best: a resume without it evaluates as its run did
    out = trained_run(corpus, tmp_path, steps=4)  # --eval-every 2
    run("train", "--resume", out / "latest.safetensors", "--steps", 8)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "eval"] == [2, 4, 6, 8]
