"""Data-parallel training (issue 15): ``mpiexec -n 2 rnnfast train`` against one process on the same
global batch, seed and data, with every mask on (dropout, weight drop, recurrent dropout, zoneout):
the same weights, optimizer state, carried state and dropout streams, to 1e-9 relative, after 30
steps and across resumes with 2 or 1 processes; a batch that does not divide; a rank killed.

The runs under mpiexec skip, with the reason, without mpi4py or mpiexec (pip install 'rnnfast[mpi]').
The library tests at the top need neither."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import rnnfast as rf
from rnnfast.checkpoint import load_checkpoint
from rnnfast.parallel import World, world

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
try:
    import mpi4py
except ImportError:
    mpi4py = None
needs_mpi = pytest.mark.skipif(mpi4py is None or MPIEXEC is None,
                               reason="needs mpi4py and mpiexec: pip install 'rnnfast[mpi]'")

# one Numba thread a process: two ranks share this machine's two cores
ENV = {**os.environ, "NUMBA_NUM_THREADS": "1"}
MODEL = ["--dtype", "float64", "--hidden", "16", "--layers", "2", "--seq-len", "16", "--batch-size", "8",
         "--dropout", "0.3", "--weight-drop", "0.2", "--recurrent-dropout", "0.2", "--zoneout", "0.1",
         "--eval-every", "10", "--no-progress"]


# -- the library: a rank's rows draw the whole batch's masks ---------------------------------------
def _char_model():
    return rf.models.CharRNN(vocab_size=11, hidden_size=8, num_layers=2, dropout=0.3, weight_drop=0.2,
                             recurrent_dropout=0.2, zoneout=0.1, dtype=np.float64, seed=3)


def test_a_model_on_its_rows_of_the_batch_equals_the_whole_batch():
    ids = np.random.default_rng(0).integers(0, 11, (7, 6)).astype(np.int32)
    targets = np.roll(ids, -1, axis=0)
    whole = _char_model()
    logits, _ = whole(ids)
    whole.backward(rf.losses.cross_entropy(logits, targets)[1])
    streams = whole.rng_state()
    parts, grads = [], None
    for start, stop in ((0, 2), (2, 6)):  # unequal rows, as a short last batch splits
        model = _char_model().set_batch_rows((start, 6))
        part, _ = model(ids[:, start:stop])
        model.backward(rf.losses.cross_entropy(part, targets[:, start:stop])[1])
        assert model.rng_state() == streams  # the same draws, so the same streams after them
        parts.append(part)
        share = {k: g * (stop - start) / 6 for k, g in model.grads.items()}
        grads = share if grads is None else {k: grads[k] + share[k] for k in grads}
    np.testing.assert_allclose(np.concatenate(parts, axis=1), logits, rtol=1e-12, atol=1e-14)
    for name, g in whole.grads.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-10, atol=1e-14, err_msg=name)


class _Comm:
    """What World reads of a communicator, for rank r of n."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


def test_shares_of_a_batch_cover_it_once_and_a_rank_left_none_runs_a_stand_in_row_of_no_weight():
    batch = (np.arange(3 * 5).reshape(3, 5), np.arange(5))
    shares = [World(_Comm(r, 4)).share(batch, batch_axis=0) for r in range(4)]
    rows = [rows for _, rows, _ in shares]
    assert rows == [(0, 3), (0, 3), (1, 3), (2, 3)]  # rank 0 has none: it runs row 0 with weight 0
    assert [s for _, _, s in shares] == [0.0, 1 / 3, 1 / 3, 1 / 3]
    np.testing.assert_array_equal(np.concatenate([p[0] for p, _, s in shares if s]), batch[0])
    streams = World(_Comm(1, 2)).share((np.arange(12).reshape(3, 4),), batch_axis=1)
    np.testing.assert_array_equal(streams[0][0], np.arange(12).reshape(3, 4)[:, 2:])
    assert streams[1:] == ((2, 4), 0.5)


def test_without_mpiexec_the_world_is_one_process():
    one = world()
    assert (one.rank, one.size, one.comm) == (0, 1, None)
    state = {"h": np.ones((2, 4, 3))}
    assert one.gather_rows(state, axis=1) is state and one.rows_of(state, axis=1) is state


