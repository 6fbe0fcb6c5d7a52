"""Errors a user can cause. The CLI prints these as one line and exits non-zero."""
from pathlib import Path


class RnnfastError(Exception):
    """Base class of rnnfast's user-facing errors: the message says what went wrong and what to do."""


class DataError(RnnfastError, ValueError):
    """A corpus, CSV or other input file that cannot be used (missing, empty, binary, malformed)."""


class CheckpointError(RnnfastError, ValueError):
    """A checkpoint that is truncated, foreign, from another model or another format version."""


class ExportError(RnnfastError, ValueError):
    """A model that cannot be exported, a destination that cannot be written, or a missing exporter."""


class OutputError(RnnfastError, OSError):
    """A file a command was asked to write (``predict --out``, ``--plot``) that cannot be written there."""


class NonFiniteLossError(RnnfastError, FloatingPointError):
    """Training produced a NaN or Inf loss; the last good checkpoint is kept."""


def existing_file(path, error: type, what: str = "file", inside: str = "a file inside it") -> Path:
    """path as a Path, checked to be a file that exists; else ``error`` (an RnnfastError class) with
    one line that says what to pass (``what``: the file's kind; ``inside``: what to pass when it is a
    directory)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} not found: {path}; check the path")
    if path.is_dir():
        raise error(f"{path} is a directory; pass {inside}")
    return path
