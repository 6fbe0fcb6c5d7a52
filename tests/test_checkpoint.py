"""Checkpoints: round trip, atomic writes that survive a crash, clear errors on bad files, torch loads them."""
import json
import os

import numpy as np
import pytest
import safetensors.numpy

from rnnfast import checkpoint
from rnnfast.checkpoint import (join_tensors, load_checkpoint, model_tensors, optimizer_tensors,
                                save_checkpoint)
from rnnfast.errors import CheckpointError


def sample_tensors():
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.standard_normal((5, 3)).astype(np.float32),
        "rnn.weight_ih_l0": rng.standard_normal((8, 3)),  # float64
        "step_counts": np.arange(4, dtype=np.int64),
        "mask": np.array([True, False]),
        "scalar": np.array(2.5, dtype=np.float32),
    }


def test_round_trip_tensors_and_meta(tmp_path):
    tensors = sample_tensors()
    tensors["transposed"] = np.arange(6, dtype=np.int32).reshape(2, 3).T  # not contiguous
    meta = {"config": {"cell": "lstm", "hidden": 8, "sizes": (1, 2)}, "vocab": {"chars": list("ab月")},
            "step": np.int64(7), "lr": np.float32(0.5), "rng": {"seed": 2**70}}
    path = tmp_path / "run" / "latest.safetensors"  # the directory is created
    save_checkpoint(path, tensors, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value), name
    assert loaded_meta == {"config": {"cell": "lstm", "hidden": 8, "sizes": [1, 2]},  # tuples come back as lists
                           "vocab": {"chars": ["a", "b", "月"]}, "step": 7, "lr": 0.5, "rng": {"seed": 2**70}}
    assert os.listdir(path.parent) == ["latest.safetensors"]


def test_file_is_plain_safetensors_with_rnnfast_metadata(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": np.ones(2, np.float32)}, {"step": 1})
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"] == {"format": "rnnfast-checkpoint", "version": "1", "rnnfast": '{"step": 1}'}
    assert np.array_equal(safetensors.numpy.load_file(path)["w"], np.ones(2, np.float32))


def test_meta_that_json_cannot_hold_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="JSON cannot store; put arrays in the tensors"):
        save_checkpoint(tmp_path / "c.safetensors", {}, {"bad": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_a_crash_mid_write_keeps_the_old_checkpoint(tmp_path, monkeypatch, interrupt):
    path = tmp_path / "latest.safetensors"
    save_checkpoint(path, {"w": np.zeros(1000)}, {"step": 1})
    before = path.read_bytes()
    real_fsync = os.fsync

    def crash(fd):
        os.ftruncate(fd, 100)  # half-written data, then the process is interrupted
        raise interrupt(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", crash)
    expected = KeyboardInterrupt if interrupt is KeyboardInterrupt else CheckpointError
    with pytest.raises(expected):
        save_checkpoint(path, {"w": np.ones(1000)}, {"step": 2})
    monkeypatch.setattr(checkpoint.os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["latest.safetensors"]  # no temporary file left behind
    assert load_checkpoint(path)[1] == {"step": 1}


def test_write_error_is_one_line(tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*c\.safetensors \(No space left on device\); "
                                              r"free some disk space or choose another --out"):
        save_checkpoint(tmp_path / "c.safetensors", {"w": np.zeros(3)}, {})


def test_bad_files_are_one_line_checkpoint_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, sample_tensors(), {"step": 3})
    data = good.read_bytes()
    cases = {
        "truncated.safetensors": data[: len(data) - 10],
        "header_only.safetensors": data[:40],
        "empty.safetensors": b"",
        "random.safetensors": np.random.default_rng(0).bytes(4096),
        "text.safetensors": b"ROMEO: a checkpoint? no, a play.\n" * 10,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=r"is not a readable checkpoint, it is truncated or corrupt .*"
                                                  r"use another checkpoint") as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value), name


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.safetensors; check the path"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a directory; pass the checkpoint file inside it"):
        load_checkpoint(tmp_path)


def test_foreign_and_newer_files(tmp_path):
    foreign = tmp_path / "model.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="a safetensors file that rnnfast did not write; to use foreign weights"):
        load_checkpoint(foreign)
    safetensors.numpy.save_file({"w": np.zeros(2)}, foreign, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="rnnfast did not write"):
        load_checkpoint(foreign)
    newer = tmp_path / "newer.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(2)}, newer,
                                metadata={"format": "rnnfast-checkpoint", "version": "2", "rnnfast": "{}"})
    with pytest.raises(CheckpointError, match=r"format version '2', and this rnnfast reads version 1; upgrade rnnfast"):
        load_checkpoint(newer)
    damaged = tmp_path / "damaged.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(2)}, damaged,
                                metadata={"format": "rnnfast-checkpoint", "version": "1", "rnnfast": "{oops"})
    with pytest.raises(CheckpointError, match="damaged metadata"):
        load_checkpoint(damaged)


def test_model_and_optimizer_parts():
    model = {"embed.weight": np.zeros(1), "rnn.weight_ih_l0": np.ones(1), "rnn.bias_hh_l0": np.ones(1)}
    optim = {"exp_avg.rnn.weight_ih_l0": np.full(1, 2.0), "exp_avg_sq.rnn.weight_ih_l0": np.full(1, 3.0)}
    tensors = join_tensors(model, optim)
    assert "optim/exp_avg.rnn.weight_ih_l0" in tensors
    assert model_tensors(tensors).keys() == model.keys()
    assert model_tensors(tensors, "rnn").keys() == {"weight_ih_l0", "bias_hh_l0"}
    assert model_tensors(tensors, "rnn.").keys() == {"weight_ih_l0", "bias_hh_l0"}
    assert optimizer_tensors(tensors).keys() == optim.keys()
    with pytest.raises(CheckpointError, match=r"no model tensors under 'gru\.' \(it holds embed\.weight, .*model\?"):
        model_tensors(tensors, "gru")


def test_torch_loads_the_recurrent_part(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    head = torch.nn.Linear(8, 5)
    state = {f"rnn.{k}": v.numpy() for k, v in lstm.state_dict().items()}
    state.update({f"head.{k}": v.numpy() for k, v in head.state_dict().items()})
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, join_tensors(state, {"step.rnn.weight_ih_l0": np.zeros(1)}), {"cell": "lstm"})

    fresh = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    tensors, _ = load_checkpoint(path)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in model_tensors(tensors, "rnn").items()})
    x = torch.randn(6, 2, 3)
    assert torch.equal(fresh(x)[0], lstm(x)[0])
    # The file is plain safetensors: torch's own reader gets the same tensors.
    by_torch = safetensors.torch.load_file(path)
    again = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    again.load_state_dict({k[len("rnn."):]: v for k, v in by_torch.items() if k.startswith("rnn.")})
    assert torch.equal(again(x)[0], lstm(x)[0])
