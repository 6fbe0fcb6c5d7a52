"""Errors a user can cause. The CLI prints these as one line and exits non-zero."""


class RnnfastError(Exception):
    """Base class of rnnfast's user-facing errors: the message says what went wrong and what to do."""


class DataError(RnnfastError, ValueError):
    """A corpus, CSV or other input file that cannot be used (missing, empty, binary, malformed)."""


class CheckpointError(RnnfastError, ValueError):
    """A checkpoint that is truncated, foreign, from another model or another format version."""


class NonFiniteLossError(RnnfastError, FloatingPointError):
    """Training produced a NaN or Inf loss; the last good checkpoint is kept."""
