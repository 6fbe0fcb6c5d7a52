"""Tasks: what each kind of run reads, how it splits it, its model and the baseline it must beat.

- ``charlm``: a text file (or the built-in corpus) -> character (or word) ids, the last ``val_frac``
  held out.
- ``forecast``: one numeric CSV column, and optionally feature columns beside it -> windows of
  ``window`` rows and the target's ``horizon`` values after them, each column standardised on the
  training part; the last ``val_frac`` of the series is held out.
- ``classify``: a CSV/TSV of texts and labels -> characters (or words) cut to ``seq_len``, a seeded
  shuffle, then ``val_frac`` of the rows held out.

``tokens="word"`` (charlm, classify, translate) reads texts as words (:func:`rnnfast.data.split_words`)
with a :class:`~rnnfast.data.TokenVocab` of the training part's words seen ``min_count`` times
(the others are ``<unk>``); a character run (the default) keeps its :class:`~rnnfast.data.Vocab`.
Either is ``meta["vocab"]``, read back by :func:`text_vocab`.
- ``translate``: a CSV/TSV of source texts and their translations -> character or word ids of each
  side (vocabularies of the training pairs), a seeded shuffle, then ``val_frac`` of the pairs held out.

Training and evaluation both read through here, so a held-out split read again later is cut
exactly as training cut it, given the same arguments (``rnnfast train`` stores them in the checkpoint).

    >>> td = read_charlm(None, batch_size=4, seq_len=32)     # the built-in corpus
    >>> model = build_model("charlm", td, hidden_size=16, num_layers=1, seed=0)
    >>> type(model).__name__, td.baseline_name
    ('CharRNN', 'unigram')
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnfast.corpus import default_corpus_path
from rnnfast.data import (PAD, StandardScaler, Scaler, TokenVocab, Vocab, chronological_split, forecast_windows,
                          load_csv_columns, load_text_labels, load_text_pairs, read_text, require_length,
                          sliding_windows, split_ids, split_words, vocab_from_dict)
from rnnfast.errors import CheckpointError, DataError
from rnnfast.metrics import bits_per_char
from rnnfast.models import CharRNN, Seq2Seq, SeqClassifier, SeqRegressor

TASKS = ("charlm", "forecast", "classify", "translate")


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


def data_path(path) -> Path:
    """The file a run reads: the one given, or the built-in corpus for None."""
    return default_corpus_path() if path is None else Path(path)


def _name(path) -> str:
    return "the built-in corpus" if path is None else str(path)


# -- charlm -------------------------------------------------------------------------------------

def unigram_loss(train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int) -> float:
    """Mean loss (nats) on ``val_ids`` of a model that knows only how often each character occurs in
    training (add-one smoothed, so a character unseen in training still has a finite cost)."""
    counts = np.bincount(train_ids, minlength=vocab_size) + 1.0
    return float(-np.log(counts[val_ids] / counts.sum()).mean())


def read_charlm(path=None, *, batch_size: int, seq_len: int, val_frac: float = 0.1, encoding: str = "utf-8",
                tokens: str = "char", min_count: int = 1) -> TaskData:
    """A text file (None: the built-in corpus) as character ids, the last ``val_frac`` held out; the
    training part must fill one batch of ``batch_size`` x ``seq_len``, the held-out part one sequence.

    ``tokens="word"``: as word ids instead (``seq_len`` counts words), cut where the text's
    ``val_frac`` of words begins, with the vocabulary of the training part's words seen at least
    ``min_count`` times there, so that a word only the held-out part has reads as ``<unk>``, as it
    would in new text."""
    text = read_text(data_path(path), encoding)
    name = _name(path)
    if tokens == "word":
        vocab, ids = _word_stream(text, name, val_frac, min_count)
        kind, unit = f"words, {len(vocab):,} word ids (--min-count {min_count})", "words"
    else:
        vocab = Vocab.from_text(text)
        if len(vocab) < 2:
            # Every next character is certain: nothing to learn, and a baseline loss of zero.
            raise DataError(f"{name} holds only one distinct character ({vocab.chars[0]!r}); a character model "
                            "needs a text with at least two, so pass a real text")
        ids = vocab.encode(text)
        kind, unit = f"characters, {len(vocab)} distinct", "characters"
    train, val, _ = split_ids(ids, val_frac)
    need = batch_size * (seq_len + 1)
    require_length(len(train), need, f"the training part of {name}",
                   f"one batch needs --batch-size x (--seq-len + 1) = {need} {unit}; "
                   "use a longer text, or a smaller --batch-size / --seq-len", unit=unit)
    require_length(len(val), seq_len + 1, f"the validation part of {name} (--val-frac {val_frac})",
                   f"it must hold one sequence (--seq-len + 1 {unit}); use a larger --val-frac or a longer text",
                   unit=unit)
    return TaskData(train, val, {"vocab": vocab.to_dict()},
                    f"{name} ({len(ids) if tokens == 'word' else len(text):,} {kind}; {len(val):,} held out)",
                    unigram_loss(train, val, len(vocab)), "unigram")


def _require_tokens(vocab: TokenVocab, what: str, where: str) -> TokenVocab:
    """``vocab``, unless --min-count left it no token (only specials): then a DataError naming
    ``what`` was counted ("word of FILE") and ``where`` ("the training rows")."""
    if not vocab.tokens:
        raise DataError(f"no {what} occurs {vocab.min_count} times (--min-count) in {where}; use a smaller --min-count")
    return vocab


def _word_stream(text: str, name: str, val_frac: float, min_count: int) -> tuple[TokenVocab, np.ndarray]:
    """A text's word vocabulary (of the words before its held-out part) and its word ids (N,)."""
    words = split_words(text)
    vocab = TokenVocab.from_tokens(words[chronological_split(len(words), val_frac)[0]], "word", min_count)
    _require_tokens(vocab, f"word of {name}", "its training part")
    ids = vocab.encode_tokens(words)
    if len(np.unique(ids)) < 2:
        # Every next word is certain: nothing to learn, as for a text of one character.
        raise DataError(f"{name} holds only one distinct word ({vocab.tokens[0]!r}); a word model needs a text "
                        "with at least two, so pass a real text")
    return vocab, ids


