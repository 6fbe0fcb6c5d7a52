"""Checkpoints: one safetensors file holding a run's tensors, with everything else as JSON metadata;
and the way back from a checkpoint to a model (:func:`load_model`, :func:`load_weights`, :func:`from_config`).

This module owns the file's layout: every tensor-name prefix is one of its constants, and the
rest of rnnfast adds and strips them only through :func:`join_tensors`, :func:`model_tensors`,
:func:`optimizer_tensors` and :func:`carried_tensors`.

Layout of the file (a plain safetensors file, readable by any safetensors reader):

- Model parameters under their own names, which are PyTorch's (``embed.weight``,
  ``rnn.weight_ih_l0``, ``rnn.bias_hh_l1_reverse``, ``head.weight``), so the recurrent part loads
  straight into ``torch.nn.LSTM`` once its prefix is stripped (:func:`model_tensors`).
- Optimizer state under ``optim/`` followed by the optimizer's own state names
  (``optim/exp_avg.rnn.weight_ih_l0``); :func:`join_tensors` and :func:`optimizer_tensors` add and
  strip the prefix.
- The hidden state a trainer carries between truncated-BPTT batches under ``carry/`` (``carry/h``,
  ``carry/c``), so that a resumed run continues exactly; :func:`carried_tensors` strips the prefix.
- Everything that is not a tensor (model config, vocabulary, optimizer hyper-parameters, schedule
  step, RNG seed and counters, data position, scaler) in ``meta``, a JSON-able dict stored in the
  safetensors header as ``__metadata__["rnnfast"]`` (a JSON string), beside
  ``"format": "rnnfast-checkpoint"`` and ``"version": "1"``. JSON turns tuples into lists.

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "latest.safetensors")
    >>> save_checkpoint(path, {"rnn.weight_hh_l0": np.eye(2, dtype=np.float32)}, {"step": 10})
    >>> tensors, meta = load_checkpoint(path)
    >>> meta["step"], model_tensors(tensors, "rnn")["weight_hh_l0"].shape
    (10, (2, 2))

Writes are atomic: the file is written beside its destination under a temporary name, synced to
disk and renamed over it, so a crash or Ctrl-C mid-save leaves the previous checkpoint as it was.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as _safetensors_bytes

from rnnfast.backend import to_numpy
from rnnfast.errors import CheckpointError, existing_file
from rnnfast.models import CharRNN, SeqClassifier, SeqRegressor

FORMAT = "rnnfast-checkpoint"
VERSION = 1
OPTIM_PREFIX = "optim/"  # the optimizer's state
CARRY_PREFIX = "carry/"  # the hidden state a trainer carries between truncated-BPTT batches
NOT_MODEL_PREFIXES = (OPTIM_PREFIX, CARRY_PREFIX)  # every other tensor is a model parameter


def _json_default(value):
    """NumPy scalars and small arrays in ``meta`` become plain JSON numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"checkpoint meta holds a value of type {type(value).__name__}, which JSON cannot store; "
                    "put arrays in the tensors and keep meta to numbers, strings, lists and dicts")


def save_checkpoint(path, tensors: dict, meta: dict) -> None:
    """Write ``tensors`` (name -> NumPy or CuPy array) and ``meta`` (JSON-able dict) to one file, atomically.

    The parent directory is created if needed. On any failure, Ctrl-C included, the temporary file
    is removed and whatever was at ``path`` before is left untouched.
    """
    path = Path(path)
    header = {"format": FORMAT, "version": str(VERSION), "rnnfast": json.dumps(meta, default=_json_default)}
    # asarray, not ascontiguousarray, which turns 0-d arrays (scalars such as a step count) into (1,)
    arrays = {name: np.asarray(to_numpy(a), order="C") for name, a in tensors.items()}
    data = _safetensors_bytes(arrays, metadata=header)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CheckpointError(f"cannot write a checkpoint in {path.parent} ({exc.strerror}); "
                              "choose another --out") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes must be on disk before the rename makes them the checkpoint
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary, shareable file
        os.replace(tmp, path)
    except BaseException as exc:
        # BaseException: Ctrl-C mid-save must not leave a half-written temporary file behind.
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write checkpoint {path} ({exc.strerror}); "
                                  "free some disk space or choose another --out") from None
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open directories and needs no sync."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some file systems refuse to sync a directory; the checkpoint is in place all the same


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, meta)``, NumPy arrays.

    A missing, truncated or corrupt file, a safetensors file that rnnfast did not write, or one
    from a newer format version is a CheckpointError that says what to do.
    """
    path = existing_file(path, CheckpointError, "checkpoint", "the checkpoint file inside it (*.safetensors)")
    try:
        with safe_open(path, framework="np") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint, it is truncated or corrupt ({exc}); "
                              "use another checkpoint, such as the run's best or an earlier one") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file that rnnfast did not write; "
                              "to use foreign weights, load them with safetensors and rnnfast.interop")
    version = header.get("version", "")
    if not version.isdigit() or int(version) > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}, and this rnnfast reads "
                              f"version {VERSION}; upgrade rnnfast (pip install -U rnnfast)")
    try:
        meta = json.loads(header.get("rnnfast", ""))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has damaged metadata; use another checkpoint") from None
    return tensors, meta


def _with_dot(prefix: str) -> str:
    """``"rnn"`` and ``"rnn."`` both name the ``rnn`` child; ``"optim/"`` keeps its slash."""
    return prefix if not prefix or prefix.endswith((".", "/")) else prefix + "."


def model_tensors(tensors: dict, prefix: str = "") -> dict:
    """The model's tensors (all but the optimizer's), those under ``prefix`` with it stripped.

    ``model_tensors(tensors, "rnn")`` gives ``{"weight_ih_l0": ..., ...}``, which
    ``torch.nn.LSTM.load_state_dict`` accepts (after ``torch.from_numpy``).
    """
    prefix = _with_dot(prefix)
    out = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and not k.startswith(NOT_MODEL_PREFIXES)}
    if not out:
        names = ", ".join(sorted(tensors)[:8]) + (", ..." if len(tensors) > 8 else "")
        raise CheckpointError(f"the checkpoint has no model tensors under {prefix!r} (it holds {names}); "
                              "is it from another model?")
    return out


def optimizer_tensors(tensors: dict) -> dict:
    """The optimizer's tensors with the ``optim/`` prefix stripped (empty when none were saved)."""
    return {k[len(OPTIM_PREFIX):]: v for k, v in tensors.items() if k.startswith(OPTIM_PREFIX)}


