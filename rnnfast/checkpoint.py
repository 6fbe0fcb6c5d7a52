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
from rnnfast.data import SPECIALS
from rnnfast.errors import CheckpointError, existing_file
from rnnfast.models import CharRNN, Seq2Seq, SeqClassifier, SeqRegressor
from rnnfast.rundir import temp_prefix

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
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
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


def _open(path):
    """``(f, meta, path)``: the checkpoint opened lazily with safetensors (``f``; nothing but its header
    is read until a tensor is asked for) and its rnnfast metadata, checked; else a CheckpointError."""
    path = existing_file(path, CheckpointError, "checkpoint", "the checkpoint file inside it (*.safetensors)")
    try:
        # safe_open maps the file and parses only the header (length-prefixed JSON of at most
        # 100 MB, checked to cover the file exactly), so a large foreign file costs no memory.
        f = safe_open(path, framework="np")
        header = f.metadata() or {}
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
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has damaged metadata; use another checkpoint")
    return f, meta, path


def _read_tensors(f, names, path) -> dict[str, np.ndarray]:
    """The tensors ``names`` of an opened checkpoint, read into memory."""
    try:
        return {name: f.get_tensor(name) for name in names}
    except MemoryError:
        raise CheckpointError(f"not enough memory to read the tensors of {path} ({path.stat().st_size:,} bytes); "
                              "free some memory or use a machine with more") from None
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read the tensors of {path} ({exc}); it is damaged, so use another "
                              "checkpoint, such as the run's best or an earlier one") from None


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, meta)``, NumPy arrays.

    A missing, truncated or corrupt file, a safetensors file that rnnfast did not write, or one
    from a newer format version is a CheckpointError that says what to do; these are all found from
    the header, before any tensor is read.
    """
    f, meta, path = _open(path)
    with f:
        return _read_tensors(f, f.keys(), path), meta


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

MODELS = {cls.__name__: cls for cls in (CharRNN, SeqRegressor, SeqClassifier, Seq2Seq)}


def from_config(config: dict):
    """The model that ``config`` (from a model's :meth:`config`) describes, freshly initialised."""
    config = dict(config)
    name = config.pop("class", None)
    if name not in MODELS:
        raise ValueError(f"unknown model class {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](**config)


# A config's sizes are checked against these before the file's shapes, so that nonsense gets a
# message naming it. They are far above any model rnnfast trains: a character vocabulary cannot
# outgrow Unicode (0x110000 code points), and one LSTM layer of hidden size 65,536 is already
# 2**35 weights (128 GiB in float32). The shapes check then holds what is built to what the file holds.
SIZE_LIMITS = {"vocab_size": 0x110000, "hidden_size": 2**16, "embedding_dim": 2**16, "input_size": 2**16,
               "output_size": 2**16, "num_classes": 2**20, "num_layers": 2**10, "src_vocab_size": 2**24,
               "tgt_vocab_size": 2**24}

# safetensors' dtype names -> NumPy's, for the messages
_DTYPE_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8",
                "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}


def _check_sizes(config: dict, path) -> None:
    """Each size in ``config`` a positive integer within :data:`SIZE_LIMITS`; else a one-line CheckpointError."""
    for key, limit in SIZE_LIMITS.items():
        value = config.get(key)
        if value is None:
            continue
        what = key.replace("_", " ").replace("num ", "number of ")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{path} claims a {what} of {value!r}, which is not a positive integer; "
                                  "the file is damaged or was edited, so use another checkpoint")
        if value > limit:
            raise CheckpointError(f"{path} claims a {what} of {value:,}, more than rnnfast builds ({limit:,}); "
                                  "the file is damaged or was edited, so use another checkpoint")


def _misfit(expected: dict, found: dict) -> str | None:
    """What keeps a model's parameters (``expected``) from being the tensors ``found``, both
    name -> (shape, dtype name), as a clause for a message; None when they fit."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing:
        return f"lacks {missing[:3]}"
    if unexpected:
        return f"has unexpected {unexpected[:3]}"
    for name, (shape, _) in expected.items():
        if tuple(found[name][0]) != tuple(shape):
            return f"has {name} of shape {tuple(found[name][0])}, not {tuple(shape)}"
    for name, (_, dtype) in expected.items():
        if found[name][1] != dtype:
            return (f"holds {name} as {found[name][1]}, not the model's {dtype}, so it was changed by another "
                    f"tool; rnnfast does not cast weights, so convert them (safetensors.numpy.load_file, "
                    f".astype('{dtype}'), save_file with the same metadata)")
    return None


def load_weights(model, tensors: dict, source: str = "the checkpoint") -> None:
    """Copy a checkpoint's parameters into ``model``. Names, shapes and dtypes must match exactly
    (the optimizer's and the carried state's tensors are skipped); otherwise a one-line CheckpointError.

    Weights of another dtype (float16 or float64 into a float32 model) are refused rather than cast:
    rnnfast writes every weight in its model's dtype, so another one means the file was changed by
    another tool, and a silent cast would hide that (and lose precision from float64).
    """
    own = model.params
    theirs = {k: v for k, v in tensors.items() if not k.startswith(NOT_MODEL_PREFIXES)}
    misfit = _misfit({k: (v.shape, np.dtype(v.dtype).name) for k, v in own.items()},
                     {k: (v.shape, np.dtype(v.dtype).name) for k, v in theirs.items()})
    if misfit:
        raise CheckpointError(f"{source} does not fit this {type(model).__name__}: it {misfit}"
                              + ("" if "another tool" in misfit else
                                 "; it is from another model, so build the model from the checkpoint (load_model)"))
    model.load_state_dict({k: theirs[k] for k in own})


def _fitting_model(f, meta: dict, path) -> tuple[dict, list]:
    """The model config in an open checkpoint's ``meta`` and the names of its model tensors, once the
    config's sizes are within :data:`SIZE_LIMITS` and the names, shapes and dtypes it implies are
    those in the file's header; nothing is allocated. Otherwise a one-line CheckpointError."""
    config = meta.get("model")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds no model description; use a checkpoint written by rnnfast's trainer")
    cls = MODELS.get(config.get("class"))
    if cls is None:
        raise CheckpointError(f"{path} describes a model of unknown class {config.get('class')!r} (this rnnfast "
                              f"builds {', '.join(MODELS)}); it is from another version of rnnfast, so use that "
                              "version or retrain")
    _check_sizes(config, path)
    sizes = {k: v for k, v in config.items() if k != "class"}
    try:
        dtype = np.dtype(config.get("dtype", "float32")).name
        expected = {name: (shape, dtype) for name, shape in cls.param_shapes(sizes).items()}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} describes a model this rnnfast cannot build ({exc}); "
                              "it is from another version of rnnfast, so use that version or retrain") from None
    names = [k for k in f.keys() if not k.startswith(NOT_MODEL_PREFIXES)]
    found = {}
    for name in names:
        piece = f.get_slice(name)
        found[name] = (tuple(piece.get_shape()), _DTYPE_NAMES.get(piece.get_dtype(), piece.get_dtype()))
    misfit = _misfit(expected, found)
    if misfit:
        raise CheckpointError(f"{path} does not fit this {cls.__name__}, the one its metadata describes: it {misfit}"
                              + ("" if "another tool" in misfit else
                                 "; the file is damaged or was edited, so use another checkpoint"))
    return config, names


