"""The training loop: it learns (the "Done when" runs), resumes exactly, guards against NaN/Inf, stops
cleanly on Ctrl-C, early stopping, time and epoch limits, callbacks, and loading trained models."""
import io
import json
import os
import signal

import numpy as np
import pytest

import rnnfast as rf
from rnnfast.checkpoint import load_checkpoint, save_checkpoint
from rnnfast.models import CharRNN, SeqRegressor, from_config, load_model

TEXT = "".join(np.random.default_rng(0).choice(list("abcdefgh .\n"), size=3000))


def sine_windows(n=1500, window=24, noise=0.1, seed=0):
    """A noisy sine wave cut into standardised (window -> next value) windows, chronologically split."""
    t = np.arange(n)
    series = np.sin(2 * np.pi * t / 40) + noise * np.random.default_rng(seed).standard_normal(n)
    return rf.data.forecast_windows(series, window=window, horizon=1, val_frac=0.2, scaler=rf.data.StandardScaler())


def lm_trainer(out_dir, resume=None, callbacks=(), model=None, **kwargs):
    """A small float64 CharRNN run with everything that must survive a resume: dropout in two places,
    Adam's moments, a warm-up/cosine schedule, clipping, the carried state and epoch wrap-arounds."""
    vocab = rf.data.Vocab.from_text(TEXT)
    train, val, _ = rf.data.split_ids(vocab.encode(TEXT), val_frac=0.1)
    if model is None:
        model = CharRNN(len(vocab), hidden_size=8, num_layers=2, dropout=0.3, dtype=np.float64, seed=0)
    batcher = rf.data.StreamBatcher(train, 4, 25)  # 26 batches per epoch
    return rf.Trainer(model, rf.optim.Adam(lr=1e-2), batcher, val, clip=1.0, eval_every=7, out_dir=out_dir,
                      schedule=rf.optim.CosineWarmup(1e-2, warmup_steps=5, total_steps=60), resume=resume,
                      callbacks=callbacks, meta={"vocab": vocab.to_dict()}, **kwargs)


def assert_same_params(a, b):
    assert a.params.keys() == b.params.keys()
    for name, p in a.params.items():
        np.testing.assert_array_equal(p, b.params[name], err_msg=name)


class StopAt(rf.Callback):
    """Raises ``exc`` (or sends SIGINT to this process) at the end of step ``step``."""

    def __init__(self, step, exc=KeyboardInterrupt):
        self.step, self.exc = step, exc

    def on_step_end(self, trainer, step, logs):
        if step == self.step:
            if self.exc == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise self.exc


# -- "Done when": it learns ----------------------------------------------------------------------
@pytest.mark.slow
def test_charrnn_learns_shakespeare_well_below_the_unigram_baseline(shakespeare_path, tmp_path):
    text = rf.data.read_text(shakespeare_path)[:220_000]
    vocab = rf.data.Vocab.from_text(text)
    train, val, _ = rf.data.split_ids(vocab.encode(text), val_frac=0.1)
    freq = np.bincount(train, minlength=len(vocab)) / train.size
    unigram = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())  # nats/char of the best context-free guess
    assert 3.0 < unigram < 3.5
    model = CharRNN(len(vocab), hidden_size=128, num_layers=1, seed=0)
    result = rf.fit(model, rf.data.StreamBatcher(train, 32, 64), val, lr=3e-3, clip=5.0, steps=200, eval_every=100,
                    out_dir=tmp_path, meta={"vocab": vocab.to_dict()})
    assert result["stopped"] == "steps"
    assert result["best_val"] < 0.85 * unigram, (result["best_val"], unigram)
    loaded, meta = load_model(tmp_path / "best.safetensors")
    text = loaded.sample("ROMEO:", 50, seed=0, vocab=rf.data.Vocab.from_dict(meta["vocab"]))
    assert text.startswith("ROMEO:") and len(text) == 56