def carried_tensors(tensors: dict) -> dict:
    """The carried hidden state's tensors with the ``carry/`` prefix stripped (empty when none were saved)."""
    return {k[len(CARRY_PREFIX):]: v for k, v in tensors.items() if k.startswith(CARRY_PREFIX)}


def join_tensors(model_state: dict, optimizer_state: dict | None = None, carried_state: dict | None = None) -> dict:
    """One tensor dict for :func:`save_checkpoint`: the model's as they are, the optimizer's under
    ``optim/``, the carried hidden state's under ``carry/``."""
    out = dict(model_state)
    out.update({OPTIM_PREFIX + k: v for k, v in (optimizer_state or {}).items()})
    out.update({CARRY_PREFIX + k: v for k, v in (carried_state or {}).items()})
    return out


# -- from a checkpoint back to a model ----------------------------------------------------------

MODELS = {cls.__name__: cls for cls in (CharRNN, SeqRegressor, SeqClassifier)}


def from_config(config: dict):
    """The model that ``config`` (from a model's :meth:`config`) describes, freshly initialised."""
    config = dict(config)
    name = config.pop("class", None)
    if name not in MODELS:
        raise ValueError(f"unknown model class {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](**config)


def load_weights(model, tensors: dict, source: str = "the checkpoint") -> None:
    """Copy a checkpoint's parameters into ``model``. Names and shapes must match exactly (the
    optimizer's and the carried state's tensors are skipped); otherwise a one-line CheckpointError."""
    own = model.params
    theirs = {k: v for k, v in tensors.items() if not k.startswith(NOT_MODEL_PREFIXES)}
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    wrong = [k for k in own if k in theirs and tuple(theirs[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        what = (f"lacks {missing[:3]}" if missing else f"has unexpected {unexpected[:3]}" if unexpected else
                f"has {wrong[0]} of shape {tuple(theirs[wrong[0]].shape)}, not {tuple(own[wrong[0]].shape)}")
        raise CheckpointError(f"{source} does not fit this {type(model).__name__}: it {what}; "
                              "it is from another model, so build the model from the checkpoint (load_model)")
    model.load_state_dict({k: theirs[k] for k in own})


def load_model(path):
    """A model from a checkpoint written by :class:`rnnfast.Trainer`: ``(model, meta)``.

    The model is rebuilt from ``meta["model"]``, gets the saved parameters and dropout streams, and
    is in eval mode on the CPU (``model.to("gpu")`` moves it). ``meta`` holds the rest (the
    vocabulary under ``"vocab"`` when the trainer was given one). A checkpoint of another kind or
    version is a one-line CheckpointError.
    """
    tensors, meta = load_checkpoint(path)
    config = meta.get("model")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds no model description; use a checkpoint written by rnnfast's trainer")
    try:
        model = from_config(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} describes a model this rnnfast cannot build ({exc}); "
                              "it is from another version of rnnfast, so use that version or retrain") from None
    load_weights(model, tensors, str(path))
    if "rng" in meta:
        model.set_rng_state(meta["rng"])
    return model.eval(), meta
