"""The three tasks of ``rnnfast train``: what each reads, how it splits, its model and its baseline.

``train`` and ``eval`` both go through here, so the held-out split that ``eval`` scores is cut
exactly as training cut it, from the options stored in the checkpoint.

- ``charlm``: a text file (or the built-in corpus) -> character ids, the last ``val_frac`` held out.
- ``forecast``: one numeric CSV column -> windows of ``window`` values and the ``horizon`` after
  them, standardised on the training part; the last ``val_frac`` of the series is held out.
- ``classify``: a CSV/TSV of texts and labels -> characters cut to ``seq_len``, a seeded shuffle,
  then ``val_frac`` of the rows held out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnfast.corpus import default_corpus_path
from rnnfast.data import (StandardScaler, Scaler, Vocab, forecast_windows, load_csv_column, load_text_labels,
                          read_text, require_length, sliding_windows, split_ids)
from rnnfast.errors import CheckpointError, DataError
from rnnfast.metrics import bits_per_char
from rnnfast.models import CharRNN, SeqClassifier, SeqRegressor

TASKS = ("charlm", "forecast", "classify")


@dataclass
class TaskData:
    """A task's data, split. ``train``/``val``: ids (N,) for charlm, else tuples of arrays the model's
    ``train_step``/``evaluate`` take. ``meta``: what a checkpoint must keep to read new data the same
    way (vocabulary, scaler, label names). ``baseline``: the loss a model with no memory reaches on
    ``val``, in the units of the validation loss, and what that model is."""

    train: object
    val: object
    meta: dict
    description: str
    baseline: float
    baseline_name: str


def data_path(data) -> Path:
    """The file a run reads: the one given, or the built-in corpus."""
    return default_corpus_path() if data is None else Path(data)


def _name(data) -> str:
    return "the built-in corpus" if data is None else str(data)


# -- charlm -------------------------------------------------------------------------------------

def unigram_loss(train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int) -> float:
    """Mean loss (nats) on ``val_ids`` of a model that knows only how often each character occurs in
    training (add-one smoothed, so a character unseen in training still has a finite cost)."""
    counts = np.bincount(train_ids, minlength=vocab_size) + 1.0
    return float(-np.log(counts[val_ids] / counts.sum()).mean())


def read_charlm(opts: dict) -> TaskData:
    text = read_text(data_path(opts["data"]), opts["encoding"])
    vocab = Vocab.from_text(text)
    train, val, _ = split_ids(vocab.encode(text), opts["val_frac"])
    name = _name(opts["data"])
    need = opts["batch_size"] * (opts["seq_len"] + 1)
    require_length(len(train), need, f"the training part of {name}",
                   f"one batch needs --batch-size x (--seq-len + 1) = {need} characters; "
                   "use a longer text, or a smaller --batch-size / --seq-len", unit="characters")
    require_length(len(val), opts["seq_len"] + 1, f"the validation part of {name} (--val-frac {opts['val_frac']})",
                   "it must hold one sequence (--seq-len + 1 characters); use a larger --val-frac or a longer text",
                   unit="characters")
    return TaskData(train, val, {"vocab": vocab.to_dict()},
                    f"{name} ({len(text):,} characters, {len(vocab)} distinct; {len(val):,} held out)",
                    unigram_loss(train, val, len(vocab)), "unigram")


# -- forecast -----------------------------------------------------------------------------------

def _column(value):
    """--column: a header name, or a 0-based index when it is all digits."""
    return int(value) if value is not None and value.isdigit() else value


def persistence_loss(X: np.ndarray, Y: np.ndarray) -> float:
    """MSE of the forecast "every next value equals the last one seen", the baseline a forecaster must beat."""
    return float(((Y - X[:, -1:]) ** 2).mean())


def read_forecast(opts: dict) -> TaskData:
    if opts["data"] is None:
        raise DataError("--task forecast needs a CSV file: rnnfast train series.csv --task forecast --column NAME")
    if opts["column"] is None:
        raise DataError("--task forecast needs --column: the header name (or 0-based index) of the values to forecast")
    series = load_csv_column(opts["data"], _column(opts["column"]), encoding=opts["encoding"])
    scaler = StandardScaler()  # fitted on the training part by forecast_windows, kept for later data
    splits = forecast_windows(series, opts["window"], opts["horizon"], opts["val_frac"], scaler=scaler)
    train, val = splits["train"], splits["val"]
    require_length(len(val[0]), 1, f"the validation part of {opts['data']}",
                   "it needs at least one window's targets; use a larger --val-frac or a smaller --horizon",
                   unit="windows")
    return TaskData(train, val, {"scaler": scaler.to_dict()},
                    f"{opts['data']} column {opts['column']!r} ({len(series):,} values; "
                    f"{len(train[0]):,} training and {len(val[0]):,} validation windows)",
                    persistence_loss(*val), "last value")


def forecast_eval_windows(meta: dict, opts: dict, path) -> tuple[np.ndarray, np.ndarray]:
    """Every window of a new CSV file, scaled as in training."""
    series = load_csv_column(path, _column(opts["column"]), encoding=opts["encoding"])
    return sliding_windows(Scaler.from_dict(meta["scaler"]).transform(series), opts["window"], opts["horizon"])


# -- classify -----------------------------------------------------------------------------------

def encode_texts(vocab: Vocab, texts, max_len: int, path) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> ids (N, T) int32 padded with 0 and lengths (N,), each cut to ``max_len`` characters."""
    lengths = np.array([min(len(t), max_len) for t in texts], dtype=np.int32)
    if (lengths == 0).any():
        row = int(np.flatnonzero(lengths == 0)[0]) + 1
        raise DataError(f"{path}: data row {row} has an empty text; fill it in or remove that row")
    ids = np.zeros((len(texts), int(lengths.max())), dtype=np.int32)
    for i, (text, n) in enumerate(zip(texts, lengths)):
        ids[i, :n] = vocab.encode(text[:n])
    return ids, lengths


