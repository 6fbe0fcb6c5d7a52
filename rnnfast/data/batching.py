"""Batchers: :class:`StreamBatcher` (consecutive batches of contiguous token streams, for truncated
BPTT) and :class:`ArrayBatcher` (shuffled minibatches of in-memory examples). Both are iterators
whose position (``state_dict()``) is part of a checkpoint, so a resumed run reads the same batches.
"""
from __future__ import annotations

import numpy as np

from rnnfast.backend import to_numpy
from rnnfast.data.splits import require_length
from rnnfast.errors import CheckpointError


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

    batch_axis = 1  # of x and y: a data-parallel rank takes its streams (rnnfast.parallel)

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

    batch_axis = 0  # of every array: a data-parallel rank takes its rows (rnnfast.parallel)

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
