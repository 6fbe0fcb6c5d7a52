"""Sequence models on batch-first input: :class:`SeqRegressor` (forecasting, many-to-one or
many-to-many) and :class:`SeqClassifier` (many-to-one labels of token ids or feature vectors), with
optional ``lengths`` for padded batches.
"""
from __future__ import annotations

import numpy as np

from rnnfast.backend import get_array_module, to_numpy
from rnnfast.layers import Dropout, Embedding, Linear
from rnnfast.losses import cross_entropy, mse, softmax
from rnnfast.metrics import accuracy, mae, precision_recall_f1, rmse
from rnnfast.models.base import Model, child_seeds, recurrent_layer, recurrent_shapes, regularisers, resolve_seed

def _unpack(batch):
    """``(x, y)`` or ``(x, lengths, y)`` -> x, lengths (or None), y."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("a batch is a tuple (x, y) or (x, lengths, y)")
    return (batch[0], None, batch[1]) if len(batch) == 2 else tuple(batch)


def _last_step(y, lengths, hidden_size: int):
    """Many-to-one features. y: (B, T, D*H) batch-first; lengths: (B,) on y's device, or None.
    Returns (B, D*H): the forward direction at each sequence's last valid step and, when
    bidirectional, the backward direction at step 0, where it has read the whole sequence."""
    xp = get_array_module(y)
    B, T, _ = y.shape
    last = xp.full(B, T - 1) if lengths is None else lengths - 1
    features = y[xp.arange(B), last]  # fancy indexing copies, so y is left as it was
    features[:, hidden_size:] = y[:, 0, hidden_size:]
    return features


def _dlast_step(dfeatures, lengths, y_shape, hidden_size: int):
    """dfeatures: (B, D*H) -> dy: (B, T, D*H), the gradient of :func:`_last_step`'s y."""
    xp = get_array_module(dfeatures)
    B, T, _ = y_shape
    last = xp.full(B, T - 1) if lengths is None else lengths - 1
    dy = xp.zeros(y_shape, dfeatures.dtype)
    dy[xp.arange(B), last, :hidden_size] = dfeatures[:, :hidden_size]
    dy[:, 0, hidden_size:] = dfeatures[:, hidden_size:]
    return dy


class _SequenceModel(Model):
    """Shared by SeqRegressor and SeqClassifier: batch-first sequences, optional lengths, an optional
    embedding, the recurrent layer, and a head on the last step's features or on every step."""

    many_to_many = False

    def _build(self, cell, input_size, hidden_size, num_layers, bidirectional, dropout, out_features, dtype, seed,
               vocab_size=None, **options):
        s = child_seeds(seed, 4)
        rnn = recurrent_layer(cell, input_size, hidden_size, num_layers, dropout, bidirectional, dtype, s[1], True,
                              **options)
        if vocab_size is not None:
            self.add("embed", Embedding(vocab_size, input_size, dtype=dtype, seed=s[0]))
        self.add("rnn", rnn)
        self.add("drop", Dropout(dropout, seed=s[3]))
        self.add("head", Linear(rnn.num_directions * hidden_size, out_features, dtype=dtype, seed=s[2]))
        self.hidden_size, self.dtype = hidden_size, np.dtype(dtype)
        self._cache = None

    @staticmethod
    def _built_shapes(cell, input_size, hidden_size, num_layers, bidirectional, out_features,
                      vocab_size=None, layer_norm=False) -> dict[str, tuple]:
        """The shapes of the parameters :meth:`_build` makes from the same arguments."""
        embed = {} if vocab_size is None else {"embed.weight": (vocab_size, input_size)}
        D = 2 if bidirectional else 1
        return {**embed, **recurrent_shapes(cell, input_size, hidden_size, num_layers, bidirectional, layer_norm),
                "head.weight": (out_features, D * hidden_size), "head.bias": (out_features,)}

    def _inputs(self, x, lengths):
        """The recurrent layer's input (B, T, I) and lengths (B,) on the model's device (or None)."""
        raise NotImplementedError

    def forward(self, x, lengths=None, state=None):
        """x: (B, T, ...) batch-first; lengths: (B,) ints in 1..T or None (all T); state: the
        recurrent layer's initial state (h0 (L*D, B, H), or (h0, c0) for an LSTM; None for zeros).
        Returns (B, out) from the last valid step, or (B, T, out) with ``many_to_many``."""
        x, lengths = self._inputs(x, lengths)
        y, _ = self.rnn(x, state, lengths)
        self._cache = (lengths, y.shape)
        features = y if self.many_to_many else _last_step(y, lengths, self.hidden_size)
        return self.head(self.drop(features))

    def backward(self, dout):
        """dout: like forward's output -> dx: (B, T, I) (None for token ids); adds into ``grads``."""
        if self._cache is None:
            raise RuntimeError("backward() called before forward(); run the model on a batch first")
        lengths, y_shape = self._cache
        dfeatures = self.drop.backward(self.head.backward(dout))
        dy = dfeatures if self.many_to_many else _dlast_step(dfeatures, lengths, y_shape, self.hidden_size)
        dx, _ = self.rnn.backward(dy)
        return self.embed.backward(dx) if "embed" in self._children else dx

    def _predict_raw(self, x, lengths, batch_size: int):
        """forward over ``x`` in chunks of ``batch_size``, in eval mode; outputs concatenated."""
        was_training = self.training
        self.eval()
        try:
            outs = [self.forward(x[i : i + batch_size], None if lengths is None else lengths[i : i + batch_size])
                    for i in range(0, len(x), batch_size)]
        finally:
            self.train(was_training)
        if not outs:
            raise ValueError("no examples to predict; pass at least one sequence")
        return get_array_module(outs[0]).concatenate(outs)