def check_model_fits(path) -> dict:
    """The model config of the checkpoint at ``path``, checked as :func:`load_model` checks it before
    building anything (sizes, then every weight's name, shape and dtype against the header); for
    callers that build the model another way, such as a resumed run."""
    f, meta, path = _open(path)
    with f:
        return _fitting_model(f, meta, path)[0]


def load_model(path):
    """A model from a checkpoint written by :class:`rnnfast.Trainer`: ``(model, meta)``.

    The model is rebuilt from ``meta["model"]``, gets the saved parameters and dropout streams, and
    is in eval mode on the CPU (``model.to("gpu")`` moves it). ``meta`` holds the rest (the
    vocabulary under ``"vocab"`` when the trainer was given one). A checkpoint of another kind or
    version is a one-line CheckpointError.

    Nothing is allocated before the file is known to fit: the config's sizes are checked against
    :data:`SIZE_LIMITS`, then the names, shapes and dtypes the config implies against those in the
    file's header; only then is the model built and its tensors read (the optimizer's are not).
    """
    f, meta, path = _open(path)
    with f:
        config, names = _fitting_model(f, meta, path)
        try:
            model = from_config(config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path} describes a model this rnnfast cannot build ({exc}); "
                                  "it is from another version of rnnfast, so use that version or retrain") from None
        load_weights(model, _read_tensors(f, names, path), str(path))
    if "rng" in meta:
        model.set_rng_state(meta["rng"])
    return model.eval(), meta