def prior_loss(train_labels: np.ndarray, val_labels: np.ndarray, num_classes: int) -> float:
    """Cross-entropy on the validation labels of always predicting the training label frequencies."""
    counts = np.bincount(train_labels, minlength=num_classes) + 1.0
    return float(-np.log(counts[val_labels] / counts.sum()).mean())


def read_classify(opts: dict) -> TaskData:
    if opts["data"] is None:
        raise DataError("--task classify needs a CSV or TSV file with a text and a label column: "
                        "rnnfast train reviews.tsv --task classify")
    texts, labels, names = load_text_labels(opts["data"], opts["text_column"], opts["label_column"],
                                            encoding=opts["encoding"])
    vocab = Vocab.from_text("".join(texts))
    ids, lengths = encode_texts(vocab, texts, opts["seq_len"], opts["data"])
    # Files of labelled texts are often sorted by label: shuffle (seeded) before holding rows out.
    order = np.random.default_rng(opts["seed"]).permutation(len(labels))
    n_val = int(round(len(labels) * opts["val_frac"]))
    if n_val < 1 or n_val == len(labels):
        raise DataError(f"{opts['data']} has {len(labels)} rows, too few to hold out {opts['val_frac']:.0%} "
                        "for validation and train on the rest; use more rows or another --val-frac")
    tr, va = order[:-n_val], order[-n_val:]
    return TaskData((ids[tr], lengths[tr], labels[tr]), (ids[va], lengths[va], labels[va]),
                    {"vocab": vocab.to_dict(), "labels": list(names)},
                    f"{opts['data']} ({len(labels):,} texts, {len(names)} classes; {n_val:,} held out)",
                    prior_loss(labels[tr], labels[va], len(names)), "label frequencies")


def classify_eval_data(meta: dict, opts: dict, path) -> tuple:
    """(ids, lengths, labels) of a new labelled file, read with the checkpoint's vocabulary and labels."""
    texts, labels, names = load_text_labels(path, opts["text_column"], opts["label_column"], encoding=opts["encoding"])
    known = meta["labels"]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise DataError(f"{path} has labels the model was not trained on: {', '.join(map(repr, unknown[:5]))}; "
                        f"it knows {', '.join(map(repr, known))}")
    ids, lengths = encode_texts(Vocab.from_dict(meta["vocab"]), texts, opts["seq_len"], path)
    return ids, lengths, np.array([known.index(names[k]) for k in labels], dtype=np.int32)


READERS = {"charlm": read_charlm, "forecast": read_forecast, "classify": read_classify}


def read_task(opts: dict) -> TaskData:
    return READERS[opts["task"]](opts)


def build_model(opts: dict, td: TaskData):
    """The task's model, freshly initialised from the options (the seed fixes every weight)."""
    common = dict(hidden_size=opts["hidden"], num_layers=opts["layers"], cell=opts["cell"], dropout=opts["dropout"],
                  dtype=np.dtype(opts["dtype"]), seed=opts["seed"])
    if opts["task"] == "charlm":
        return CharRNN(len(td.meta["vocab"]["chars"]), **common)
    if opts["task"] == "forecast":
        return SeqRegressor(1, output_size=opts["horizon"], bidirectional=opts["bidirectional"], **common)
    return SeqClassifier(len(td.meta["vocab"]["chars"]), len(td.meta["labels"]),
                         bidirectional=opts["bidirectional"], **common)


def describe_loss(task: str, loss: float) -> str:
    """A validation loss with its units (and bits per character for a character model)."""
    if task == "charlm":
        return f"{loss:.4f} nats/char ({bits_per_char(loss):.3f} bpc, perplexity {math.exp(loss):.2f})"
    if task == "forecast":
        return f"{loss:.4f} MSE (standardised units)"
    return f"{loss:.4f} cross-entropy"


def check_same_data(meta: dict, td: TaskData, checkpoint) -> None:
    """The data read now must be read as it was when ``checkpoint`` was written (same vocabulary,
    scaler and labels); otherwise the file changed since that run."""
    for key, value in td.meta.items():
        if meta.get(key) != value:
            raise DataError(f"the data no longer matches {checkpoint} (its {key} differs): the file changed since "
                            "that run; use the data it was trained on")


def task_of(meta: dict, path) -> tuple[str, dict]:
    """The task and the train options a checkpoint written by ``rnnfast train`` records."""
    cli = meta.get("cli")
    if not isinstance(cli, dict) or cli.get("options", {}).get("task") not in TASKS:
        raise CheckpointError(f"{path} was not written by 'rnnfast train' (it has no record of its task and data); "
                              "use a checkpoint from a run directory")
    return cli["options"]["task"], cli["options"]
