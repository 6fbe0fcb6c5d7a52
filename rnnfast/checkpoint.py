"""Checkpoints: one safetensors file holding a run's tensors, with everything else as JSON metadata.

Layout of the file (a plain safetensors file, readable by any safetensors reader):

- Model parameters under their own names, which are PyTorch's (``embed.weight``,
  ``rnn.weight_ih_l0``, ``rnn.bias_hh_l1_reverse``, ``head.weight``), so the recurrent part loads
  straight into ``torch.nn.LSTM`` once its prefix is stripped (:func:`model_tensors`).
- Optimizer state under ``optim/`` followed by the optimizer's own state names
  (``optim/exp_avg.rnn.weight_ih_l0``); :func:`join_tensors` and :func:`optimizer_tensors` add and
  strip the prefix.
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
from rnnfast.errors import CheckpointError

FORMAT = "rnnfast-checkpoint"
VERSION = 1
OPTIM_PREFIX = "optim/"
CARRY_PREFIX = "carry/"  # the hidden state a trainer carries between truncated-BPTT batches


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
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it (*.safetensors)")
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
    out = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and not k.startswith((OPTIM_PREFIX, CARRY_PREFIX))}
    if not out:
        names = ", ".join(sorted(tensors)[:8]) + (", ..." if len(tensors) > 8 else "")
        raise CheckpointError(f"the checkpoint has no model tensors under {prefix!r} (it holds {names}); "
                              "is it from another model?")
    return out


def optimizer_tensors(tensors: dict) -> dict:
    """The optimizer's tensors with the ``optim/`` prefix stripped (empty when none were saved)."""
    return {k[len(OPTIM_PREFIX):]: v for k, v in tensors.items() if k.startswith(OPTIM_PREFIX)}


def join_tensors(model_state: dict, optimizer_state: dict | None = None) -> dict:
    """One tensor dict for :func:`save_checkpoint`: the model's as they are, the optimizer's under ``optim/``."""
    out = dict(model_state)
    out.update({OPTIM_PREFIX + k: v for k, v in (optimizer_state or {}).items()})
    return out
