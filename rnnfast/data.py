"""Data: text corpora for character models, CSV time series and labelled text, ready for a model.

Text (character language models)::

    >>> vocab = Vocab.from_text("hello world")
    >>> ids = vocab.encode("hello")                  # (N,) int32
    >>> vocab.decode(ids)
    'hello'
    >>> train, val, _ = split_ids(vocab.encode("hello world" * 20), val_frac=0.1)
    >>> batcher = StreamBatcher(train, batch_size=2, seq_len=8)
    >>> x, y = batcher.next_batch()                  # (T, B) int32 each; y is x one step ahead
    >>> x.shape, bool((x[1:] == y[:-1]).all())
    ((8, 2), True)

Time series (forecasting)::

    >>> series = np.sin(np.linspace(0, 20, 200))
    >>> splits = forecast_windows(series, window=16, horizon=4, val_frac=0.2, scaler=StandardScaler())
    >>> X, Y = splits["train"]                       # X (N, window), Y (N, horizon)
    >>> X.shape[1], Y.shape[1]
    (16, 4)

Every problem a user can cause with a file (missing, a directory, empty, binary, wrong encoding, a
missing column, a non-numeric value, too short for the options chosen) is a :class:`DataError`
whose one-line message says what to do.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from rnnfast.backend import to_numpy
from rnnfast.errors import CheckpointError, DataError

# -- text files -------------------------------------------------------------------------------

_ENCODING_HINT = "if it is text in another encoding, name it (--encoding latin-1, or encoding='latin-1')"


def read_text(path, encoding: str = "utf-8") -> str:
    """The whole text of a file, checked: a missing, empty, binary or undecodable file is a DataError."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"file not found: {p}; check the path")
    if p.is_dir():
        raise DataError(f"{p} is a directory; pass a file inside it")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {p} ({exc.strerror}); check its permissions") from None
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}; "
                        "use a Python codec name such as utf-8, latin-1 or utf-16") from None
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1]
        raise DataError(
            f"{p} is not valid {encoding} text (byte 0x{bad.hex()} at offset {exc.start}); "
            f"pass a text file, or {_ENCODING_HINT}"
        ) from None
    # Checked after decoding, so UTF-16 text (whose bytes are full of NULs) is not called binary.
    nul = text.find("\x00")
    if nul >= 0:
        raise DataError(f"{p} looks like a binary file (NUL character at position {nul}); "
                        f"pass a text file, or {_ENCODING_HINT}")
    # Editors on Windows write a byte-order mark; it is not part of the text.
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DataError(f"{p} is empty" + (" (only whitespace)" if text else "") + "; pass a file with text in it")
    return text


def require_length(n_tokens: int, needed: int, what: str,
                   hint: str = "use more data, or a smaller --seq-len / --batch-size", unit: str = "tokens") -> None:
    """Raise DataError unless ``n_tokens >= needed``; ``what`` names the data ("the validation split")."""
    if n_tokens < needed:
        raise DataError(f"{what} is too short: {n_tokens} {unit}, but at least {needed} are needed; {hint}")