class SeqRegressor(_SequenceModel):
    """Forecasting: x (B, T, input_size) -> a recurrent layer -> Dropout -> Linear(output_size).

    Many-to-one (default): predicts (B, output_size) from the last valid step (with
    ``bidirectional``, the forward half at the last step and the backward half at step 0).
    ``many_to_many``: predicts (B, T, output_size), one per step; steps past a length are not scored.
    With ``input_size == 1``, x may be (B, T) and targets (B,) or (B, T). Loss: mean squared error.
    """

    def __init__(self, input_size: int, hidden_size: int = 64, output_size: int = 1, num_layers: int = 1,
                 cell: str = "lstm", bidirectional: bool = False, dropout: float = 0.0, many_to_many: bool = False,
                 dtype=np.float32, seed: int | None = None, weight_drop: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout=0.0, layer_norm: bool = False):
        seed = resolve_seed(seed)
        dtype = np.dtype(dtype)
        options = regularisers(weight_drop, recurrent_dropout, zoneout, layer_norm)
        super().__init__(input_size=input_size, hidden_size=hidden_size, output_size=output_size,
                         num_layers=num_layers, cell=cell, bidirectional=bool(bidirectional), dropout=float(dropout),
                         many_to_many=bool(many_to_many), dtype=dtype.name, seed=seed, **options)
        self.input_size, self.output_size, self.many_to_many = input_size, output_size, bool(many_to_many)
        self._build(cell, input_size, hidden_size, num_layers, bidirectional, dropout, output_size, dtype, seed,
                    **options)

    @classmethod
    def _shapes(cls, input_size, hidden_size, output_size, num_layers, cell, bidirectional, layer_norm=False,
                **_) -> dict[str, tuple]:
        return cls._built_shapes(cell, input_size, hidden_size, num_layers, bidirectional, output_size,
                                 layer_norm=layer_norm)

    def _inputs(self, x, lengths):
        x = self._to_model(x, self.dtype)
        if x.ndim == 2 and self.input_size == 1:
            x = x[:, :, None]
        if x.ndim != 3:
            raise ValueError(f"SeqRegressor takes x of shape (B, T, {self.input_size}), got {tuple(x.shape)}")
        return x, None if lengths is None else self._to_model(lengths)

    def _targets(self, y, shape):
        y = self._to_model(y, self.dtype)
        if y.shape != shape and self.output_size == 1 and y.shape == shape[:-1]:
            y = y[..., None]
        if y.shape != shape:
            raise ValueError(f"targets have shape {tuple(y.shape)}, expected {shape}")
        return y

    def _step_mask(self, lengths, T):
        """(B, T, 1) True at the valid steps of a many-to-many batch; None when every step counts."""
        if lengths is None or not self.many_to_many:
            return None
        xp = get_array_module(lengths)
        return (xp.arange(T)[None, :] < lengths[:, None])[:, :, None]

    def train_step(self, batch) -> dict:
        """batch: ``(x, y)`` or ``(x, lengths, y)``. Mean squared error over the scored outputs,
        backward into ``grads``. Returns ``{"loss", "tokens"}`` (tokens: time steps read)."""
        x, lengths, y = _unpack(batch)
        pred = self.forward(x, lengths)
        y = self._targets(y, pred.shape)
        mask = self._step_mask(self._cache[0], pred.shape[1])
        if mask is None:
            loss, dpred = mse(pred, y)
        else:
            # padded steps get pred == target: no loss and no gradient there; mean over the rest
            loss, dpred = mse(get_array_module(pred).where(mask, pred, y), y, reduction="sum")
            count = int(mask.sum()) * self.output_size
            loss, dpred = loss / count, dpred / count
        self.backward(dpred)
        return {"loss": loss, "tokens": int(np.prod(np.shape(x)[:2]))}

    def predict(self, x, lengths=None, batch_size: int = 256):
        """Predictions (B, output_size), or (B, T, output_size) many-to-many, on the model's device."""
        return self._predict_raw(x, lengths, batch_size)

    def evaluate(self, data, batch_size: int = 256) -> dict:
        """data: ``(x, y)`` or ``(x, lengths, y)``. Returns ``{"loss" (MSE), "mae", "rmse"}`` over the
        scored outputs, in the units of y (inverse-transform first to report original units)."""
        x, lengths, y = _unpack(data)
        pred = self.predict(x, lengths, batch_size)
        y = self._targets(y, pred.shape)
        mask = self._step_mask(None if lengths is None else self._to_model(lengths), pred.shape[1])
        if mask is not None:
            full = get_array_module(mask).broadcast_to(mask, pred.shape)
            pred, y = pred[full], y[full]
        return {"loss": mse(pred, y)[0], "mae": mae(pred, y), "rmse": rmse(pred, y)}


