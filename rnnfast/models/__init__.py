"""Models built from the layers: a character language model, a sequence regressor and a classifier.

- :mod:`~rnnfast.models.base`: what every model shares (config, seeds, dropout streams, carried state).
- :mod:`~rnnfast.models.char`: :class:`CharRNN`; :mod:`~rnnfast.models.sampling`: its sampling rule
  (:func:`sample_from_logits`) and the step-by-step and compiled sampling paths.
- :mod:`~rnnfast.models.sequence`: :class:`SeqRegressor` and :class:`SeqClassifier`.
- :mod:`~rnnfast.models.seq2seq`: :class:`Seq2Seq`, an encoder-decoder with attention, and
  :class:`PairSet`, translation pairs with how to score their decodings.
- Rebuilding a model from its config or a checkpoint (:func:`from_config`, :func:`load_model`,
  :func:`load_weights`) is checkpoint I/O, in :mod:`rnnfast.checkpoint`; the names are here too.

Each is a :class:`~rnnfast.module.Module` with hand-written ``forward``/``backward``, a
``train_step(batch)`` that runs forward, loss and backward (adding into ``grads``; the caller zeroes
them and steps the optimizer, as :class:`rnnfast.Trainer` does), an ``evaluate(data)`` returning a
dict of metrics, ``config()`` (JSON-able; :func:`from_config` rebuilds the model) and
``rng_state()``/``set_rng_state()`` covering every dropout stream, so a resumed run is exact.

    >>> import numpy as np, rnnfast as rf
    >>> model = rf.models.CharRNN(vocab_size=5, hidden_size=8, num_layers=1, seed=0)
    >>> x = np.array([[0, 1], [2, 3], [4, 0]])                  # (T, B) ids
    >>> logits, state = model(x)                                # (T, B, V), (h, c)
    >>> out = model.train_step((x, np.roll(x, -1, axis=0)))     # grads now in model.grads
    >>> logits.shape, sorted(out)
    ((3, 2, 5), ['loss', 'tokens'])

Layouts: :class:`CharRNN` is time-major (``(T, B)`` ids, as :class:`rnnfast.data.StreamBatcher`
yields them); :class:`SeqRegressor` and :class:`SeqClassifier` are batch-first (``(B, T, ...)``,
as :func:`rnnfast.data.forecast_windows` and datasets of examples give them). Inputs may be NumPy or
CuPy; they are moved to the model's device (``model.to("gpu")``).
"""

from rnnfast.models.base import CELLS
from rnnfast.models.char import CharRNN
from rnnfast.models.sampling import sample_from_logits
from rnnfast.models.seq2seq import PairSet, Seq2Seq
from rnnfast.models.sequence import SeqClassifier, SeqRegressor

# rnnfast.checkpoint builds models from configs, so it imports this package; the loaders it owns are
# found here on first use, since importing them at the top would make the two import each other.
_FROM_CHECKPOINT = ("MODELS", "from_config", "load_weights", "load_model")

__all__ = ["CELLS", "CharRNN", "PairSet", "Seq2Seq", "SeqClassifier", "SeqRegressor", "sample_from_logits", *_FROM_CHECKPOINT]


def __getattr__(name):
    if name in _FROM_CHECKPOINT:
        from rnnfast import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_FROM_CHECKPOINT))
