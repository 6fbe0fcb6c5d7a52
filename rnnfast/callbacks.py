"""Callbacks: what the training loop tells the world. :class:`Callback` holds the hooks
:class:`rnnfast.Trainer` calls; :class:`History` keeps every log in lists, :class:`JSONLLogger`
appends them to a JSON-lines file, :class:`ProgressBar` shows a tqdm bar, :class:`TensorBoardLogger`
writes TensorBoard event files.
"""
from __future__ import annotations

import contextlib
import errno
import json
import numbers
import os
import time
from pathlib import Path

from rnnfast.data import vocab_from_dict
from rnnfast.models.sampling import default_prime
from rnnfast.rundir import RunDirectoryError


class Callback:
    """Hooks the trainer calls; override the ones you need. ``logs`` are dicts of plain floats/ints.

    - ``on_step_end`` logs: step, epoch, loss, lr, grad_norm (before clipping), tokens, tokens_per_s,
      elapsed (s), eta (s, or None when the end is unknown).
    - ``on_eval_end`` logs: ``val_`` + each metric of ``model.evaluate`` (val_loss, ...), best_val_loss,
      improved.
    - ``on_checkpoint``: kind is "latest" or "best".
    - ``on_train_end`` gets :meth:`rnnfast.Trainer.run`'s result; also when a NaN/Inf stops the run, with
      ``stopped="non_finite"``, just before the NonFiniteLossError reaches the caller (``"error"`` for
      any other :class:`~rnnfast.errors.RnnfastError`, such as a full disk).
    - ``state_dict``: what this callback needs to continue a resumed run, stored in every checkpoint
      (JSON-able; None, the default, stores nothing), one per callback class; ``on_resume`` gets it
      back when a trainer resumes from checkpoint ``path`` (None if the checkpoint has none).
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

    def state_dict(self) -> dict | None:
        return None

    def on_resume(self, trainer, path: Path, state: dict | None) -> None:
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
    with the logs of that event (a resumed run appends to the same file).

    The file holds one history, whatever crashes:

    - Lines are whole or absent: each is one ``write`` (unbuffered, so a crash loses nothing
      written), a write that a full disk cuts short is undone, and a half line left by a crash is
      dropped when the file is next opened.
    - Each checkpoint records how far the file had got (:meth:`state_dict`). A run resumed from it
      (:meth:`on_resume`) cuts the file back to there, keeping only the lines of that checkpoint's
      own step that follow (its checkpoint and end records): the steps a crash lost after the
      checkpoint are logged once, by the run that does them again.
    - A write the disk refuses is a one-line :class:`~rnnfast.rundir.RunDirectoryError` that says
      to free space and resume from the last checkpoint, which it leaves intact.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._fd = None
        self._size = 0  # bytes of whole lines in the file
        self._cut = None  # (bytes, step) of the checkpoint a resumed run continues from
        self._last_checkpoint = None  # (path, step) of the latest checkpoint written or resumed from
        self._failed = False

    # -- the file -----------------------------------------------------------------------------------
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.fstat(fd).st_size
        keep = self._end_of_history(size)
        if keep < size:
            os.ftruncate(fd, keep)
        self._fd, self._size, self._cut = fd, keep, None

    def _end_of_history(self, size: int) -> int:
        """Where the file's history ends: after the resumed checkpoint's lines, else after its last whole line."""
        if self._cut is not None and self._cut[0] <= size:
            keep, step = self._cut
            with self.path.open("rb") as f:
                f.seek(keep)
                for line in f:
                    try:
                        record = json.loads(line) if line.endswith(b"\n") else None
                    except ValueError:
                        record = None
                    logged = record.get("step") if isinstance(record, dict) else None
                    if not isinstance(logged, int) or logged > step:
                        break
                    keep += len(line)
            return keep
        # no checkpoint to go by (or the file was replaced since): drop a half line at the end
        with self.path.open("rb") as f:
            pos = size
            while pos > 0:
                n = min(pos, 1 << 16)
                f.seek(pos - n)
                newline = f.read(n).rfind(b"\n")
                if newline >= 0:
                    return pos - n + newline + 1
                pos -= n
        return 0

    def _write(self, record: dict) -> None:
        if self._failed:
            return
        if self._fd is None:
            self._open()
        line = (json.dumps(record) + "\n").encode("utf-8")
        try:
            if os.write(self._fd, line) < len(line):  # only a full disk cuts a write to a file short
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            self._failed = True
            try:
                os.ftruncate(self._fd, self._size)  # the line is absent, not half there
            except OSError:
                pass  # the next open drops the half line
            self._close()
            if self._last_checkpoint is None:
                then = "then start the run again"
            else:
                then = f"then continue from step {self._last_checkpoint[1]} with --resume {self._last_checkpoint[0]}"
            raise RunDirectoryError(f"cannot write {self.path} ({exc.strerror}); the checkpoints are intact: "
                                    f"free some disk space (or choose another --out), {then}") from None
        self._size += len(line)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the hooks ----------------------------------------------------------------------------------
    def on_step_end(self, trainer, step, logs):
        self._write({"event": "step", **logs, "time": time.time()})

    def on_eval_end(self, trainer, step, logs):
        self._write({"event": "eval", "step": step, **logs, "time": time.time()})

    def on_checkpoint(self, trainer, path, kind):
        if kind == "latest":
            self._last_checkpoint = (path, trainer.step)
        self._write({"event": "checkpoint", "step": trainer.step, "kind": kind, "path": str(path), "time": time.time()})

    def on_train_end(self, trainer, result):
        summary = {k: v for k, v in result.items() if k != "losses"}
        self._write({"event": "end", **summary, "time": time.time()})
        self._close()
        self._failed = False

    def state_dict(self) -> dict:
        if self._fd is None:
            self._open()
        os.fsync(self._fd)  # the lines a checkpoint counts are on disk before the checkpoint is
        return {"path": str(self.path.resolve()), "bytes": self._size}

    def on_resume(self, trainer, path, state):
        self._last_checkpoint = (path, trainer.step)
        if state is None:
            return
        logged = Path(state["path"])
        # the file the checkpoint counted: the same one, or one of its name beside it (a moved run directory)
        if self.path.resolve() in (logged, (Path(path).parent / logged.name).resolve()):
            self._close()
            self._cut = (int(state["bytes"]), trainer.step)


class ProgressBar(Callback):
    """A tqdm bar: step (of the total when known), loss, validation loss, learning rate, tokens/s and ETA.
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
        postfix["lr"] = f"{logs['lr']:.3g}"
        postfix["tok/s"] = f"{logs['tokens_per_s']:,.0f}"
        if logs["eta"] is not None:
            postfix["eta"] = time.strftime("%H:%M:%S", time.gmtime(logs["eta"]))
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def on_eval_end(self, trainer, step, logs):
        self._val = logs["val_loss"]

    def on_train_end(self, trainer, result):
        self._bar.close()