class SeqClassifier(_SequenceModel):
    """Many-to-one classification: token ids (B, T) -> Embedding, or features (B, T, input_size),
    -> a recurrent layer -> Dropout -> Linear(num_classes) on the last valid step's features
    (with ``bidirectional``, the forward half at the last step and the backward half at step 0).

    Give ``vocab_size`` for token ids (``embedding_dim`` defaults to ``hidden_size``) or
    ``input_size`` for feature vectors. Padded batches pass ``lengths``; each batch is cut to its
    longest sequence. Loss: softmax cross-entropy.
    """

    def __init__(self, vocab_size: int | None, num_classes: int, hidden_size: int = 128, num_layers: int = 1,
                 cell: str = "lstm", bidirectional: bool = False, dropout: float = 0.0,
                 embedding_dim: int | None = None, input_size: int | None = None, dtype=np.float32,
                 seed: int | None = None, weight_drop: float = 0.0, recurrent_dropout: float = 0.0, zoneout=0.0,
                 layer_norm: bool = False):
        if (vocab_size is None) == (input_size is None):
            raise ValueError("give vocab_size (token ids in) or input_size (feature vectors in), exactly one of them")
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes!r}")
        seed = resolve_seed(seed)
        dtype = np.dtype(dtype)
        if vocab_size is not None:
            embedding_dim = hidden_size if embedding_dim is None else embedding_dim
        options = regularisers(weight_drop, recurrent_dropout, zoneout, layer_norm)
        super().__init__(vocab_size=vocab_size, num_classes=num_classes, hidden_size=hidden_size,
                         num_layers=num_layers, cell=cell, bidirectional=bool(bidirectional), dropout=float(dropout),
                         embedding_dim=embedding_dim, input_size=input_size, dtype=dtype.name, seed=seed, **options)
        self.num_classes = num_classes
        rnn_input = embedding_dim if vocab_size is not None else input_size
        self._build(cell, rnn_input, hidden_size, num_layers, bidirectional, dropout, num_classes, dtype, seed,
                    vocab_size=vocab_size, **options)

    @classmethod
    def _shapes(cls, vocab_size, num_classes, hidden_size, num_layers, cell, bidirectional, embedding_dim, input_size,
                layer_norm=False, **_) -> dict[str, tuple]:
        if vocab_size is not None:
            input_size = hidden_size if embedding_dim is None else embedding_dim
        return cls._built_shapes(cell, input_size, hidden_size, num_layers, bidirectional, num_classes, vocab_size,
                                 layer_norm)

    def _inputs(self, x, lengths):
        embedded = "embed" in self._children
        x = self._to_model(x) if embedded else self._to_model(x, self.dtype)
        if x.ndim != (2 if embedded else 3):
            layout = "ids (B, T)" if embedded else f"features (B, T, {self.rnn.input_size})"
            raise ValueError(f"SeqClassifier takes {layout}, got shape {tuple(x.shape)}")
        if lengths is not None:
            lengths = self._to_model(lengths)
            # padding past the longest sequence of the batch would only be run to be thrown away
            x = x[:, : int(lengths.max())]
        return (self.embed(x) if embedded else x), lengths

    def train_step(self, batch) -> dict:
        """batch: ``(x, labels)`` or ``(x, lengths, labels)``, labels (B,) ints in [0, num_classes).
        Mean cross-entropy, backward into ``grads``. Returns ``{"loss", "tokens"}``."""
        x, lengths, labels = _unpack(batch)
        logits = self.forward(x, lengths)
        loss, dlogits = cross_entropy(logits, self._to_model(labels))
        self.backward(dlogits)
        tokens = int(np.prod(np.shape(x)[:2])) if lengths is None else int(to_numpy(lengths).sum())
        return {"loss": loss, "tokens": tokens}

    def predict(self, x, lengths=None, batch_size: int = 256):
        """Class ids (B,) on the model's device (``forward`` gives the logits)."""
        return self._predict_raw(x, lengths, batch_size).argmax(axis=-1)

    def predict_proba(self, x, lengths=None, batch_size: int = 256):
        """Class probabilities (B, num_classes) on the model's device, the softmax of the logits."""
        return softmax(self._predict_raw(x, lengths, batch_size))

    def evaluate(self, data, batch_size: int = 256) -> dict:
        """data: ``(x, labels)`` or ``(x, lengths, labels)``. Returns ``{"loss", "accuracy",
        "precision", "recall", "f1"}`` (macro averages over the classes present)."""
        x, lengths, labels = _unpack(data)
        logits = self._predict_raw(x, lengths, batch_size)
        labels = self._to_model(labels)
        precision, recall, f1 = precision_recall_f1(logits, labels, num_classes=self.num_classes)
        return {"loss": cross_entropy(logits, labels)[0], "accuracy": accuracy(logits, labels),
                "precision": precision, "recall": recall, "f1": f1}

