"""Callbacks: what the training loop tells the world. :class:`Callback` holds the hooks
:class:`rnnfast.Trainer` calls; :class:`History` keeps every log in lists, :class:`JSONLLogger`
appends them to a JSON-lines file, :class:`ProgressBar` shows a tqdm bar.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


class Callback:
    """Hooks the trainer calls; override the ones you need. ``logs`` are dicts of plain floats/ints.

    - ``on_step_end`` logs: step, epoch, loss, lr, grad_norm (before clipping), tokens, tokens_per_s,
      elapsed (s), eta (s, or None when the end is unknown).
    - ``on_eval_end`` logs: ``val_`` + each metric of ``model.evaluate`` (val_loss, ...), best_val_loss,
      improved.
    - ``on_checkpoint``: kind is "latest" or "best".
    - ``on_train_end`` gets :meth:`rnnfast.Trainer.run`'s result; also when a NaN/Inf stops the run, with
      ``stopped="non_finite"``, just before the NonFiniteLossError reaches the caller.
    """

    def on_train_begin(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, step: int, logs: dict) -> None:
        pass

    def on_eval_end(self, trainer, step: int, logs: dict) -> None:
        pass

    def on_checkpoint(self, trainer, path: Path, kind: str) -> None:
        pass

    def on_train_end(self, trainer, result: dict) -> None:
        pass


class History(Callback):
    """Keeps every step's and evaluation's logs in lists (for tests, notebooks and plots)."""

    def __init__(self):
        self.steps, self.losses, self.lrs, self.grad_norms = [], [], [], []
        self.val_steps, self.val_losses, self.val_logs = [], [], []
        self.checkpoints: list[tuple[str, str]] = []
        self.result = None

    def on_step_end(self, trainer, step, logs):
        self.steps.append(step)
        self.losses.append(logs["loss"])
        self.lrs.append(logs["lr"])
        self.grad_norms.append(logs["grad_norm"])

    def on_eval_end(self, trainer, step, logs):
        self.val_steps.append(step)
        self.val_losses.append(logs["val_loss"])
        self.val_logs.append(dict(logs))

    def on_checkpoint(self, trainer, path, kind):
        self.checkpoints.append((kind, str(path)))

    def on_train_end(self, trainer, result):
        self.result = result


class JSONLLogger(Callback):
    """Appends one JSON object per line to ``path``: ``{"event": "step" | "eval" | "checkpoint" | "end", ...}``
    with the logs of that event (a resumed run appends to the same file)."""

    def __init__(self, path):
        self.path = Path(path)
        self._file = None

    def _write(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a crash or Ctrl-C must not lose the lines already logged

    def on_step_end(self, trainer, step, logs):
        self._write({"event": "step", **logs, "time": time.time()})

    def on_eval_end(self, trainer, step, logs):
        self._write({"event": "eval", "step": step, **logs, "time": time.time()})

    def on_checkpoint(self, trainer, path, kind):
        self._write({"event": "checkpoint", "step": trainer.step, "kind": kind, "path": str(path), "time": time.time()})

    def on_train_end(self, trainer, result):
        summary = {k: v for k, v in result.items() if k != "losses"}
        self._write({"event": "end", **summary, "time": time.time()})
        self._file.close()
        self._file = None


class ProgressBar(Callback):
    """A tqdm bar: step (of the total when known), loss, validation loss, tokens/s and ETA.
    ``kwargs`` go to ``tqdm`` (e.g. ``file=``, ``disable=``)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self._bar = None
        self._val = None

    def on_train_begin(self, trainer):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=trainer.target_steps, initial=trainer.step, unit="step", dynamic_ncols=True,
                         **self.kwargs)
        self._val = trainer.best_val

    def on_step_end(self, trainer, step, logs):
        postfix = {"loss": f"{logs['loss']:.4f}"}
        if self._val is not None:
            postfix["val"] = f"{self._val:.4f}"
        postfix["tok/s"] = f"{logs['tokens_per_s']:,.0f}"
        if logs["eta"] is not None:
            postfix["eta"] = time.strftime("%H:%M:%S", time.gmtime(logs["eta"]))
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def on_eval_end(self, trainer, step, logs):
        self._val = logs["val_loss"]

    def on_train_end(self, trainer, result):
        self._bar.close()
