"""The character language model: Embedding -> stacked RNN/LSTM/GRU -> Dropout -> Linear to the vocabulary,
trained by truncated BPTT on :class:`rnnfast.data.StreamBatcher` batches; sampling is in
:mod:`rnnfast.models.sampling`.
"""
from __future__ import annotations

import copy

import numpy as np

from rnnfast.backend import to_numpy
from rnnfast.data import StreamBatcher
from rnnfast.layers import Dropout, Embedding, Linear
from rnnfast.losses import cross_entropy
from rnnfast.metrics import bits_per_char, perplexity
from rnnfast.models.base import Model, child_seeds, recurrent_layer, recurrent_shapes, regularisers, resolve_seed
from rnnfast.models.sampling import CharSampling


class CharRNN(CharSampling, Model):
    """Character language model: Embedding -> stacked RNN/LSTM/GRU -> Dropout -> Linear to the vocabulary.

    Children ``embed``, ``rnn``, ``drop``, ``head``, so parameters are ``embed.weight``,
    ``rnn.weight_ih_l0`` (PyTorch's names), ``head.weight``, ``head.bias``. ``dropout`` applies
    between recurrent layers and on the last layer's output. ``embedding_dim`` defaults to
    ``hidden_size``.

    Training is truncated BPTT: :meth:`train_step` starts each batch from the final hidden state of
    the previous one, without a gradient into it. Call :meth:`reset_state` when the batches stop
    being consecutive (a new epoch; :class:`rnnfast.Trainer` does it).
    """

    def __init__(self, vocab_size: int, hidden_size: int = 256, num_layers: int = 2, cell: str = "lstm",
                 dropout: float = 0.0, embedding_dim: int | None = None, dtype=np.float32, seed: int | None = None,
                 weight_drop: float = 0.0, recurrent_dropout: float = 0.0, zoneout=0.0, layer_norm: bool = False):
        seed = resolve_seed(seed)
        embedding_dim = hidden_size if embedding_dim is None else embedding_dim
        dtype = np.dtype(dtype)
        options = regularisers(weight_drop, recurrent_dropout, zoneout, layer_norm)
        super().__init__(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, cell=cell,
                         dropout=float(dropout), embedding_dim=embedding_dim, dtype=dtype.name, seed=seed, **options)
        s = child_seeds(seed, 4)
        # built first: it checks sizes, dropout and dtype with the clearest messages
        rnn = recurrent_layer(cell, embedding_dim, hidden_size, num_layers, dropout, False, dtype, s[1], False, **options)
        self.add("embed", Embedding(vocab_size, embedding_dim, dtype=dtype, seed=s[0]))
        self.add("rnn", rnn)
        self.add("drop", Dropout(dropout, seed=s[3], batch_axis=1))
        self.add("head", Linear(hidden_size, vocab_size, dtype=dtype, seed=s[2]))
        self.vocab_size = vocab_size
        self._embedded = False  # whether the last forward folded the lookup into layer 0 (forward)

    @staticmethod
    def _shapes(vocab_size, hidden_size, num_layers, cell, embedding_dim, layer_norm=False, **_) -> dict[str, tuple]:
        embedding_dim = hidden_size if embedding_dim is None else embedding_dim
        return {"embed.weight": (vocab_size, embedding_dim),
                **recurrent_shapes(cell, embedding_dim, hidden_size, num_layers, False, layer_norm),
                "head.weight": (vocab_size, hidden_size), "head.bias": (vocab_size,)}

    def forward(self, ids, state=None):
        """ids: (T, B) ints in [0, vocab_size); state: as the recurrent layer's (None for zeros).
        Returns logits: (T, B, V) and the final state."""
        ids = self._to_model(ids)
        if ids.ndim != 2:
            raise ValueError(f"CharRNN takes ids of shape (T, B), got shape {tuple(ids.shape)}")
        weight = self.embed.params["weight"]
        # On the CPU, with fewer characters than positions, the embedding's rows go into the first
        # layer's input projection once (weight @ W_ih^T) and each position looks its row up there.
        self._embedded = isinstance(weight, np.ndarray) and weight.shape[0] < ids.size
        if self._embedded:
            y, state = self.rnn(None, state, embedded=(weight, self.embed.record_ids(ids)))
        else:
            y, state = self.rnn(self.embed(ids), state)
        return self.head(self.drop(y)), state

    def backward(self, dlogits):
        """dlogits: (T, B, V) -> the gradient of the initial state; adds into ``grads``."""
        dx, dstate0 = self.rnn.backward(self.drop.backward(self.head.backward(dlogits)))
        if self._embedded:  # dx is already the gradient of the embedding's table
            self.embed.add_weight_grad(dx)
        else:
            self.embed.backward(dx)
        return dstate0

    def train_step(self, batch) -> dict:
        """batch: ``(x, y)``, each (T, B) ids, y the token after x. Forward from the carried state,
        mean cross-entropy, backward into ``grads``. Returns ``{"loss", "tokens"}``."""
        x, y = batch
        state = self._state
        if state is not None and (state[0] if isinstance(state, tuple) else state).shape[1] != np.shape(x)[1]:
            state = None  # a batch of another width cannot continue these streams
        logits, final = self.forward(x, state)
        loss, dlogits = cross_entropy(logits, self._to_model(y))
        self.backward(dlogits)
        # The next batch starts here; backward never returns a gradient into it (truncated BPTT).
        self._state = final
        return {"loss": loss, "tokens": int(np.prod(np.shape(x)))}

    def evaluate(self, data, batch_size: int = 32, seq_len: int = 128) -> dict:
        """Mean next-character loss over ``data``: token ids (N,) or a StreamBatcher (one full epoch,
        from its start; the batcher itself is not moved). Ids are cut into ``batch_size`` streams read
        ``seq_len`` at a time with the state carried along, in eval mode (no dropout).
        Returns ``{"loss" (nats), "bpc", "perplexity"}``; the training state is left as it was."""
        if isinstance(data, StreamBatcher):
            batcher = copy.copy(data)
            batcher.load_state_dict({**data.state_dict(), "epoch": 0, "batch_in_epoch": 0})
        else:
            ids = np.asarray(to_numpy(data)).reshape(-1)
            if ids.size < 2:
                raise ValueError(f"evaluation needs at least 2 tokens, got {ids.size}; use a larger validation split")
            seq_len = min(seq_len, ids.size - 1)
            batcher = StreamBatcher(ids, max(1, min(batch_size, ids.size // (seq_len + 1))), seq_len)
        was_training = self.training
        self.eval()
        total, count, state = 0.0, 0, None
        try:
            for _ in range(batcher.batches_per_epoch):
                x, y = batcher.next_batch()
                logits, state = self.forward(x, state)
                total += cross_entropy(logits, self._to_model(y), reduction="sum")[0]
                count += y.size
        finally:
            self.train(was_training)
        loss = total / count
        return {"loss": loss, "bpc": bits_per_char(loss), "perplexity": perplexity(loss)}