# -- forecast -----------------------------------------------------------------------------------

def persistence_loss(X: np.ndarray, Y: np.ndarray) -> float:
    """MSE of the forecast "every next value equals the last one seen", the baseline a forecaster must beat.
    X: (N, window) values or (N, window, F) rows whose column 0 is the target; Y: (N, horizon)."""
    last = X[:, -1] if X.ndim == 2 else X[:, -1, 0]
    return float(((Y - last[:, None]) ** 2).mean())


def read_forecast(path, column: str | int, *, window: int, horizon: int = 1, val_frac: float = 0.1,
                  encoding: str = "utf-8", features=()) -> TaskData:
    """One numeric column (a header name or a 0-based index) of a CSV file as forecasting windows,
    with the ``features`` columns beside it as more inputs (each row of a window: the target, then
    the features), each column standardised on the training part, the last ``val_frac`` held out.
    ``meta``: the target's scaler (``"scaler"``) and, with features, ``"features"``: their columns
    and scaler."""
    features = list(features)
    values = load_csv_columns(path, [column, *features], encoding=encoding,
                              options=["--column"] + ["--features"] * len(features))
    scaler = StandardScaler()  # fitted on the training part by forecast_windows, kept for later data
    # one column is one series (N,), as before there were features, so its scaler is the one it was
    splits = forecast_windows(values if features else values[:, 0], window, horizon, val_frac, scaler=scaler)
    train, val = splits["train"], splits["val"]
    require_length(len(val[0]), 1, f"the validation part of {path}",
                   "it needs at least one window's targets; use a larger --val-frac or a smaller --horizon",
                   unit="windows")
    meta = {"scaler": scaler.to_dict()}
    if features:
        meta = {"scaler": scaler.select(0).to_dict(),
                "features": {"columns": features, "scaler": scaler.select(slice(1, None)).to_dict()}}
    beside = f" with features {', '.join(map(repr, features))}" if features else ""
    return TaskData(train, val, meta,
                    f"{path} column {column!r}{beside} ({len(values):,} values; "
                    f"{len(train[0]):,} training and {len(val[0]):,} validation windows)",
                    persistence_loss(*val), "last value")


def feature_columns(meta: dict) -> list:
    """The columns a forecaster reads beside its target (``features`` of :func:`read_forecast`), from
    its checkpoint's meta; [] for a forecaster of its target alone."""
    return list(meta["features"]["columns"]) if "features" in meta else []


def scale_forecast_inputs(meta: dict, values: np.ndarray, checkpoint="the checkpoint") -> np.ndarray:
    """values: (N, 1 + K) rows of a CSV (the target, then the K :func:`feature_columns`) in its units
    -> what the model reads, each column scaled as in training: (N,) for K = 0, else (N, 1 + K)."""
    target = Scaler.from_dict(checkpoint_part(meta, "scaler", checkpoint)).transform(values[:, 0])
    if values.shape[1] == 1:
        return target
    return np.column_stack([target, scale_features(meta, values[:, 1:], checkpoint)])