TENSORBOARD_INSTALL_HINT = "pip install 'rnnfast[tensorboard]'"


def import_tensorboardx():
    """tensorboardX, imported when first asked for: importing it imports torch where torch is
    installed, seconds that a run without TensorBoard should not spend. Without it (or without the
    protobuf it needs) an ImportError that says how to install it."""
    try:
        import tensorboardX.event_file_writer
        import tensorboardX.proto.event_pb2
        import tensorboardX.proto.summary_pb2
        import tensorboardX.summary
    except ImportError as exc:
        raise ImportError(f"TensorBoard logging needs tensorboardX, which cannot be imported ({exc}); "
                          f"install it with: {TENSORBOARD_INSTALL_HINT}") from None
    return tensorboardX


class TensorBoardLogger(Callback):
    """Writes TensorBoard event files into ``logdir``; ``tensorboard --logdir DIR`` shows each
    directory of event files under DIR as a run. Needs tensorboardX (``pip install 'rnnfast[tensorboard]'``).

    - Each step: ``train/loss``, ``train/lr``, ``train/grad_norm`` and ``train/tokens_per_s``.
    - Each evaluation: ``val/`` + each metric of ``model.evaluate`` (``val/loss``, ``val/bpc``, ...),
      and for a character model (one with ``sample``) the text ``sample``: ``sample_length``
      characters at ``temperature``, from a new line, seeded by the step, decoded with ``vocab``
      (default: the trainer's ``meta["vocab"]``; with neither, or ``sample_length=0``, no sample). It is
      indented four spaces, so TensorBoard's Markdown shows it verbatim, line breaks included.
    - Events go to the file as they come, are flushed to disk at each evaluation and checkpoint, and
      the file is closed when the run ends (at Ctrl-C, a NaN or a full disk too).

    Each :meth:`rnnfast.Trainer.run` writes a new event file into ``logdir`` that opens with
    TensorBoard's purge marker for the run's first step (tensorboardX's ``purge_step``, what
    TensorBoard does for a restarted TensorFlow job): the steps from there on that earlier files hold,
    logged by a crashed run past the checkpoint this one resumes from, drop from the display, so each
    step shows once. The step to purge from is the trainer's, so nothing needs keeping in checkpoints.
    """

    def __init__(self, logdir, *, sample_length: int = 200, temperature: float = 0.8, vocab=None):
        self._tbx = import_tensorboardx()
        self.logdir = Path(logdir)
        self.sample_length, self.temperature, self.vocab = sample_length, temperature, vocab
        self._events = None
        self._sample_vocab = None

    def _open(self, step: int) -> None:
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
            # Not the SummaryWriter: it hands events to a thread, and its flush() does not wait for
            # them, so the evaluation logged just before a checkpoint could still be lost to a crash.
            # The EventsWriter under that thread writes each event at once (a step's: microseconds).
            # The step in the name keeps two runs that start in the same second apart, and in order.
            self._events = self._tbx.event_file_writer.EventsWriter(str(self.logdir / "events"), f".step{step:010d}")
        except OSError as exc:
            self._refused(exc)
        session_log = self._tbx.proto.event_pb2.SessionLog(status=self._tbx.proto.event_pb2.SessionLog.START)
        self._write(self._tbx.proto.event_pb2.Event(step=step + 1, session_log=session_log))

    def _write(self, event) -> None:
        if self._events is None:
            return
        event.wall_time = time.time()
        try:
            self._events.write_event(event)
        except OSError as exc:
            self._refused(exc)

    def _write_scalars(self, step: int, scalars: dict) -> None:
        Summary = self._tbx.proto.summary_pb2.Summary
        values = [Summary.Value(tag=tag, simple_value=float(value)) for tag, value in scalars.items()]
        self._write(self._tbx.proto.event_pb2.Event(step=step, summary=Summary(value=values)))

    def _flush(self) -> None:
        if self._events is None:
            return
        try:
            self._events.flush()
        except OSError as exc:
            self._refused(exc)

    def _refused(self, exc: OSError) -> None:
        """A write the disk refused: the events stop (the run's checkpoints are what matter), in one line."""
        events, self._events = self._events, None
        if events is not None:
            with contextlib.suppress(OSError):
                events.close()
        raise RunDirectoryError(f"cannot write TensorBoard events to {self.logdir} ({exc.strerror}); the checkpoints "
                                "are intact: free some disk space, then resume from the latest") from None

    def _sample(self, trainer, step: int) -> str | None:
        """The evaluation's text sample, Markdown-indented; None for a model that does not sample."""
        if self._sample_vocab is None or not self.sample_length or not hasattr(trainer.model, "sample"):
            return None
        text = trainer.model.sample(default_prime(self._sample_vocab), self.sample_length,
                                    temperature=self.temperature, seed=step, vocab=self._sample_vocab)
        return "\n".join("    " + line for line in text.split("\n"))

    # -- the hooks ----------------------------------------------------------------------------------
    def on_train_begin(self, trainer):
        vocab = self.vocab if self.vocab is not None else trainer.meta.get("vocab")
        self._sample_vocab = vocab_from_dict(vocab) if isinstance(vocab, dict) else vocab
        self._open(trainer.step)

    def on_step_end(self, trainer, step, logs):
        self._write_scalars(step, {"train/loss": logs["loss"], "train/lr": logs["lr"],
                                   "train/grad_norm": logs["grad_norm"], "train/tokens_per_s": logs["tokens_per_s"]})

    def on_eval_end(self, trainer, step, logs):
        self._write_scalars(step, {"val/" + key[len("val_"):]: value for key, value in logs.items()
                                   if key.startswith("val_") and isinstance(value, numbers.Real)
                                   and not isinstance(value, bool)})
        sample = self._sample(trainer, step)
        if sample is not None:
            self._write(self._tbx.proto.event_pb2.Event(step=step, summary=self._tbx.summary.text("sample", sample)))
        self._flush()

    def on_checkpoint(self, trainer, path, kind):
        self._flush()

    def on_train_end(self, trainer, result):
        events, self._events = self._events, None
        if events is not None:
            # the run is over and its checkpoints are written; raising here would leave the other
            # callbacks unclosed, so events a full disk refuses now are lost quietly
            with contextlib.suppress(OSError):
                events.close()
