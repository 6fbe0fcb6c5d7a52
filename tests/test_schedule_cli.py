"""``rnnfast train --lr-schedule``: the learning rate each step logs is the schedule's formula, the
constant default is today's run, warm-up ramps, a resumed run continues the schedule exactly, and
each bad schedule option is a one-line error. Also optim.Warmup against its closed form and torch."""
import json
import math

import numpy as np
import pytest

from rnnfast import optim
from rnnfast.checkpoint import load_checkpoint, save_checkpoint
from rnnfast.trainer import Trainer
from test_cli import TINY, run

LR = 2e-3


@pytest.fixture(scope="module")
def corpus(shakespeare_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(shakespeare_path.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def step_logs(out, field):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)[field] for line in lines if '"event": "step"' in line]


def cosine(i, warmup, total, low):
    if i < warmup:
        return LR * (i + 1) / warmup
    return low + (LR - low) * 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warmup) / (total - warmup))))


# the rate of the update after i earlier ones (metrics.jsonl's step i + 1), written out
SCHEDULES = {
    "constant": ([], lambda i: LR),
    "warmup": (["--warmup-steps", 4], lambda i: LR * min(i + 1, 4) / 4),
    "step": (["--lr-schedule", "step", "--lr-step-size", 2, "--lr-gamma", 0.5], lambda i: LR * 0.5 ** (i // 2)),
    "step-default-gamma": (["--lr-schedule", "step", "--lr-step-size", 3], lambda i: LR * 0.1 ** (i // 3)),
    "step-warmup": (["--lr-schedule", "step", "--lr-step-size", 2, "--lr-gamma", 0.5, "--warmup-steps", 2],
                    lambda i: LR * (i + 1) / 2 if i < 2 else LR * 0.5 ** ((i - 2) // 2)),
    "exponential": (["--lr-schedule", "exponential", "--lr-gamma", 0.8], lambda i: LR * 0.8**i),
    "exponential-warmup": (["--lr-schedule", "exponential", "--lr-gamma", 0.8, "--warmup-steps", 3],
                           lambda i: LR * (i + 1) / 3 if i < 3 else LR * 0.8 ** (i - 3)),
    "cosine": (["--lr-schedule", "cosine"], lambda i: cosine(i, 0, 6, 0.0)),
    "cosine-warmup": (["--lr-schedule", "cosine", "--warmup-steps", 2, "--min-lr", 1e-4],
                      lambda i: cosine(i, 2, 6, 1e-4)),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_logged_lr_is_the_schedules_formula(corpus, tmp_path, name):
    args, formula = SCHEDULES[name]
    run("train", corpus, *TINY, *args, "--steps", 6, "--eval-every", 6, "--out", tmp_path)
    assert step_logs(tmp_path, "lr") == pytest.approx([formula(i) for i in range(6)], rel=1e-12)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["lr_schedule"] == (args[1] if args and args[0] == "--lr-schedule" else "constant")


def test_constant_is_the_run_without_the_flag(corpus, tmp_path):
    run("train", corpus, *TINY, "--steps", 4, "--eval-every", 4, "--out", tmp_path / "plain")
    run("train", corpus, *TINY, "--steps", 4, "--eval-every", 4, "--out", tmp_path / "constant",
        "--lr-schedule", "constant", "--warmup-steps", 0)
    assert step_logs(tmp_path / "plain", "loss") == step_logs(tmp_path / "constant", "loss")
    plain, meta = load_checkpoint(tmp_path / "plain" / "latest.safetensors")
    constant, _ = load_checkpoint(tmp_path / "constant" / "latest.safetensors")
    for name in plain:
        np.testing.assert_array_equal(plain[name], constant[name], err_msg=name)
    assert meta["schedule"] is None  # no schedule object: the optimizer's lr is left alone, as before


def test_resume_mid_cosine_continues_the_same_rates(corpus, tmp_path, monkeypatch):
    common = [corpus, *TINY, "--lr-schedule", "cosine", "--warmup-steps", 2, "--min-lr", 1e-4, "--eval-every", 2]
    run("train", *common, "--steps", 8, "--out", tmp_path / "straight")
    stop_reason = Trainer._stop_reason
    # the first part stops at step 4 of its 8, as a Ctrl-C or --time-budget would
    monkeypatch.setattr(Trainer, "_stop_reason", lambda self, *a: "steps" if self.step >= 4 else stop_reason(self, *a))
    run("train", *common, "--steps", 8, "--out", tmp_path / "split")
    monkeypatch.undo()
    assert len(step_logs(tmp_path / "split", "lr")) == 4
    result = run("train", "--resume", tmp_path / "split" / "latest.safetensors")
    assert "at step 4" in result.stderr
    assert step_logs(tmp_path / "split", "lr") == step_logs(tmp_path / "straight", "lr")
    assert step_logs(tmp_path / "split", "loss") == step_logs(tmp_path / "straight", "loss")
    straight, _ = load_checkpoint(tmp_path / "straight" / "latest.safetensors")
    resumed, _ = load_checkpoint(tmp_path / "split" / "latest.safetensors")
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)
    # more steps than the first run's --steps: the cosine keeps its length and stays at --min-lr
    run("train", "--resume", tmp_path / "split" / "latest.safetensors", "--steps", 10)
    assert step_logs(tmp_path / "split", "lr")[8:] == pytest.approx([1e-4, 1e-4], rel=1e-12)


def test_resume_mid_step_decay_continues_the_same_rates(corpus, tmp_path):
    common = [corpus, *TINY, "--lr-schedule", "step", "--lr-step-size", 2, "--warmup-steps", 1, "--eval-every", 3]
    run("train", *common, "--steps", 6, "--out", tmp_path / "straight")
    run("train", *common, "--steps", 3, "--out", tmp_path / "split")
    run("train", "--resume", tmp_path / "split" / "latest.safetensors", "--steps", 6)
    assert step_logs(tmp_path / "split", "lr") == step_logs(tmp_path / "straight", "lr")
    assert step_logs(tmp_path / "split", "loss") == step_logs(tmp_path / "straight", "loss")
    result = run("train", "--resume", tmp_path / "split" / "latest.safetensors", "--lr-schedule", "exponential",
                 "--lr-gamma", 0.9, ok=False)
    assert "differs from the resumed run's step" in result.stderr


def test_a_checkpoint_from_before_schedules_resumes_at_its_constant_rate(corpus, tmp_path):
    run("train", corpus, *TINY, "--steps", 2, "--eval-every", 2, "--out", tmp_path)
    path = tmp_path / "latest.safetensors"
    tensors, meta = load_checkpoint(path)
    for name in ("lr_schedule", "warmup_steps", "lr_step_size", "lr_gamma", "min_lr"):
        del meta["cli"]["options"][name]
    del meta["cli"]["schedule"]["lr_total_steps"]
    save_checkpoint(path, tensors, meta)
    run("train", "--resume", path, "--steps", 3)
    assert step_logs(tmp_path, "lr") == [LR] * 3


@pytest.mark.parametrize("args, message", [
    (["--lr-schedule", "exponential", "--lr-gamma", 0], "--lr-gamma"),
    (["--lr-schedule", "step", "--lr-step-size", 2, "--lr-gamma", -0.5], "--lr-gamma"),
    (["--lr-schedule", "step", "--lr-step-size", 0], "--lr-step-size"),
    (["--lr-schedule", "step"], "needs --lr-step-size"),
    (["--lr-schedule", "exponential"], "needs --lr-gamma"),
    (["--warmup-steps", -1], "--warmup-steps"),
    (["--lr-schedule", "cosine", "--warmup-steps", 5], "leaves no steps"),
    (["--lr-schedule", "cosine", "--min-lr", 0.01], "--min-lr 0.01 is above --lr 0.002"),
    (["--lr-schedule", "cosine", "--min-lr", -1], "--min-lr"),
    (["--lr-gamma", 0.5], "--lr-gamma is for --lr-schedule step and exponential"),
    (["--lr-schedule", "cosine", "--lr-step-size", 2], "--lr-step-size is for --lr-schedule step"),
    (["--lr-schedule", "step", "--lr-step-size", 2, "--min-lr", 0], "--min-lr is for --lr-schedule cosine"),
])
def test_bad_schedule_options_are_one_line_errors(corpus, tmp_path, args, message):
    result = run("train", corpus, *TINY, *args, "--steps", 5, "--out", tmp_path / "run", ok=False)
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_cosine_needs_steps(corpus, tmp_path):
    result = run("train", corpus, *TINY, "--lr-schedule", "cosine", "--epochs", 1, "--out", tmp_path / "run", ok=False)
    assert "--lr-schedule cosine decays over --steps; give --steps N" in result.stderr


# -- optim.Warmup -----------------------------------------------------------------------------------

@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_warmup_ramps_linearly_then_runs_the_schedule_from_its_start(warmup):
    inner = optim.StepDecay(0.5, step_size=4, gamma=0.3)
    sched = optim.Warmup(inner, warmup)
    expected = [0.5 * (i + 1) / warmup if i < warmup else inner.lr_at(i - warmup) for i in range(30)]
    assert [sched.lr_at(i) for i in range(30)] == pytest.approx(expected, rel=1e-15)
    assert optim.Warmup(optim.Constant(0.5), warmup).lr_at(warmup) == 0.5


def test_warmup_matches_torch_linear_then_sequential():
    torch = pytest.importorskip("torch")
    lr_sched = torch.optim.lr_scheduler
    base, warmup, n = 0.5, 4, 30
    for ours, theirs in [
        (optim.StepDecay(base, 3, 0.5), lambda o: lr_sched.StepLR(o, step_size=3, gamma=0.5)),
        (optim.ExponentialDecay(base, 0.9), lambda o: lr_sched.ExponentialLR(o, gamma=0.9)),
        (optim.Constant(base), lambda o: lr_sched.ConstantLR(o, factor=1.0, total_iters=0)),
    ]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
        sched = lr_sched.SequentialLR(opt, [lr_sched.LinearLR(opt, 1 / warmup, 1.0, total_iters=warmup - 1),
                                            theirs(opt)], milestones=[warmup])
        expected = []
        for _ in range(n):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert [optim.Warmup(ours, warmup).lr_at(i) for i in range(n)] == pytest.approx(expected, rel=1e-12)


def test_schedule_parameters_out_of_range_are_value_errors():
    with pytest.raises(ValueError, match="gamma > 0"):
        optim.ExponentialDecay(1.0, 0.0)
    with pytest.raises(ValueError, match="gamma > 0"):
        optim.StepDecay(1.0, 2, -1.0)
    with pytest.raises(ValueError, match="warmup_steps >= 0"):
        optim.Warmup(optim.Constant(1.0), -1)