def test_seq_regressor_beats_the_last_value_baseline_on_a_noisy_sine():
    splits = sine_windows()
    (X, Y), (Xv, Yv) = splits["train"], splits["val"]
    model = SeqRegressor(1, hidden_size=32, seed=0)
    result = rf.fit(model, rf.ArrayBatcher((X, Y), 64, seed=0), (Xv, Yv), lr=1e-2, steps=300, eval_every=100)
    last_value = float(((Xv[:, -1:] - Yv) ** 2).mean())
    assert model.evaluate((Xv, Yv))["loss"] < 0.7 * last_value
    assert result["best_val"] < 0.7 * last_value


# -- exact resume ---------------------------------------------------------------------------------
def test_resume_is_exact_for_a_charrnn(tmp_path):
    full = lm_trainer(tmp_path / "full")
    uninterrupted = full.run(steps=60)  # crosses two epoch boundaries (26 batches each)

    first = lm_trainer(tmp_path / "split").run(steps=31)
    assert first["step"] == 31
    # everything fresh, built from the checkpoint alone (the model's seed need not match)
    model, meta = load_model(tmp_path / "split" / "latest.safetensors")
    assert meta["trainer"]["step"] == 31 and meta["data"]["epoch"] == 1
    resumed = lm_trainer(tmp_path / "split", resume=tmp_path / "split" / "latest.safetensors",
                         model=from_config({**meta["model"], "seed": 123}))
    second = resumed.run(steps=60)
    assert first["losses"] + second["losses"] == uninterrupted["losses"]
    assert_same_params(resumed.model, full.model)
    for name, slots in full.optimizer.state.items():
        for slot, arr in slots.items():
            np.testing.assert_array_equal(resumed.optimizer.state[name][slot], arr)
    assert resumed.model.rng_state() == full.model.rng_state()
    np.testing.assert_array_equal(resumed.model.carried_state()["c"], full.model.carried_state()["c"])
    assert resumed.meta["vocab"] == meta["vocab"]


def test_resume_is_exact_for_a_shuffled_regressor(tmp_path):
    (X, Y) = sine_windows(n=400)["train"]

    def trainer(out_dir, resume=None):
        model = SeqRegressor(1, hidden_size=6, num_layers=2, bidirectional=True, dropout=0.2, dtype=np.float64, seed=0)
        return rf.Trainer(model, rf.optim.SGD(lr=0.05, momentum=0.9), rf.ArrayBatcher((X, Y), 50, seed=1),
                          eval_every=4, out_dir=out_dir, resume=resume)

    full = trainer(tmp_path / "full")
    losses = full.run(steps=20)["losses"]
    first = trainer(tmp_path / "split").run(steps=9)["losses"]
    resumed = trainer(None, resume=tmp_path / "split" / "latest.safetensors")
    assert first + resumed.run(steps=20)["losses"] == losses
    assert_same_params(resumed.model, full.model)


def test_keyboard_interrupt_saves_latest_and_resumes_exactly(tmp_path):
    full = lm_trainer(tmp_path / "full")
    uninterrupted = full.run(steps=30)

    result = lm_trainer(tmp_path / "run", callbacks=[StopAt(12)]).run(steps=30)
    assert result["stopped"] == "interrupted" and result["step"] == 12
    meta = load_checkpoint(tmp_path / "run" / "latest.safetensors")[1]
    assert meta["trainer"]["step"] == 12
    resumed = lm_trainer(tmp_path / "run", resume=tmp_path / "run" / "latest.safetensors")
    assert result["losses"] + resumed.run(steps=30)["losses"] == uninterrupted["losses"]
    assert_same_params(resumed.model, full.model)