def scale_features(meta: dict, values: np.ndarray, checkpoint="the checkpoint") -> np.ndarray:
    """values: (N, K) of the :func:`feature_columns`, in the CSV's units -> (N, K) scaled as in training."""
    return Scaler.from_dict(checkpoint_part(meta, "features", checkpoint)["scaler"]).transform(values)


def forecast_eval_windows(meta: dict, path, column: str | int, *, window: int, horizon: int = 1,
                          encoding: str = "utf-8") -> tuple[np.ndarray, np.ndarray]:
    """Every window of a new CSV file, of the columns the checkpoint's forecaster reads, scaled as in
    training (``meta`` holds the scalers)."""
    values = load_csv_columns(path, [column, *feature_columns(meta)], encoding=encoding)
    return sliding_windows(scale_forecast_inputs(meta, values), window, horizon)


# -- classify -----------------------------------------------------------------------------------

def encode_texts(vocab, texts, max_len: int, path, lines=None) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> ids (N, T) int32 padded with 0 and lengths (N,), each cut to its first ``max_len``
    tokens: characters of a :class:`~rnnfast.data.Vocab`, or a :class:`~rnnfast.data.TokenVocab`'s
    (whose unknown tokens read as <unk>). An empty text or a character outside a ``Vocab`` is a
    DataError naming the text by its line in ``path`` (``lines``: each text's) or else by its data row."""
    def where(i):
        return f"{path} line {lines[i]}" if lines is not None else f"{path}: data row {i + 1}"

    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        raise DataError(f"{where(empty[0])} has an empty text; fill it in or remove that row")
    # characters are cut before encoding, so that one past the cut is not refused
    cut = (lambda t: t[:max_len]) if vocab.unit == "char" else (lambda t: t)
    encoded = []
    for i, text in enumerate(texts):
        try:
            encoded.append(vocab.encode(cut(text))[:max_len])
        except DataError as exc:
            raise DataError(f"{where(i)}: {exc}") from None
    lengths = np.array([len(e) for e in encoded], dtype=np.int32)
    ids = np.zeros((len(texts), int(lengths.max())), dtype=np.int32)
    for i, (e, n) in enumerate(zip(encoded, lengths)):
        ids[i, :n] = e
    return ids, lengths


def prior_loss(train_labels: np.ndarray, val_labels: np.ndarray, num_classes: int) -> float:
    """Cross-entropy on the validation labels of always predicting the training label frequencies."""
    counts = np.bincount(train_labels, minlength=num_classes) + 1.0
    return float(-np.log(counts[val_labels] / counts.sum()).mean())


def shuffled_split(n: int, val_frac: float, seed: int, path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Indexes of the training and the validation rows of ``n``: a shuffle fixed by ``seed``, then
    ``val_frac`` of them (rounded) held out; too few for both parts is a DataError (``what``: the
    rows' name in its message)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_frac))
    if n_val < 1 or n_val == n:
        raise DataError(f"{path} has {n} {what}, too few to hold out {val_frac:.0%} "
                        f"for validation and train on the rest; use more {what} or another --val-frac")
    return order[:-n_val], order[-n_val:]


def read_classify(path, *, seq_len: int, text_column="text", label_column="label", val_frac: float = 0.1,
                  seed: int = 0, encoding: str = "utf-8", tokens: str = "char", min_count: int = 1) -> TaskData:
    """Labelled texts of a CSV/TSV file as ids cut to ``seq_len``, with lengths and label ids; a
    shuffle fixed by ``seed``, then ``val_frac`` of the rows held out.

    The vocabulary holds the characters of every text; with ``tokens="word"`` the words of the
    training rows seen at least ``min_count`` times there (``seq_len`` counts words), so that a word
    only held-out texts have reads as ``<unk>``, as it would in new text."""
    texts, labels, names = load_text_labels(path, text_column, label_column, encoding=encoding)
    # Files of labelled texts are often sorted by label: shuffle (seeded) before holding rows out.
    tr, va = shuffled_split(len(labels), val_frac, seed, path, "rows")
    if tokens == "word":
        vocab = _require_tokens(TokenVocab.build([texts[i] for i in tr], "word", min_count), f"word of {path}",
                                "the training rows")
    else:
        vocab = Vocab.from_text("".join(texts))
    ids, lengths = encode_texts(vocab, texts, seq_len, path)
    return TaskData((ids[tr], lengths[tr], labels[tr]), (ids[va], lengths[va], labels[va]),
                    {"vocab": vocab.to_dict(), "labels": list(names)},
                    f"{path} ({len(labels):,} texts, {len(names)} classes"
                    + (f", {len(vocab):,} word ids (--min-count {min_count})" if tokens == "word" else "")
                    + f"; {len(va):,} held out)",
                    prior_loss(labels[tr], labels[va], len(names)), "label frequencies")


def classify_eval_data(meta: dict, path, *, seq_len: int, text_column="text", label_column="label",
                       encoding: str = "utf-8") -> tuple:
    """(ids, lengths, labels) of a new labelled file, read with the checkpoint's vocabulary and labels."""
    texts, labels, names = load_text_labels(path, text_column, label_column, encoding=encoding)
    known = checkpoint_part(meta, "labels", "the checkpoint")
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise DataError(f"{path} has labels the model was not trained on: {', '.join(map(repr, unknown[:5]))}; "
                        f"it knows {', '.join(map(repr, known))}")
    ids, lengths = encode_texts(text_vocab(meta), texts, seq_len, path)
    return ids, lengths, np.array([known.index(names[k]) for k in labels], dtype=np.int32)


def text_vocab(meta: dict, checkpoint="the checkpoint"):
    """The vocabulary of a character model's or classifier's checkpoint (``meta["vocab"]``): a
    :class:`~rnnfast.data.Vocab` for a character run, a :class:`~rnnfast.data.TokenVocab` for a
    word run (:func:`rnnfast.data.vocab_from_dict`)."""
    return vocab_from_dict(checkpoint_part(meta, "vocab", checkpoint))


# -- translate ----------------------------------------------------------------------------------

def encode_pairs(source_vocab: TokenVocab, target_vocab: TokenVocab, sources, targets) -> tuple:
    """N source texts and their N targets -> ``(src (N, S), src_lengths (N,), tgt (N, T), tgt_lengths (N,))``
    int32, padded with PAD: each source's token ids, each target's followed by EOS (counted in its
    length); tokens outside a vocabulary are UNK."""
    return (*source_vocab.encode_batch(sources), *target_vocab.encode_batch(targets, eos=True))


def read_translate(path, *, source_column="source", target_column="target", val_frac: float = 0.1, seed: int = 0,
                   tokens: str = "char", min_count: int = 1, encoding: str = "utf-8") -> TaskData:
    """Pairs of texts of a CSV/TSV file (a source and its translation on each row) as the four arrays of
    :func:`encode_pairs`; a shuffle fixed by ``seed``, then ``val_frac`` of the pairs held out.

    ``tokens``: "char" or "word" (:func:`rnnfast.data.split_words`), for both sides. Each side's
    vocabulary holds the tokens of the training pairs seen at least ``min_count`` times there, so a
    token only the held-out pairs have reads as UNK, as it would in new text. ``meta``: the two
    vocabularies' dicts and the longest source and target of the file, in tokens (the target's
    without its EOS). ``baseline``: the loss per target token (EOS included) of the training
    targets' token frequencies, add-one smoothed.
    """
    lines, sources, targets = load_text_pairs(path, source_column, target_column, encoding=encoding)
    tr, va = shuffled_split(len(lines), val_frac, seed, path, "pairs")
    source_vocab = TokenVocab.build([sources[i] for i in tr], tokens, min_count)
    target_vocab = TokenVocab.build([targets[i] for i in tr], tokens, min_count)
    for side, vocab in (("source", source_vocab), ("target", target_vocab)):
        _require_tokens(vocab, f"{side} {tokens} of {path}", "the training pairs")
    src, src_lengths, tgt, tgt_lengths = arrays = encode_pairs(source_vocab, target_vocab, sources, targets)
    train, val = tuple(a[tr] for a in arrays), tuple(a[va] for a in arrays)
    meta = {"source_vocab": source_vocab.to_dict(), "target_vocab": target_vocab.to_dict(),
            "max_source_len": int(src_lengths.max()), "max_target_len": int(tgt_lengths.max()) - 1}
    baseline = unigram_loss(train[2][train[2] != PAD], val[2][val[2] != PAD], len(target_vocab))
    return TaskData(train, val, meta,
                    f"{path} ({len(lines):,} pairs, {len(source_vocab):,} source and {len(target_vocab):,} target "
                    f"{tokens} ids; {len(va):,} held out)",
                    baseline, "token frequencies")


def translate_vocabs(meta: dict, checkpoint="the checkpoint") -> tuple[TokenVocab, TokenVocab]:
    """The source and target vocabularies a translator's checkpoint keeps."""
    return (TokenVocab.from_dict(checkpoint_part(meta, "source_vocab", checkpoint)),
            TokenVocab.from_dict(checkpoint_part(meta, "target_vocab", checkpoint)))


def translate_eval_data(meta: dict, path, *, source_column="source", target_column="target",
                        encoding: str = "utf-8") -> tuple:
    """The four arrays of :func:`encode_pairs` for every pair of a new file, read with the checkpoint's
    vocabularies (tokens they lack are UNK)."""
    _, sources, targets = load_text_pairs(path, source_column, target_column, encoding=encoding)
    return encode_pairs(*translate_vocabs(meta), sources, targets)


def encode_sources(meta: dict, texts, path="the input", lines=None) -> tuple[np.ndarray, np.ndarray]:
    """Texts to translate (strings; line ends and outer spaces ignored, as a pairs file's fields are)
    -> ``(src (N, S), src_lengths (N,))`` int32 with the checkpoint's source vocabulary (tokens it
    lacks are UNK). An empty text is a DataError naming its line in ``path``: ``lines[i]`` (each
    text's line number), or by default text i is on line i + 1 (one text a line)."""
    texts = [text.strip() for text in texts]
    if "" in texts:
        first = texts.index("")
        raise DataError(f"{path} line {first + 1 if lines is None else lines[first]} is empty; give one text to "
                        "translate on each line, or remove that line")
    return translate_vocabs(meta)[0].encode_batch(texts)


# -- all tasks ----------------------------------------------------------------------------------

def build_model(task: str, td: TaskData, *, hidden_size: int, num_layers: int, cell: str = "lstm",
                dropout: float = 0.0, dtype=np.float32, seed: int | None = None, bidirectional: bool = False,
                horizon: int = 1, attention: str = "bahdanau", teacher_forcing: float = 1.0, **options):
    """The task's model for ``td``, freshly initialised (the seed fixes every weight); ``options``:
    the recurrent layer's regularisers and layer norm (weight_drop, recurrent_dropout, zoneout, layer_norm),
    and for translate any other :class:`~rnnfast.models.Seq2Seq` argument (decoder_cell, embedding_dim).
    ``horizon`` is forecast's; ``attention`` and ``teacher_forcing`` are translate's."""
    common = dict(hidden_size=hidden_size, num_layers=num_layers, cell=cell, dropout=dropout, dtype=np.dtype(dtype),
                  seed=seed, **options)
    if task == "charlm":
        return CharRNN(len(text_vocab(td.meta)), **common)
    if task == "forecast":
        return SeqRegressor(1 + len(feature_columns(td.meta)), output_size=horizon, bidirectional=bidirectional,
                            **common)
    if task == "translate":
        source_vocab, target_vocab = translate_vocabs(td.meta)
        return Seq2Seq(len(source_vocab), len(target_vocab), bidirectional=bidirectional, attention=attention,
                       teacher_forcing=teacher_forcing, max_target_len=td.meta["max_target_len"],
                       max_source_len=td.meta["max_source_len"], **common)
    return SeqClassifier(len(text_vocab(td.meta)), len(td.meta["labels"]), bidirectional=bidirectional,
                         **common)


def describe_loss(task: str, loss: float, tokens: str = "char") -> str:
    """A validation loss with its units (and bits per character for a character model; a word
    model's, ``tokens="word"``, is per word: nats/token)."""
    if task == "charlm" and tokens == "char":
        return f"{loss:.4f} nats/char ({bits_per_char(loss):.3f} bpc, perplexity {math.exp(loss):.2f})"
    if task in ("charlm", "translate"):
        return f"{loss:.4f} nats/token (perplexity {math.exp(loss):.2f})"
    if task == "forecast":
        return f"{loss:.4f} MSE (standardised units)"
    return f"{loss:.4f} cross-entropy"


def checkpoint_part(meta: dict, key: str, checkpoint):
    """``meta[key]`` (the vocabulary, scaler or labels that a task's checkpoint keeps); a checkpoint
    without it is a CheckpointError, not a traceback."""
    if key not in meta:
        raise CheckpointError(f"{checkpoint} has no {key} in its metadata, so it cannot read data as its run did; "
                              "use a checkpoint written by 'rnnfast train' (or a Trainer given that meta)")
    return meta[key]


def check_same_data(meta: dict, td: TaskData, checkpoint) -> None:
    """The data read now must be read as it was when ``checkpoint`` was written (same vocabulary,
    scaler and labels); otherwise the file changed since that run. A checkpoint lacking one of them
    is a CheckpointError saying so."""
    for key, value in td.meta.items():
        if checkpoint_part(meta, key, checkpoint) != value:
            raise DataError(f"the data no longer matches {checkpoint} (its {key} differs): the file changed since "
                            "that run; use the data it was trained on")
