"""``rnnfast train --init-from CKPT``: a new run from a checkpoint's weights (char-rnn's -init_from).
The library's :func:`init_weights_from` keeps known characters' rows exactly and gives new ones the
fresh model's rows; the command starts a new run at step 1 in its own directory; bad input is one line
and creates nothing."""
import importlib
import json

import numpy as np
import pytest

from rnnfast.checkpoint import init_weights_from, load_model, save_checkpoint
from rnnfast.models import CharRNN
from test_cli import TINY, corpus, run, sine_csv  # noqa: F401  (fixtures)

VOCAB_ROWS = ("embed.weight", "head.weight", "head.bias")


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):  # noqa: F811
    """A tiny charlm run's directory."""
    out = tmp_path_factory.mktemp("runs") / "base"
    run("train", corpus, *TINY, "--steps", 4, "--eval-every", 2, "--out", out)
    return out


def test_init_weights_from_remaps_the_vocabulary(tmp_path):
    old = CharRNN(4, hidden_size=8, num_layers=2, cell="gru", seed=0)
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, old.state_dict(), {"model": old.config(), "vocab": {"chars": list("abcd")}})
    chars = list("bdxyz")  # a, c dropped; x, y, z new
    new = CharRNN(len(chars), hidden_size=8, num_layers=2, cell="gru", seed=5)
    fresh = new.state_dict()
    init_weights_from(new, path, chars=chars)
    got, was = new.state_dict(), old.state_dict()
    for name in VOCAB_ROWS:
        assert got[name].shape[0] == len(chars)
        np.testing.assert_array_equal(got[name][[0, 1]], was[name][[1, 3]])  # b, d keep their rows
        np.testing.assert_array_equal(got[name][2:], fresh[name][2:])  # new ones: the fresh model's
    for name in got:
        if name not in VOCAB_ROWS:
            np.testing.assert_array_equal(got[name], was[name])


def test_init_weights_from_refuses_another_shape(tmp_path):
    old = CharRNN(3, hidden_size=8, num_layers=1, seed=0)
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, old.state_dict(), {"model": old.config(), "vocab": {"chars": list("abc")}})
    with pytest.raises(Exception, match="does not fit"):
        init_weights_from(CharRNN(3, hidden_size=6, num_layers=1, seed=0), path, chars=list("abc"))


def test_cli_new_run_from_a_checkpoint_on_new_data(trained, corpus, tmp_path):  # noqa: F811
    text = corpus.read_text(encoding="utf-8")
    new_data = tmp_path / "new.txt"
    new_data.write_text((text.replace("z", "").replace("Z", "") + "\u00e9\u00df") * 1, encoding="utf-8")
    out = tmp_path / "fine"
    # the shape comes from the checkpoint: no --hidden/--layers given
    result = run("train", new_data, "--seq-len", 16, "--batch-size", 8, "--device", "cpu", "--no-progress",
                 "--init-from", trained / "best.safetensors", "--steps", 2, "--eval-every", 1, "--out", out,
                 "--seed", 3)
    assert "training from the weights of" in result.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps[0] == 1  # a new run: step 1, its own metrics
    config = json.loads((out / "config.json").read_text())
    assert config["init_from"] == str((trained / "best.safetensors").resolve())
    assert (config["hidden"], config["layers"]) == (16, 1)
    base, base_meta = load_model(trained / "best.safetensors")
    new, new_meta = load_model(out / "latest.safetensors")
    assert new_meta["trainer"]["step"] == new_meta["optimizer"]["step"] == 2  # a fresh optimizer (the base ran 4)
    chars_new, chars_old = new_meta["vocab"]["chars"], base_meta["vocab"]["chars"]
    assert "\u00e9" in chars_new and "z" not in chars_new and "z" in chars_old
    assert new.params["embed.weight"].shape[0] == len(chars_new)
    # the run resumes as any other and keeps its record
    run("train", "--resume", out / "latest.safetensors", "--steps", 3, "--no-progress", "--device", "cpu")
    assert json.loads((out / "config.json").read_text())["init_from"] == config["init_from"]


def test_cli_first_step_starts_from_the_checkpoint(trained, corpus, tmp_path, monkeypatch):  # noqa: F811
    """Before any update the new run's model is the checkpoint's (same corpus, so the same vocabulary)."""
    train_cli = importlib.import_module("rnnfast.cli.train")  # the module; rnnfast.cli.train is the command
    seen = {}
    real = train_cli.init_weights_from

    def spy(model, path, chars=None):
        real(model, path, chars)
        seen.update(model.state_dict())
    monkeypatch.setattr(train_cli, "init_weights_from", spy)
    run("train", corpus, "--seq-len", 16, "--batch-size", 8, "--device", "cpu", "--no-progress",
        "--init-from", trained / "best.safetensors", "--steps", 1, "--out", tmp_path / "same")
    base, _ = load_model(trained / "best.safetensors")
    for name, value in base.state_dict().items():
        np.testing.assert_array_equal(seen[name], value)


@pytest.mark.parametrize("case", ["forecast into charlm", "with resume", "conflicting hidden", "damaged"])
def test_cli_bad_init_from(case, trained, corpus, sine_csv, tmp_path):  # noqa: F811
    ckpt = trained / "best.safetensors"
    args = [corpus, "--seq-len", 16, "--batch-size", 8, "--device", "cpu", "--no-progress", "--steps", 1]
    if case == "forecast into charlm":
        fc = tmp_path / "fc"
        run("train", sine_csv, "--task", "forecast", "--column", "value", "--window", 8, "--hidden", 8,
            "--layers", 1, "--steps", 1, "--device", "cpu", "--no-progress", "--out", fc)
        ckpt, expect = fc / "latest.safetensors", "holds a forecast model and this is a charlm run"
    elif case == "with resume":
        args += ["--resume", trained / "latest.safetensors"]
        expect = "give one of them"
    elif case == "conflicting hidden":
        args += ["--hidden", 32]
        expect = "--hidden 32 differs"
    else:
        damaged = tmp_path / "damaged.safetensors"
        damaged.write_bytes(ckpt.read_bytes()[:200])
        ckpt, expect = damaged, "not a readable checkpoint"
    out = tmp_path / "new-run"
    result = run("train", *args, "--init-from", ckpt, "--out", out, ok=False)
    assert expect in result.stderr
    assert not out.exists()