# -- a new run from a checkpoint's weights ------------------------------------------------------

# The parameters of each model whose first axis is the vocabulary: their rows follow the characters
# (or words) when a new run's data has another vocabulary (a classifier's head is over labels).
VOCAB_ROWS = {"CharRNN": ("embed.weight", "head.weight", "head.bias"), "SeqClassifier": ("embed.weight",)}


def vocab_tokens(vocab: dict) -> list[str]:
    """Each id's token, in id order, of a vocabulary's dict (``meta["vocab"]``): a character
    vocabulary's characters, or a word vocabulary's (kind "tokens") four specials and then its
    words, so that rows follow tokens across vocabularies of one kind."""
    if vocab.get("kind") == "tokens":
        return [*SPECIALS, *vocab.get("tokens", ())]
    return list(vocab.get("chars", ()))


def read_meta(path) -> dict:
    """The rnnfast metadata of the checkpoint at ``path``, from its header alone (no tensor is read)."""
    f, meta, _ = _open(path)
    with f:
        return meta


def init_weights_from(model, path, chars=None) -> None:
    """Start ``model``, freshly built with the shape of the checkpoint at ``path``, from its weights.

    With ``chars`` (the new data's vocabulary, in id order: :func:`vocab_tokens`) the rows of
    :data:`VOCAB_ROWS` follow the characters, or a word vocabulary's words: one the checkpoint knows
    gets its rows, a new one keeps the row ``model`` was initialised with, and one the new data
    lacks is dropped; the caller keeps the two vocabularies of one kind. Every other weight is
    copied as it is. The checkpoint is checked as :func:`load_model` checks it; a model of another
    shape is a one-line CheckpointError.

        >>> import tempfile, os
        >>> from rnnfast.models import CharRNN
        >>> path = os.path.join(tempfile.mkdtemp(), "best.safetensors")
        >>> old = CharRNN(3, hidden_size=4, num_layers=1, seed=0)
        >>> save_checkpoint(path, old.state_dict(), {"model": old.config(), "vocab": {"chars": ["a", "b", "c"]}})
        >>> new = CharRNN(3, hidden_size=4, num_layers=1, seed=1)
        >>> init_weights_from(new, path, chars=["b", "c", "d"])  # "a" dropped, "d" new
        >>> bool((new.params["embed.weight"][0] == old.params["embed.weight"][1]).all())
        True
    """
    source, meta = load_model(path)
    theirs, own = source.state_dict(), model.state_dict()
    remapped = VOCAB_ROWS.get(type(model).__name__, ()) if chars is not None else ()
    if remapped:
        index = {c: i for i, c in enumerate(vocab_tokens(meta.get("vocab", {})))}
        kept = [(new, index[c]) for new, c in enumerate(chars) if c in index]
        new_ids, old_ids = (np.array(ids, dtype=np.intp) for ids in zip(*kept)) if kept else ([], [])
    # the vocabulary axis may differ; everything else must be the checkpoint's
    misfit = _misfit({k: (v.shape[1:] if k in remapped else v.shape, v.dtype.name) for k, v in own.items()},
                     {k: (v.shape[1:] if k in remapped else v.shape, v.dtype.name) for k, v in theirs.items()})
    if misfit:
        raise CheckpointError(f"{path} does not fit this {type(model).__name__}: it {misfit}; "
                              "build the new model with the checkpoint's shape")
    for name in own:
        if name in remapped:
            own[name][new_ids] = theirs[name][old_ids]
        else:
            own[name] = theirs[name]
    model.load_state_dict(own)
