"""The training loop: steps, validation, checkpoints, early stopping, exact resume, and callbacks.

    >>> import numpy as np, rnnfast as rf
    >>> ids = np.tile(np.arange(5, dtype=np.int32), 200)
    >>> model = rf.models.CharRNN(vocab_size=5, hidden_size=16, num_layers=1, seed=0)
    >>> trainer = rf.Trainer(model, rf.optim.Adam(lr=1e-2), rf.data.StreamBatcher(ids, 4, 16), ids[:200],
    ...                      eval_every=50)
    >>> result = trainer.run(steps=100)
    >>> result["stopped"], result["step"], result["best_val"] < 0.5
    ('steps', 100, True)

One step: ``model.zero_grad()`` -> ``model.train_step(batch)`` -> a check that the loss is finite
(:class:`~rnnfast.errors.NonFiniteLossError` otherwise, leaving the last checkpoint as it was) ->
clipping by global norm -> the schedule sets ``optimizer.lr`` -> ``optimizer.step(params, grads)``.
Every ``eval_every`` steps and at the end the model is evaluated on the validation data and
``latest.safetensors`` (and, when the validation loss improved, ``best.safetensors``) is written to
``out_dir``. A checkpoint holds everything a resumed run needs to continue exactly as if it had never
stopped: parameters, optimizer state, the hidden state carried between batches, the data position,
the dropout streams, the trainer's counters and what callbacks keep (how far the metrics file had got).

While it runs, the trainer holds ``out_dir`` (:func:`rnnfast.rundir.hold`: another process that
tries gets an error naming this one's PID) and first removes the temporary files a killed run left
there. Whatever point a crash hits, ``latest`` and ``best`` agree once the run is resumed (see
:meth:`Trainer._evaluate_and_save`).

The loop prints nothing: progress goes to callbacks (:class:`rnnfast.callbacks.Callback`;
:mod:`rnnfast.callbacks` has :class:`~rnnfast.callbacks.ProgressBar`, :class:`~rnnfast.callbacks.JSONLLogger`
and :class:`~rnnfast.callbacks.History` built in).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

from rnnfast import __version__
from rnnfast.backend import get_array_module
from rnnfast.checkpoint import (carried_tensors, join_tensors, load_checkpoint, load_weights, optimizer_tensors,
                                save_checkpoint)
from rnnfast.errors import CheckpointError, NonFiniteLossError, RnnfastError
from rnnfast.models.base import REGULARISERS
from rnnfast.optim import Adam, clip_grad_norm
from rnnfast.parallel import World
from rnnfast.rundir import hold, remove_temp_files


@contextlib.contextmanager
def _sigint_at_step_boundary():
    """While training, a first Ctrl-C only asks the loop to stop after the current step, so the
    checkpoint saved then is of whole steps (not of an optimizer update cut in half); a second
    Ctrl-C interrupts at once. Outside the main thread signals cannot be caught; Ctrl-C then arrives
    as a plain KeyboardInterrupt."""
    flags = {"requested": False, "forced": False}
    if threading.current_thread() is not threading.main_thread():
        yield flags
        return

    def handler(signum, frame):
        if flags["requested"]:
            flags["forced"] = True
            raise KeyboardInterrupt
        flags["requested"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flags
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


@dataclasses.dataclass
class _Progress:
    """What one call of Trainer.run has seen so far."""

    start: float
    start_step: int
    tokens: int = 0
    losses: list = dataclasses.field(default_factory=list)
    last_val: dict | None = None


# Model settings added after checkpoints were first written, with the value a checkpoint that
# lacks one was trained with, so that a run from before a setting existed still resumes.
ADDED_SETTINGS = dict(REGULARISERS)


def config_mismatch(saved: dict, ours: dict) -> list[tuple[str, object, object]]:
    """``(setting, saved value, our value)`` for each setting but the seed in which a checkpoint's
    model config differs from a model's (empty when they agree); a setting in ADDED_SETTINGS that
    the checkpoint lacks counts as its value there."""
    saved = {**{k: v for k, v in ADDED_SETTINGS.items() if k in ours}, **saved}
    return [(k, saved.get(k), ours.get(k)) for k in sorted(set(saved) | set(ours))
            if k != "seed" and saved.get(k) != ours.get(k)]


def _describe_schedule(schedule) -> dict | None:
    if schedule is None:
        return None
    fields = dataclasses.asdict(schedule) if dataclasses.is_dataclass(schedule) else {}
    return {"type": type(schedule).__name__, **fields}


class Trainer:
    """Trains ``model`` on batches drawn from ``train_data`` with ``optimizer``.

    - ``train_data``: an iterator of batches the model's ``train_step`` takes (a StreamBatcher for a
      CharRNN, an :class:`rnnfast.data.ArrayBatcher` for the others). If it has ``epoch`` the run can be limited
      in epochs; ``batch_in_epoch == 0`` marks a new epoch, where the carried hidden state is reset;
      ``state_dict()``/``load_state_dict()`` make its position part of the checkpoint.
    - ``val_data``: whatever ``model.evaluate`` takes; None to skip validation (no best checkpoint).
    - ``clip``: max global gradient norm; ``schedule``: anything with ``lr_at(step)``.
    - ``early_stopping_patience``: stop after that many evaluations without a better validation loss.
    - ``out_dir``: where ``latest.safetensors`` and ``best.safetensors`` go (None: no checkpoints).
    - ``meta``: extra JSON-able entries for every checkpoint (the vocabulary, the task, a scaler).
    - ``resume``: a checkpoint path to continue from (see :meth:`resume`).
    - ``world``: the processes of a data-parallel run (:mod:`rnnfast.parallel`; default: this one).
      Each trains on its rows of every batch, and together they take the single process's steps;
      rank 0 alone holds ``out_dir``, writes the checkpoints, runs the validation (its result is
      broadcast) and should alone get callbacks. Time budgets and Ctrl-C are agreed on in each step's
      reduction, so every rank stops after the same step.
    """

    def __init__(self, model, optimizer, train_data, val_data=None, *, clip: float | None = None, schedule=None,
                 eval_every: int = 100, early_stopping_patience: int | None = None, out_dir=None,
                 callbacks=(), meta: dict | None = None, resume=None, world: World | None = None):
        if not isinstance(eval_every, (int, np.integer)) or eval_every < 1:
            raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be > 0 (or None for no clipping), got {clip!r}")
        if early_stopping_patience is not None and early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be at least 1, got {early_stopping_patience!r}")
        self.model, self.optimizer = model, optimizer
        self.train_data, self.val_data = train_data, val_data
        self.clip, self.schedule, self.eval_every = clip, schedule, int(eval_every)
        self.early_stopping_patience = early_stopping_patience
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.callbacks = list(callbacks)
        self.meta = dict(meta or {})
        self.step = 0  # optimizer updates done
        self.best_val = None  # best validation loss so far
        self.best_step = None
        self.evals_since_best = 0
        self.last_eval_step = None
        self.target_steps = None  # the step the current run() ends at, when known (for progress bars)
        # a callback sets it (rnnfast tune's pruning: "pruned") to end run() after the current step, with
        # that step's checkpoint written; run() returns it as "stopped"
        self.stop_reason = None
        self._resumed_at_best = False  # resumed from a checkpoint that was its run's best (see _complete_the_best)
        self.world = world if world is not None else World()
        self._agreed = {"time_budget": False, "interrupted": False}  # what the ranks voted in the last step
        if resume is not None:
            self.resume(resume)

    # -- the loop -------------------------------------------------------------------------------
    def run(self, steps: int | None = None, epochs: int | None = None, time_budget: float | None = None) -> dict:
        """Train until ``steps`` updates or ``epochs`` epochs in all (counted from the very start, so a
        resumed run stops where the original would have), or ``time_budget`` seconds of this call,
        whichever comes first; or until early stopping, a callback's ``stop_reason`` or Ctrl-C (which saves
        ``latest``).

        Returns ``{"step", "epoch", "stopped", "losses" (this call's, one per step), "best_val",
        "best_step", "val" (the last evaluation's metrics), "elapsed", "checkpoint" (latest's path)}``.
        A NaN/Inf loss or gradient raises NonFiniteLossError and writes no checkpoint.
        """
        if steps is None and epochs is None and time_budget is None:
            raise ValueError("say how long to train: give steps, epochs or time_budget")
        if epochs is not None and not hasattr(self.train_data, "epoch"):
            raise ValueError("epochs= needs training data that counts epochs (a StreamBatcher or ArrayBatcher)")
        self.target_steps = self._target_steps(steps, epochs)
        self.stop_reason = None
        with self._holding_out_dir():
            progress = _Progress(start=time.perf_counter(), start_step=self.step)
            self.model.train()
            for cb in self.callbacks:
                cb.on_train_begin(self)
            with _sigint_at_step_boundary() as sigint:
                try:
                    self._complete_the_best()
                    stopped = self._loop(steps, epochs, time_budget, sigint, progress)
                    if stopped == "interrupted":
                        self._save("latest")
                    elif self.last_eval_step != self.step:
                        progress.last_val = self._evaluate_and_save()
                except RnnfastError as exc:  # a NaN, a full disk: callbacks hear of it (a progress bar closes)
                    self._finish("non_finite" if isinstance(exc, NonFiniteLossError) else "error", progress)
                    raise
                except KeyboardInterrupt:
                    stopped = "interrupted"
                    # after a second Ctrl-C an update may be cut in half: keep the last checkpoint as it is
                    if not sigint["forced"]:
                        self._save("latest")
            return self._finish(stopped, progress)

    @contextlib.contextmanager
    def _holding_out_dir(self):
        """Hold out_dir for this run, without the debris of a killed one."""
        if self.out_dir is None or self.world.rank != 0:
            yield
            return
        with hold(self.out_dir):
            remove_temp_files(self.out_dir)
            yield

    def _loop(self, steps, epochs, time_budget, sigint, progress) -> str:
        """Steps, with evaluations every ``eval_every``, until a limit is reached; returns the reason."""
        while True:
            stopped = self._stop_reason(steps, epochs, time_budget, time.perf_counter() - progress.start)
            if stopped:
                return stopped
            logs = self._one_step(self._votes(sigint, time_budget, progress))
            progress.losses.append(logs["loss"])
            progress.tokens += logs["tokens"]
            elapsed = time.perf_counter() - progress.start
            logs.update(tokens_per_s=progress.tokens / elapsed if elapsed > 0 else 0.0, elapsed=elapsed,
                        eta=self._eta(elapsed / (self.step - progress.start_step), elapsed, time_budget))
            for cb in self.callbacks:
                cb.on_step_end(self, self.step, logs)
            if self.step % self.eval_every == 0:
                progress.last_val = self._evaluate_and_save()
                if self._patience_ran_out():
                    return "early_stopping"
            if self.stop_reason is not None:
                return self.stop_reason
            if sigint["requested"] if self.world.size == 1 else self._agreed["interrupted"]:
                return "interrupted"

    def _finish(self, stopped, progress) -> dict:
        result = {"step": self.step, "epoch": getattr(self.train_data, "epoch", None), "stopped": stopped,
                  "losses": progress.losses, "best_val": self.best_val, "best_step": self.best_step,
                  "val": progress.last_val, "elapsed": time.perf_counter() - progress.start,
                  "checkpoint": None if self.out_dir is None else str(self.out_dir / "latest.safetensors")}
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        return result

    def _votes(self, sigint, time_budget, progress) -> tuple[float, float]:
        """This rank's votes to stop after the next step: its time budget is used up, it got Ctrl-C."""
        if self.world.size == 1:
            return 0.0, 0.0
        used_up = time_budget is not None and time.perf_counter() - progress.start >= time_budget
        return float(used_up), float(sigint["requested"])

    def _one_step(self, votes=(0.0, 0.0)) -> dict:
        data, model, world = self.train_data, self.model, self.world
        if getattr(data, "batch_in_epoch", None) == 0 and hasattr(model, "reset_state"):
            model.reset_state()  # the streams start over: the state carried so far belongs elsewhere
        batch = next(data)
        if world.size > 1:
            batch, rows, share = world.share(batch, getattr(data, "batch_axis", 0), getattr(model, "row_weights", None))
            model.set_batch_rows(rows)
        model.zero_grad()
        out = model.train_step(batch)
        loss, step, tokens = out["loss"], self.step + 1, int(out.get("tokens", 0))
        if world.size > 1:  # the global batch's gradient, mean loss and tokens on every rank
            loss, tokens, *voted = world.sum_step(model.grads, share, [loss * share, tokens * (share > 0), *votes])
            tokens = int(tokens)
            self._agreed = {"time_budget": voted[0] > 0, "interrupted": voted[1] > 0}
        if not math.isfinite(loss):
            raise NonFiniteLossError(self._non_finite_message(f"the loss is {loss} at step {step}"))
        grads = model.grads
        # with no clipping an infinite max_norm just measures the norm, for the logs and the check
        grad_norm = clip_grad_norm(grads, self.clip if self.clip is not None else math.inf)
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(self._non_finite_message(f"the gradient norm is {grad_norm} at step {step}"))
        if self.schedule is not None:
            self.optimizer.lr = self.schedule.lr_at(self.step)
        self.optimizer.step(model.params, grads)
        self.step = step
        return {"step": step, "epoch": getattr(data, "epoch", None), "loss": loss, "lr": float(self.optimizer.lr),
                "grad_norm": grad_norm, "tokens": tokens}

    def _non_finite_message(self, what: str) -> str:
        kept = "no checkpoint was written" if self.out_dir is None else f"the last good checkpoint in {self.out_dir} is kept"
        return f"{what}; training stopped and {kept}; lower the learning rate or set gradient clipping (clip / --clip)"

    def _stop_reason(self, steps, epochs, time_budget, elapsed) -> str | None:
        if steps is not None and self.step >= steps:
            return "steps"
        if epochs is not None and self.train_data.epoch >= epochs:
            return "epochs"
        if time_budget is not None and (elapsed >= time_budget if self.world.size == 1 else self._agreed["time_budget"]):
            return "time_budget"
        return None

    def _target_steps(self, steps, epochs) -> int | None:
        ends = [] if steps is None else [steps]
        per_epoch = getattr(self.train_data, "batches_per_epoch", None)
        if epochs is not None and per_epoch is not None:
            done = self.train_data.epoch * per_epoch + self.train_data.batch_in_epoch
            ends.append(self.step + max(0, epochs * per_epoch - done))
        return min(ends) if ends else None

    def _eta(self, seconds_per_step, elapsed, time_budget) -> float | None:
        etas = [] if time_budget is None else [max(0.0, time_budget - elapsed)]
        if self.target_steps is not None:
            etas.append(max(0, self.target_steps - self.step) * seconds_per_step)
        return min(etas) if etas else None

    def _patience_ran_out(self) -> bool:
        patience = self.early_stopping_patience
        return patience is not None and self.val_data is not None and self.evals_since_best >= patience

    # -- evaluation and checkpoints -------------------------------------------------------------
    def _evaluate_and_save(self) -> dict | None:
        self.last_eval_step = self.step
        if self.val_data is None:
            self._save("latest")
            return None
        val = self.world.broadcast(self.model.evaluate(self.val_data) if self.world.rank == 0 else None)
        loss = val["loss"]
        if not math.isfinite(loss):
            raise NonFiniteLossError(self._non_finite_message(f"the validation loss is {loss} at step {self.step}"))
        improved = self.best_val is None or loss < self.best_val
        if improved:
            self.best_val, self.best_step, self.evals_since_best = loss, self.step, 0
        else:
            self.evals_since_best += 1
        logs = {f"val_{k}": v for k, v in val.items()}
        logs.update(best_val_loss=self.best_val, improved=improved)
        for cb in self.callbacks:  # before the checkpoint, so that the metrics it counts hold this evaluation
            cb.on_eval_end(self, self.step, logs)
        # latest first: a kill between the two writes leaves a latest that is itself the best it names,
        # and resuming from it writes that best again (_complete_the_best). Best first could leave a
        # best that no latest knows of, with the one latest names overwritten: that cannot be undone.
        self._save(*(("latest", "best") if improved else ("latest",)))
        return val

    def _save(self, *kinds: str) -> None:
        """Write the checkpoint once per kind ("latest", "best"), gathering its contents once."""
        if self.out_dir is None:
            return
        params = self.model.params
        for name, p in params.items():
            if not bool(get_array_module(p).isfinite(p).all()):
                raise NonFiniteLossError(self._non_finite_message(f"parameter {name} holds NaN/Inf at step {self.step}"))
        carried = self.world.gather_rows(self.model.carried_state(), axis=1)
        if self.world.rank != 0:
            return
        optim_state = self.optimizer.state_dict()
        tensors = join_tensors(self.model.state_dict(), optim_state.pop("state"), carried)
        meta = {
            **self.meta,
            "model": self.model.config(),
            "optimizer": optim_state,
            "schedule": _describe_schedule(self.schedule),
            "trainer": {"step": self.step, "best_val": self.best_val, "best_step": self.best_step,
                        "evals_since_best": self.evals_since_best, "last_eval_step": self.last_eval_step},
            "data": self.train_data.state_dict() if hasattr(self.train_data, "state_dict") else None,
            "rng": self.model.rng_state(),
            "callbacks": {type(cb).__name__: state for cb in self.callbacks if (state := cb.state_dict()) is not None},
            "rnnfast_version": __version__,
        }
        for kind in kinds:
            path = self.out_dir / f"{kind}.safetensors"
            save_checkpoint(path, tensors, meta)
            for cb in self.callbacks:
                cb.on_checkpoint(self, path, kind)

    def _complete_the_best(self) -> None:
        """Once, after resuming from a checkpoint that was its run's best: make ``best.safetensors``
        hold it, if a kill between the writes of latest and best left an older best there."""
        if not self._resumed_at_best or self.out_dir is None:
            return
        self._resumed_at_best = False
        path = self.out_dir / "best.safetensors"
        try:
            held = load_checkpoint(path)[1]["trainer"]["step"] if path.exists() and self.world.rank == 0 else None
        except (CheckpointError, KeyError, TypeError):
            held = None  # a damaged best: this run's state is the best, so write it
        if self.world.broadcast(held) != self.best_step:
            self._save("best")  # the state just resumed is the best checkpoint's, exactly

    def resume(self, path) -> dict:
        """Continue from a checkpoint this trainer's kind wrote: parameters, optimizer state (its
        hyper-parameters included), carried hidden state, data position, dropout streams, counters
        and the callbacks' state (``on_resume``). Everything is checked before anything is loaded:
        a model of another configuration, optimizer state or carried state of the wrong shape, or
        damaged metadata is a one-line CheckpointError. Entries of the checkpoint's meta that the
        trainer did not write itself (the vocabulary, ...) are kept for later checkpoints unless
        ``meta`` gives them. Returns the checkpoint's meta."""
        tensors, meta = load_checkpoint(path)
        saved = meta.get("model")
        if not isinstance(saved, dict) or not isinstance(meta.get("trainer"), dict):
            raise CheckpointError(f"{path} was not written by rnnfast's trainer; resume from a run's latest.safetensors")
        differ = config_mismatch(saved, self.model.config())
        if differ:
            shown = ", ".join(f"{k}={theirs!r} (this model: {ours!r})" for k, theirs, ours in differ[:3])
            raise CheckpointError(f"{path} is for another model: {shown}; build the model with the checkpoint's "
                                  "settings (rnnfast.models.from_config(meta['model']))")
        damaged = "the file is damaged or was edited, so use another checkpoint, such as the run's best"
        self._check_state_tensors(tensors, path, damaged)
        try:
            counters = meta["trainer"]
            step, best_val, best_step = int(counters["step"]), counters["best_val"], counters["best_step"]
            evals_since_best, last_eval_step = int(counters["evals_since_best"]), counters["last_eval_step"]
            load_weights(self.model, tensors, str(path))
            self.model.set_rng_state(meta["rng"])
            self.model.set_carried_state(self.world.rows_of(carried_tensors(tensors), axis=1))
            try:
                self.optimizer.load_state_dict({**meta["optimizer"], "state": optimizer_tensors(tensors)})
            except ValueError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
            self.optimizer.to(self.model.device)
            if meta.get("data") is not None and hasattr(self.train_data, "load_state_dict"):
                self.train_data.load_state_dict(meta["data"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{path} has damaged metadata ({type(exc).__name__}: {exc}); {damaged}") from None
        self.step, self.best_val, self.best_step = step, best_val, best_step
        self.evals_since_best, self.last_eval_step = evals_since_best, last_eval_step
        self._resumed_at_best = best_step is not None and best_step == step
        own_keys = {"model", "optimizer", "schedule", "trainer", "data", "rng", "callbacks", "rnnfast_version"}
        for key, value in meta.items():
            if key not in own_keys:
                self.meta.setdefault(key, value)
        states = meta.get("callbacks") if isinstance(meta.get("callbacks"), dict) else {}
        for cb in self.callbacks:
            cb.on_resume(self, Path(path), states.get(type(cb).__name__))
        return meta

    def _check_state_tensors(self, tensors: dict, path, damaged: str) -> None:
        """The optimizer's state must be shaped and typed like the parameters it belongs to, and the
        carried state like the (layers x directions, batch, hidden) state the model carries."""
        params = self.model.params
        for key, arr in optimizer_tensors(tensors).items():
            name = key.partition(".")[2]
            if name not in params:
                raise CheckpointError(f"{path} holds optimizer state {key} for a parameter the model lacks; {damaged}")
            p = params[name]
            if tuple(arr.shape) != tuple(p.shape) or np.dtype(arr.dtype) != np.dtype(p.dtype):
                raise CheckpointError(f"{path} holds optimizer state {key} of shape {tuple(arr.shape)} ({arr.dtype}), "
                                      f"but parameter {name} is {tuple(p.shape)} ({p.dtype}); {damaged}")
        carried = carried_tensors(tensors)
        if not carried:
            return
        config = self.model.config()
        names = ("h", "c") if config.get("cell") == "lstm" else ("h",)
        rows = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
        batch = getattr(self.train_data, "batch_size", None)
        for name in names:
            arr = carried.get(name)
            fits = (arr is not None and arr.ndim == 3 and arr.shape[0] == rows and arr.shape[2] == config.get("hidden_size")
                    and batch in (None, arr.shape[1]) and np.dtype(arr.dtype) == np.dtype(config.get("dtype")))
            if not fits:
                shape = "missing" if arr is None else f"{tuple(arr.shape)} ({arr.dtype})"
                raise CheckpointError(f"{path} holds a carried state {name} that is {shape}, not "
                                      f"({rows}, {batch or 'batch'}, {config.get('hidden_size')}); {damaged}")
        if set(carried) - set(names):
            raise CheckpointError(f"{path} holds carried state {sorted(set(carried) - set(names))} this model "
                                  f"does not carry; {damaged}")


def fit(model, train_data, val_data=None, *, optimizer=None, lr: float = 1e-3, steps: int | None = None,
        epochs: int | None = None, time_budget: float | None = None, **trainer_kwargs) -> dict:
    """Train in one call: an Adam(lr) optimizer unless one is given, a :class:`Trainer` with
    ``trainer_kwargs`` (clip, schedule, out_dir, callbacks, resume, ...), then :meth:`Trainer.run`'s result."""
    trainer = Trainer(model, optimizer if optimizer is not None else Adam(lr=lr), train_data, val_data,
                      **trainer_kwargs)
    return trainer.run(steps=steps, epochs=epochs, time_budget=time_budget)