def test_ctrl_c_stops_at_the_end_of_the_step(tmp_path):
    # Whatever handler was there is put back: Python's own, or SIG_IGN when the tests run as a
    # background job of a non-interactive shell (which starts them with SIGINT ignored).
    before = signal.getsignal(signal.SIGINT)
    result = lm_trainer(tmp_path, callbacks=[StopAt(3, "sigint")]).run(steps=30)
    assert result["stopped"] == "interrupted" and result["step"] == 3
    assert load_checkpoint(tmp_path / "latest.safetensors")[1]["trainer"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before


# -- the NaN/Inf guard ----------------------------------------------------------------------------
class PoisonAt:
    """Yields a batcher's batches, with NaN targets in the ``step``-th."""

    def __init__(self, batcher, step):
        self.batcher, self.step, self.count = batcher, step, 0

    def __iter__(self):
        return self

    def __next__(self):
        x, y = next(self.batcher)
        self.count += 1
        return (x, np.full_like(y, np.nan)) if self.count == self.step else (x, y)


def test_a_poisoned_batch_raises_and_keeps_the_last_good_checkpoint(tmp_path):
    (X, Y), (Xv, Yv) = sine_windows(n=400)["train"], sine_windows(n=400)["val"]
    model, history = SeqRegressor(1, hidden_size=4, seed=0), rf.History()
    trainer = rf.Trainer(model, rf.optim.Adam(lr=1e-2), PoisonAt(rf.ArrayBatcher((X, Y), 16), 5), (Xv, Yv),
                         eval_every=3, out_dir=tmp_path, callbacks=[history])
    with pytest.raises(rf.NonFiniteLossError, match="at step 5") as info:
        trainer.run(steps=10)
    message = str(info.value)
    assert "\n" not in message and "last good checkpoint" in message and "learning rate" in message
    assert load_checkpoint(tmp_path / "latest.safetensors")[1]["trainer"]["step"] == 3
    assert history.result["stopped"] == "non_finite"  # callbacks hear of it (a progress bar closes)


def test_a_huge_learning_rate_raises_and_never_saves_non_finite_parameters(tmp_path):
    (X, Y), (Xv, Yv) = sine_windows(n=400)["train"], sine_windows(n=400)["val"]
    trainer = rf.Trainer(SeqRegressor(1, hidden_size=4, seed=0), rf.optim.SGD(lr=1e9), rf.ArrayBatcher((X, Y), 16),
                         (Xv, Yv), eval_every=1, out_dir=tmp_path)
    with pytest.raises(rf.NonFiniteLossError, match="lower the learning rate"):
        trainer.run(steps=20)
    tensors, meta = load_checkpoint(tmp_path / "latest.safetensors")
    assert 1 <= meta["trainer"]["step"] <= trainer.step
    assert all(np.isfinite(t).all() for t in tensors.values())


# -- limits, early stopping, callbacks ------------------------------------------------------------
def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path):
    trainer = lm_trainer(tmp_path, early_stopping_patience=2)
    trainer.optimizer = rf.optim.SGD(lr=0.0)  # nothing changes, so nothing improves after the first
    trainer.schedule = None
    result = trainer.run(steps=100)
    assert result["stopped"] == "early_stopping" and result["step"] == 21
    assert result["best_step"] == 7
    assert load_checkpoint(tmp_path / "best.safetensors")[1]["trainer"]["step"] == 7


def test_time_budget_and_epochs(tmp_path):
    trainer = lm_trainer(tmp_path)
    resets = []
    reset = trainer.model.reset_state
    trainer.model.reset_state = lambda: (resets.append(trainer.step), reset())
    result = trainer.run(epochs=2)
    assert result["stopped"] == "epochs" and result["step"] == 52 and result["epoch"] == 2
    assert resets == [0, 26]  # the carried state starts over with each epoch
    result = trainer.run(steps=10**6, time_budget=0.2)
    assert result["stopped"] == "time_budget" and 52 < result["step"] < 10**6
    assert load_checkpoint(tmp_path / "latest.safetensors")[1]["trainer"]["step"] == result["step"]
    with pytest.raises(ValueError, match="steps, epochs or time_budget"):
        trainer.run()