def _codepoints(text: str) -> np.ndarray:
    """(N,) uint32 code points of ``text``, one per character, without a Python loop."""
    # surrogatepass keeps lone surrogates (from surrogateescape-decoded text) as their own characters.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class Vocab:
    """A character vocabulary: id ``k`` is the k-th character in code-point order. Any script works.

        >>> v = Vocab.from_text("床前明月光")
        >>> len(v), v.decode(v.encode("明月"))
        (5, '明月')
    """

    def __init__(self, chars):
        """``chars``: the distinct characters, in id order (as :meth:`from_text` sorts them)."""
        self.chars = tuple(chars)
        if not self.chars:
            raise DataError("the vocabulary is empty; build it from a non-empty text")
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ValueError("a vocabulary needs distinct single characters")
        codes = _codepoints("".join(self.chars))
        self._order = np.argsort(codes, kind="stable")
        self._sorted_codes = codes[self._order]
        self._char_array = np.array(self.chars, dtype="<U1")

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        """The sorted distinct characters of ``text``."""
        if not text:
            raise DataError("cannot build a vocabulary from empty text; pass a corpus with text in it")
        return cls(chr(c) for c in np.unique(_codepoints(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocab({len(self)} characters)"

    def encode(self, text: str) -> np.ndarray:
        """``text`` as ids, (N,) int32; characters outside the vocabulary are a DataError naming them."""
        codes = _codepoints(text)
        pos = np.minimum(np.searchsorted(self._sorted_codes, codes), len(self) - 1)
        unknown = self._sorted_codes[pos] != codes
        if unknown.any():
            where = np.flatnonzero(unknown)
            names = list(dict.fromkeys(text[i] for i in where))
            shown = ", ".join(repr(c) for c in names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            raise DataError(
                f"{len(names)} character(s) not in the model's vocabulary: {shown} (first at position {where[0]}); "
                f"use only characters the model was trained on ({len(self)} in its vocabulary)"
            )
        return self._order[pos].astype(np.int32)

    def decode(self, ids) -> str:
        """``ids``: (N,) integers (NumPy, CuPy or a list) -> the text they stand for."""
        ids = np.asarray(to_numpy(ids)).reshape(-1)
        if ids.size == 0:  # [] arrives as float64, which cannot index
            return ""
        if ids.min() < 0 or ids.max() >= len(self):
            raise ValueError(f"ids must lie in [0, {len(self)}), got values in [{ids.min()}, {ids.max()}]")
        return "".join(self._char_array[ids].tolist())

    def to_dict(self) -> dict:
        """A JSON-able description, stored in checkpoints' metadata."""
        return {"kind": "char", "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        """Inverse of :meth:`to_dict`; a malformed entry (a damaged checkpoint) is a CheckpointError."""
        try:
            if d["kind"] != "char":
                raise ValueError(f"unknown vocabulary kind {d['kind']!r}")
            return cls(d["chars"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's vocabulary is malformed ({exc}); "
                                  "use a checkpoint written by rnnfast") from None


# -- splits -----------------------------------------------------------------------------------

def _split_points(n: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """Where validation and test begin in ``n`` items: train ``[0, a)``, val ``[a, b)``, test ``[b, n)``."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac and test_frac must be >= 0 with a sum below 1, got {val_frac} and {test_frac}")
    n_test = int(round(n * test_frac))
    n_val = int(round(n * val_frac))
    return n - n_val - n_test, n - n_test


def chronological_split(data, val_frac: float = 0.1, test_frac: float = 0.0):
    """Cut data in time order into (train, val, test): the past trains, the future validates and tests.

    ``data`` is a length ``n`` (gives three ``slice`` objects), an array (cut along axis 0, views), or
    a tuple of arrays of equal length such as ``(X, Y)`` (gives three tuples). Nothing is shuffled,
    so no future value leaks into training. Fit scalers on the train part only; for forecasting,
    :func:`forecast_windows` does that and keeps windows from straddling the cuts.
    """
    if isinstance(data, (int, np.integer)):
        a, b = _split_points(int(data), val_frac, test_frac)
        return slice(0, a), slice(a, b), slice(b, int(data))
    if isinstance(data, (tuple, list)):
        lengths = {len(x) for x in data}
        if len(lengths) != 1:
            raise ValueError(f"arrays to split together must have the same length, got lengths {sorted(lengths)}")
        parts = chronological_split(lengths.pop(), val_frac, test_frac)
        return tuple(tuple(x[s] for x in data) for s in parts)
    return tuple(data[s] for s in chronological_split(len(data), val_frac, test_frac))


def split_ids(ids, val_frac: float = 0.1, test_frac: float = 0.0):
    """A token stream ``ids`` (N,) cut into contiguous (train, val, test) parts, in that order."""
    return chronological_split(ids, val_frac, test_frac)


# -- batches for truncated BPTT ---------------------------------------------------------------

class StreamBatcher:
    """Consecutive ``(x, y)`` batches from ``B`` contiguous streams, for truncated BPTT (char-rnn style).

    The token stream is cut into ``B`` equal streams (the tail that does not fill all of them is
    dropped); stream ``b`` is column ``b`` of every batch. Batch ``k+1`` continues where batch ``k``
    ended in every stream, so the hidden state can be carried from one batch to the next. After
    ``batches_per_epoch`` batches the streams start over: ``epoch`` counts up and ``batch_in_epoch``
    is 0 again; reset the carried state then.

        x, y: (T, B) int32, time-major; y[t] is the token after x[t].

    ``state_dict()`` holds the position, so a resumed run gets exactly the batches it would have.
    """

    def __init__(self, ids, batch_size: int, seq_len: int):
        """``ids``: (N,) token ids; ``batch_size`` B streams; ``seq_len`` T steps per batch."""
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be at least 1, got {batch_size} and {seq_len}")
        ids = np.asarray(to_numpy(ids)).reshape(-1)
        # Each stream needs T+1 tokens for one batch: T inputs and the target after the last.
        require_length(ids.size, batch_size * (seq_len + 1), "the token stream",
                       f"it must hold batch_size x (seq_len + 1) = {batch_size} x {seq_len + 1}; "
                       "use more text, or a smaller --batch-size / --seq-len")
        self.batch_size, self.seq_len, self.num_tokens = batch_size, seq_len, ids.size
        stream_len = ids.size // batch_size
        self._streams = ids[: batch_size * stream_len].astype(np.int32).reshape(batch_size, stream_len)
        self.batches_per_epoch = (stream_len - 1) // seq_len
        self.epoch = 0
        self.batch_in_epoch = 0

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``(x, y)``, each (T, B) int32; moves on, wrapping to the next epoch at the end."""
        t0 = self.batch_in_epoch * self.seq_len
        window = self._streams[:, t0 : t0 + self.seq_len + 1]
        x = np.ascontiguousarray(window[:, :-1].T)
        y = np.ascontiguousarray(window[:, 1:].T)
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        return x, y

    def __iter__(self):
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.next_batch()

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def state_dict(self) -> dict:
        """The position and the shape it belongs to (JSON-able, for checkpoint metadata)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "num_tokens": self.num_tokens}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; the data and batch shape must be the ones it was saved with."""
        saved = (state["batch_size"], state["seq_len"], state["num_tokens"])
        if saved != (self.batch_size, self.seq_len, self.num_tokens):
            raise CheckpointError(
                f"the checkpoint's data position is for batch_size {saved[0]}, seq_len {saved[1]} over "
                f"{saved[2]} tokens, not {self.batch_size}, {self.seq_len} over {self.num_tokens}; "
                "resume with the same corpus, --batch-size and --seq-len"
            )
        if not 0 <= state["batch_in_epoch"] < self.batches_per_epoch:
            raise CheckpointError(f"the checkpoint's data position {state['batch_in_epoch']} is out of range; "
                                  "the checkpoint is damaged; use another one")
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])


class ArrayBatcher:
    """Shuffled minibatches from in-memory arrays, for SeqRegressor and SeqClassifier.

    ``arrays``: a tuple of arrays sharing their first dimension N, such as ``(X, Y)`` or
    ``(ids, lengths, labels)``; each batch is a tuple of the same arity with ``batch_size`` rows
    (the last batch of an epoch may be smaller). The order within epoch ``e`` is a permutation fixed by
    ``(seed, e)``, so the position (:meth:`state_dict`) is all a resumed run needs.
    """

    def __init__(self, arrays, batch_size: int, shuffle: bool = True, seed: int = 0):
        self.arrays = tuple(np.asarray(a) if not hasattr(a, "shape") else a for a in arrays)
        sizes = {len(a) for a in self.arrays}
        if len(sizes) != 1:
            raise ValueError(f"the arrays must have the same length, got lengths {sorted(sizes)}")
        self.num_examples = sizes.pop()
        if self.num_examples == 0 or batch_size < 1:
            raise ValueError(f"need at least one example and batch_size >= 1, got {self.num_examples} and {batch_size}")
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.batches_per_epoch = -(-self.num_examples // self.batch_size)
        self.epoch = self.batch_in_epoch = 0
        self._order = None  # (epoch, permutation) of the epoch being read

    def next_batch(self) -> tuple:
        if self._order is None or self._order[0] != self.epoch:
            n = self.num_examples
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order = (self.epoch, order)
        start = self.batch_in_epoch * self.batch_size
        index = self._order[1][start : start + self.batch_size]
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return tuple(a[index] for a in self.arrays)

    def __iter__(self):
        return self

    def __next__(self) -> tuple:
        return self.next_batch()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "batch_size": self.batch_size,
                "num_examples": self.num_examples, "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        saved = (state["batch_size"], state["num_examples"])
        if saved != (self.batch_size, self.num_examples):
            raise CheckpointError(f"the checkpoint's data position is for batch_size {saved[0]} over {saved[1]} "
                                  f"examples, not {self.batch_size} over {self.num_examples}; "
                                  "resume with the same data and --batch-size")
        self.seed, self.shuffle = int(state["seed"]), bool(state["shuffle"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])


# -- CSV and TSV tables -----------------------------------------------------------------------

def _read_table(path, delimiter: str | None, encoding: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV/TSV file as ``(line number, fields)``; the first is the header row.

    The delimiter is a tab for ``.tsv``/``.tab`` files, otherwise sniffed from the header line
    (``,``, tab, ``;`` or ``|``; a comma when the header has none of them).
    """
    text = read_text(path, encoding)
    if delimiter is None:
        if Path(path).suffix.lower() in (".tsv", ".tab"):
            delimiter = "\t"
        else:
            # Only the header line: free text further down is full of commas and semicolons.
            try:
                first_line = next(line for line in text.splitlines() if line.strip())
                delimiter = csv.Sniffer().sniff(first_line, delimiters=",\t;|").delimiter
            except csv.Error:
                delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV near line {reader.line_num} ({exc}); check its quoting") from None
    if not rows:
        raise DataError(f"{path} has no rows with values; pass a CSV/TSV file with a header row and data")
    return rows


def _column_index(header: list[str], column, path) -> int:
    """Index of ``column`` (a header name, or a 0-based position) in ``header``."""
    names = [h.strip() for h in header]
    if isinstance(column, (int, np.integer)):
        if -len(names) <= column < len(names):
            return int(column) % len(names)
    elif column.strip() in names:
        return names.index(column.strip())
    available = ", ".join(f"{i}: {n!r}" for i, n in enumerate(names))
    raise DataError(f"{path} has no column {column!r}; its columns are {available}; pass one of them (--column)")


def _field(row: list[str], index: int, line: int, column, path) -> str:
    if index >= len(row):
        raise DataError(f"{path} line {line} has {len(row)} fields, so no column {column!r}; fix or remove that line")
    return row[index].strip()


def load_csv_column(path, column, *, header: bool = True, delimiter: str | None = None,
                    encoding: str = "utf-8") -> np.ndarray:
    """One numeric column of a CSV/TSV file as (N,) float64, in file order.

    ``column`` is a header name or a 0-based index; with ``header=False`` the first row is data and
    ``column`` must be an index. Blank lines are skipped; an empty, non-numeric or non-finite cell is
    a DataError naming its line.
    """
    rows = _read_table(path, delimiter, encoding)
    if header:
        index, rows = _column_index(rows[0][1], column, path), rows[1:]
    elif isinstance(column, (int, np.integer)):
        index = int(column)
    else:
        raise ValueError("with header=False, pass the column as a 0-based index")
    if not rows:
        raise DataError(f"{path} has a header but no data rows; pass a file with values in it")
    values = np.empty(len(rows), dtype=np.float64)
    for k, (line, row) in enumerate(rows):
        cell = _field(row, index, line, column, path)
        try:
            values[k] = float(cell)
        except ValueError:
            raise DataError(f"{path} line {line}, column {column!r}: {cell!r} is not a number; "
                            "fill in or remove that row") from None
        if not np.isfinite(values[k]):
            raise DataError(f"{path} line {line}, column {column!r}: {cell!r} is not a finite number; "
                            "fill in or remove that row")
    return values


def load_text_labels(path, text_column="text", label_column="label", *, delimiter: str | None = None,
                     encoding: str = "utf-8") -> tuple[list[str], np.ndarray, list[str]]:
    """Texts and their labels from a CSV/TSV file with a header row, for classification.

    Returns ``texts`` (N strings), ``labels`` (N,) int32 ids into ``label_names``, and the sorted
    distinct ``label_names`` (numerically sorted when every label is an integer, so "2" < "10").
    """
    rows = _read_table(path, delimiter, encoding)
    header, rows = rows[0][1], rows[1:]
    t_idx = _column_index(header, text_column, path)
    l_idx = _column_index(header, label_column, path)
    if not rows:
        raise DataError(f"{path} has a header but no data rows; pass a file with labelled texts in it")
    texts, names = [], []
    for line, row in rows:
        label = _field(row, l_idx, line, label_column, path)
        if not label:
            raise DataError(f"{path} line {line} has an empty label; fill it in or remove that row")
        texts.append(_field(row, t_idx, line, text_column, path))
        names.append(label)
    distinct = set(names)
    if len(distinct) < 2:
        raise DataError(f"{path} has only the label {names[0]!r}; a classifier needs at least two classes")
    numeric = all(n.lstrip("+-").isdigit() for n in distinct)
    label_names = sorted(distinct, key=int if numeric else None)
    lookup = {n: i for i, n in enumerate(label_names)}
    return texts, np.array([lookup[n] for n in names], dtype=np.int32), label_names


# -- scaling ----------------------------------------------------------------------------------

class Scaler:
    """Base of the scalers: statistics over axis 0 from ``fit``, an affine map and its inverse.

    Fit on the training part only (see :func:`forecast_windows`), then transform every part.
    """

    kind = ""
    _registry: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Scaler._registry[cls.kind] = cls

    def __init__(self):
        self.offset = self.scale = None  # transform(x) = (x - offset) / scale

    def fit(self, x) -> "Scaler":
        raise NotImplementedError

    def _check_fitted(self):
        if self.scale is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(train_values) first")

    def transform(self, x) -> np.ndarray:
        self._check_fitted()
        return (np.asarray(x, dtype=np.float64) - self.offset) / self.scale

    def inverse_transform(self, x) -> np.ndarray:
        self._check_fitted()
        return np.asarray(x, dtype=np.float64) * self.scale + self.offset

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).transform(x)

    def to_dict(self) -> dict:
        """A JSON-able description (kind, offset, scale), stored in checkpoints' metadata."""
        self._check_fitted()
        return {"kind": self.kind, "offset": np.asarray(self.offset).tolist(), "scale": np.asarray(self.scale).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Scaler":
        """Inverse of :meth:`to_dict`; ``Scaler.from_dict`` gives whichever kind was saved."""
        target = Scaler._registry.get(d.get("kind")) if isinstance(d, dict) else None
        if target is None or not issubclass(target, cls):
            raise CheckpointError(f"the checkpoint's scaler is malformed ({d!r}); use a checkpoint written by rnnfast")
        out = target()
        out.offset, out.scale = np.asarray(d["offset"], np.float64), np.asarray(d["scale"], np.float64)
        return out


def _fit_values(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 0:
        raise DataError("cannot fit a scaler on no values; use a longer training part")
    return x


class MinMaxScaler(Scaler):
    """Maps the fitted minimum and maximum to 0 and 1 (a constant series maps to 0)."""

    kind = "minmax"

    def fit(self, x) -> "MinMaxScaler":
        """``x``: (N, ...) values; statistics per trailing element, over axis 0."""
        x = _fit_values(x)
        lo, hi = x.min(axis=0), x.max(axis=0)
        self.offset, self.scale = lo, np.where(hi > lo, hi - lo, 1.0)
        return self


class StandardScaler(Scaler):
    """Zero mean and unit standard deviation over the fitted values (a constant series maps to 0)."""

    kind = "standard"

    def fit(self, x) -> "StandardScaler":
        """``x``: (N, ...) values; statistics per trailing element, over axis 0."""
        x = _fit_values(x)
        std = x.std(axis=0)
        self.offset, self.scale = x.mean(axis=0), np.where(std > 0, std, 1.0)
        return self


# -- windows for forecasting ------------------------------------------------------------------

def sliding_windows(series, window: int, horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every ``window`` consecutive values and the ``horizon`` values that follow them.

    series: (N,) -> X: (N - window - horizon + 1, window), Y: (N - window - horizon + 1, horizon),
    with ``X[k] = series[k : k+window]`` and ``Y[k] = series[k+window : k+window+horizon]``.
    """
    if window < 1 or horizon < 1:
        raise ValueError(f"window and horizon must be at least 1, got {window} and {horizon}")
    series = np.asarray(series)
    if series.ndim != 1:
        raise ValueError(f"series must be one-dimensional (N,), got shape {series.shape}")
    require_length(series.size, window + horizon, "the series",
                   f"one window needs window + horizon = {window + horizon} values; "
                   "use a longer series or a smaller --window / --horizon", unit="values")
    both = np.lib.stride_tricks.sliding_window_view(series, window + horizon)
    return np.ascontiguousarray(both[:, :window]), np.ascontiguousarray(both[:, window:])


def forecast_windows(series, window: int, horizon: int = 1, val_frac: float = 0.1, test_frac: float = 0.0,
                     scaler: Scaler | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Windows for training, validating and testing a forecaster, without leakage.

    The series is cut in time order; a window belongs to the part where its targets lie, and
    windows whose targets would straddle a cut are left out, so no value is a training target
    and a validation target both. Validation and test windows take their inputs from just before
    the cut, as a forecaster in use would. ``scaler``, when given, is fitted on the training part
    only and applied to all parts.

    series: (N,) -> {"train": (X, Y), "val": (X, Y), "test": (X, Y)}, X (n, window), Y (n, horizon).
    """
    series = np.asarray(series, dtype=np.float64)
    a, b = _split_points(series.size, val_frac, test_frac)
    require_length(a, window + horizon, "the training part of the series",
                   f"one window needs window + horizon = {window + horizon} values; "
                   "use a longer series, or a smaller --window / --horizon / --val-frac", unit="values")
    if scaler is not None:
        series = scaler.fit(series[:a]).transform(series)
    empty = (np.empty((0, window)), np.empty((0, horizon)))
    out = {"train": sliding_windows(series[:a], window, horizon)}
    for name, start, end in (("val", a, b), ("test", b, series.size)):
        if end == start:
            out[name] = empty
            continue
        require_length(end - start, horizon, f"the {name} part of the series",
                       f"it needs at least horizon = {horizon} values; use a larger --{name}-frac or a longer series",
                       unit="values")
        # start >= window (the training part holds at least one window), so the context exists.
        out[name] = sliding_windows(series[start - window : end], window, horizon)
    return out