# -- mpiexec -n 2 rnnfast train --------------------------------------------------------------------
def train(args, ranks=1, expect=0):
    cmd = ([MPIEXEC, "-n", str(ranks)] if ranks > 1 else []) + [str(BIN / "rnnfast"), "train", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == expect, done.stderr[-3000:]
    return done


def assert_same_run(a: Path, b: Path, rtol=1e-9):
    """The checkpoints agree: every tensor (weights, optimizer state, carried state) to rtol
    relative to its largest value, and the step, data position and dropout streams exactly."""
    ta, ma = load_checkpoint(a / "latest.safetensors")
    tb, mb = load_checkpoint(b / "latest.safetensors")
    assert sorted(ta) == sorted(tb)
    for name in ta:
        scale = float(np.max(np.abs(ta[name]))) or 1.0
        worst = float(np.max(np.abs(ta[name] - tb[name]))) / scale
        assert worst <= rtol, f"{name}: {worst:.2e} relative"
    for key in ("trainer", "data", "rng", "optimizer"):
        assert ma[key] == mb[key], key


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One process: 30 steps, and 20 steps to resume from."""
    root = tmp_path_factory.mktemp("single")
    train([*MODEL, "--steps", "30", "--out", str(root / "30")])
    train([*MODEL, "--steps", "20", "--out", str(root / "20")])
    return root


@needs_mpi
def test_two_ranks_train_the_model_one_process_trains(single, tmp_path):
    done = train([*MODEL, "--steps", "30", "--out", str(tmp_path / "run")], ranks=2)
    assert_same_run(single / "30", tmp_path / "run")
    assert "cpu float64; 2 processes (mpiexec) of 4 sequences each;" in done.stderr.splitlines()[0]
    assert done.stderr.count("step 10: validation loss") == 1  # rank 0 alone prints
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2
    assert json.loads((single / "30" / "config.json").read_text())["world_size"] == 1
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ones = [json.loads(line) for line in (single / "30" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if s["event"] == "step"] == list(range(1, 31))
    for ours, theirs in zip(steps, ones):  # the global batch's mean loss, tokens and norm
        if ours["event"] == "step":
            assert ours["tokens"] == theirs["tokens"] == 8 * 16
            np.testing.assert_allclose([ours["loss"], ours["grad_norm"]], [theirs["loss"], theirs["grad_norm"]],
                                       rtol=1e-9)


@needs_mpi
def test_resume_with_the_same_or_another_number_of_processes_is_exact(single, tmp_path):
    two = tmp_path / "two"
    train([*MODEL, "--steps", "20", "--out", str(two)], ranks=2)
    assert_same_run(single / "20", two)  # the carried state gathered into the global batch's
    shutil.copytree(two, tmp_path / "two-then-one")
    shutil.copytree(single / "20", tmp_path / "one-then-two")
    train(["--resume", str(two / "latest.safetensors"), "--steps", "30", "--no-progress"], ranks=2)
    train(["--resume", str(tmp_path / "two-then-one" / "latest.safetensors"), "--steps", "30", "--no-progress"])
    train(["--resume", str(tmp_path / "one-then-two" / "latest.safetensors"), "--steps", "30", "--no-progress"],
          ranks=2)
    for run in ("two", "two-then-one", "one-then-two"):
        assert_same_run(single / "30", tmp_path / run)


@needs_mpi
def test_a_batch_that_does_not_divide_among_the_ranks_is_one_line(tmp_path):
    done = train([*MODEL, "--batch-size", "7", "--steps", "2", "--out", str(tmp_path / "run")], ranks=2, expect=2)
    assert done.stderr.strip().splitlines() == [
        "Error: --batch-size 7 does not divide among 2 processes; the global batch is split evenly: "
        "give a multiple of 2 (see 'rnnfast train --help')"]
    assert not (tmp_path / "run").exists()


def _rank_pid(rank: int, below: int) -> int | None:
    """The pid of the process that mpiexec (pid ``below``) started as ``rank``."""
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if f"PMI_RANK={rank}".encode() in environ and b"rnnfast" in cmdline and _descends(int(proc.name), below):
            return int(proc.name)
    return None


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


@needs_mpi
def test_a_killed_rank_stops_the_others_within_seconds_naming_it_and_the_checkpoint_is_whole(tmp_path):
    run = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "2", str(BIN / "rnnfast"), "train", *MODEL, "--steps", "100000", "--out", str(run)]
    mpiexec = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not (run / "latest.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (run / "latest.safetensors").exists(), "no checkpoint within two minutes"
        time.sleep(1.0)  # into the steps after it, perhaps amid the next checkpoint's write
        pid = _rank_pid(1, mpiexec.pid)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = mpiexec.communicate(timeout=30)
        took = time.monotonic() - killed
    finally:
        if mpiexec.poll() is None:
            mpiexec.kill()
    assert took < 10, f"the others took {took:.1f} s to stop"
    assert mpiexec.returncode != 0
    said = [line for line in stderr.splitlines() if line.startswith("rnnfast train: rank")]
    assert said == [f"rnnfast train: rank 1 (pid {pid}) died (killed, or crashed below Python); stopping the other "
                    f"ranks; the last checkpoint is whole: continue with rnnfast train --resume "
                    f"{run}/latest.safetensors"]
    tensors, meta = load_checkpoint(run / "latest.safetensors")  # whole: it loads and checks
    assert meta["trainer"]["step"] % 10 == 0 and meta["trainer"]["step"] > 0
    done = train(["--resume", str(run / "latest.safetensors"), "--steps", str(meta["trainer"]["step"] + 2),
                  "--no-progress"])
    assert f"stopped at step {meta['trainer']['step'] + 2}" in done.stdout


def test_config_json_records_the_processes_and_repeats_the_run_without_them(single, tmp_path):
    # world_size is mpiexec's -n, not an option: --config RUN/config.json passes over it
    done = train(["--config", str(single / "30" / "config.json"), "--steps", "1", "--out", str(tmp_path / "again")])
    assert "stopped at step 1" in done.stdout


@needs_mpi
def test_a_forecaster_on_shuffled_rows_with_a_last_batch_of_one_row_trains_as_one_process(tmp_path):
    # 295 values, windows of 8: 257 training windows, so every epoch ends in a batch of one row,
    # which rank 1 holds and rank 0 steps through on a stand-in row of weight 0
    t = np.arange(295)
    values = np.sin(t / 7) + 0.1 * np.random.default_rng(0).standard_normal(295)
    (tmp_path / "series.csv").write_text("v\n" + "\n".join(f"{v:.5f}" for v in values) + "\n")
    run = [str(tmp_path / "series.csv"), "--task", "forecast", "--column", "v", "--window", "8", "--dtype", "float64",
           "--hidden", "8", "--layers", "2", "--dropout", "0.2", "--zoneout", "0.1", "--recurrent-dropout", "0.1",
           "--batch-size", "8", "--steps", "70", "--eval-every", "35", "--no-progress"]
    done = train([*run, "--out", str(tmp_path / "one")])
    assert "257 training" in done.stderr
    train([*run, "--out", str(tmp_path / "two")], ranks=2)
    assert_same_run(tmp_path / "one", tmp_path / "two")  # 70 steps: two epochs of 33 batches and more


@needs_mpi
def test_a_translator_trains_as_one_process_with_its_loss_a_mean_over_target_tokens(tmp_path):
    """Its pairs have targets of different lengths, so a rank's share of the batch's mean is its
    pairs' part of the target tokens, not of the rows; teacher forcing below 1 and dropout draw on
    each rank what one process draws for the same rows."""
    rng = np.random.default_rng(0)
    lines = ["source\ttarget"]
    for _ in range(120):
        word = "".join(rng.choice(list("abcdefgh"), rng.integers(2, 9)))
        lines.append(f"{word}\t{word[::-1]}")
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n")
    run = [str(tmp_path / "pairs.tsv"), "--task", "translate", "--dtype", "float64", "--hidden", "8", "--layers", "2",
           "--cell", "gru", "--dropout", "0.2", "--teacher-forcing", "0.6", "--batch-size", "8", "--steps", "12",
           "--eval-every", "6", "--no-progress"]
    train([*run, "--out", str(tmp_path / "one")])
    train([*run, "--out", str(tmp_path / "two")], ranks=2)
    assert_same_run(tmp_path / "one", tmp_path / "two")
