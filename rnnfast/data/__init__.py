"""Data: text corpora for character models, CSV time series, labelled text and pairs of texts, ready
for a model.

One module per kind: :mod:`~rnnfast.data.text` (files, character vocabularies),
:mod:`~rnnfast.data.tokens` (character or word vocabularies with special ids, for translation and
word runs),
:mod:`~rnnfast.data.splits`
(train/val/test cuts, length checks), :mod:`~rnnfast.data.batching` (the two batchers),
:mod:`~rnnfast.data.tables` (CSV/TSV), :mod:`~rnnfast.data.scaling` (scalers) and
:mod:`~rnnfast.data.windows` (forecasting windows); every name is importable from here.

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

Pairs of texts (translation), ids after <pad> <bos> <eos> <unk>::

    >>> words = TokenVocab.build(["a cat.", "a dog."], unit="word")
    >>> words.encode("a cow.").tolist(), words.decode([5, 7, 3, 4, EOS, PAD])
    ([5, 3, 4], 'a dog <unk> .')

Time series (forecasting)::

    >>> import numpy as np
    >>> series = np.sin(np.linspace(0, 20, 200))
    >>> splits = forecast_windows(series, window=16, horizon=4, val_frac=0.2, scaler=StandardScaler())
    >>> X, Y = splits["train"]                       # X (N, window), Y (N, horizon)
    >>> X.shape[1], Y.shape[1]
    (16, 4)

Every problem a user can cause with a file (missing, a directory, empty, binary, wrong encoding, a
missing column, a non-numeric value, too short for the options chosen) is a :class:`DataError`
whose one-line message says what to do.
"""
from rnnfast.data.batching import ArrayBatcher, StreamBatcher
from rnnfast.data.scaling import MinMaxScaler, Scaler, StandardScaler
from rnnfast.data.splits import chronological_split, require_length, split_ids
from rnnfast.data.tables import load_csv_column, load_csv_columns, load_text_column, load_text_labels, load_text_pairs
from rnnfast.data.text import Vocab, read_text
from rnnfast.data.tokens import BOS, EOS, PAD, SPECIALS, UNK, TokenVocab, split_words, vocab_from_dict
from rnnfast.data.windows import forecast_windows, sliding_windows

__all__ = ["BOS", "EOS", "PAD", "SPECIALS", "UNK", "ArrayBatcher", "MinMaxScaler", "Scaler", "StandardScaler",
           "StreamBatcher", "TokenVocab", "Vocab", "chronological_split", "forecast_windows", "load_csv_column",
           "load_csv_columns", "load_text_column", "load_text_labels", "load_text_pairs", "read_text",
           "require_length", "sliding_windows", "split_ids", "split_words", "vocab_from_dict"]