def test_callbacks_see_every_event(tmp_path):
    history, bar_out = rf.History(), io.StringIO()
    callbacks = [history, rf.JSONLLogger(tmp_path / "log.jsonl"), rf.ProgressBar(file=bar_out)]
    result = lm_trainer(tmp_path, callbacks=callbacks).run(steps=10)
    assert history.steps == list(range(1, 11)) and history.losses == result["losses"]
    assert history.val_steps == [7, 10] and history.result is result
    assert [kind for kind, _ in history.checkpoints][:2] == ["latest", "best"]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    assert len(steps) == 10 and {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed", "eta"} <= set(steps[0])
    assert steps[0]["tokens"] == 100 and steps[-1]["eta"] == 0
    assert [r["step"] for r in records if r["event"] == "eval"] == [7, 10]
    assert records[-1]["event"] == "end" and records[-1]["stopped"] == "steps"
    assert "loss=" in bar_out.getvalue() and "10/10" in bar_out.getvalue()


# -- loading trained models -----------------------------------------------------------------------
def test_load_model_and_clear_errors_for_foreign_checkpoints(tmp_path):
    trainer = lm_trainer(tmp_path)
    trainer.run(steps=7)
    model, meta = load_model(tmp_path / "latest.safetensors")
    assert not model.training and meta["rnnfast_version"] == rf.__version__
    assert_same_params(model, trainer.model)
    assert rf.data.Vocab.from_dict(meta["vocab"]) == rf.data.Vocab.from_text(TEXT)

    tensors, meta = load_checkpoint(tmp_path / "latest.safetensors")
    save_checkpoint(tmp_path / "plain.safetensors", tensors, {"step": 1})
    with pytest.raises(rf.CheckpointError, match="no model description"):
        load_model(tmp_path / "plain.safetensors")
    save_checkpoint(tmp_path / "wider.safetensors", tensors, {**meta, "model": {**meta["model"], "hidden_size": 9}})
    with pytest.raises(rf.CheckpointError, match="does not fit this CharRNN") as info:
        load_model(tmp_path / "wider.safetensors")
    assert "\n" not in str(info.value)
    other = CharRNN(len(rf.data.Vocab.from_text(TEXT)), hidden_size=8, num_layers=1, dtype=np.float64)
    with pytest.raises(rf.CheckpointError, match="num_layers=2"):
        lm_trainer(None, resume=tmp_path / "latest.safetensors", model=other)


# -- GPU ------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_training_matches_cpu_and_resumes(tmp_path):
    import cupy

    def gpu_trainer(out_dir, resume=None):
        model = CharRNN(len(rf.data.Vocab.from_text(TEXT)), hidden_size=8, num_layers=2, dropout=0.3,
                        dtype=np.float64, seed=0).to("gpu")
        return lm_trainer(out_dir, resume=resume, model=model)

    cpu, gpu = lm_trainer(tmp_path / "cpu"), gpu_trainer(tmp_path / "gpu")
    cpu_losses, gpu_losses = cpu.run(steps=30)["losses"], gpu.run(steps=30)["losses"]
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-9)
    first = gpu_trainer(tmp_path / "split").run(steps=13)["losses"]
    resumed = gpu_trainer(tmp_path / "split", resume=tmp_path / "split" / "latest.safetensors")
    np.testing.assert_allclose(first + resumed.run(steps=30)["losses"], gpu_losses, rtol=1e-12)
    for name, p in gpu.model.params.items():
        np.testing.assert_allclose(cupy.asnumpy(resumed.model.params[name]), cupy.asnumpy(p), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(cupy.asnumpy(p), cpu.model.params[name], rtol=1e-8, atol=1e-10)
    model, _ = load_model(tmp_path / "gpu" / "latest.safetensors")  # a GPU run's checkpoint loads on the CPU
    for name, p in model.params.items():
        np.testing.assert_array_equal(p, cupy.asnumpy(gpu.model.params[name]))
