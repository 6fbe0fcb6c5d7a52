"""Feed-forward layers around the recurrent core: Embedding, Linear, Dropout.

Same contract as every module (DESIGN.md, "Contracts"): ``forward`` keeps what ``backward`` needs,
``backward(dy)`` adds parameter gradients into ``grads`` and returns the input gradient. NumPy in
runs on the CPU, CuPy in runs on the GPU; nothing here tests array types.

    >>> import numpy as np, rnnfast as rf
    >>> emb, head = rf.Embedding(10, 4, seed=0), rf.Linear(4, 10, seed=1)
    >>> logits = head(emb(np.array([[1, 2], [3, 4]])))
    >>> logits.shape
    (2, 2, 10)
"""
from __future__ import annotations

import numpy as np

from rnnfast.backend import get_array_module, get_backend
from rnnfast.module import Module
from rnnfast.random import dropout_mask


def _require_forward(cache, layer: str):
    if cache is None:
        raise RuntimeError(f"{layer}.backward called before forward; run forward on this batch first")
    return cache


class Embedding(Module):
    """A lookup table: ``y[..., :] = weight[ids[...], :]``. Init N(0, 1), as torch.nn.Embedding.

    Parameters: ``weight: (num_embeddings, embedding_dim)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=np.float32, seed: int | None = None):
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(
                f"Embedding needs num_embeddings >= 1 and embedding_dim >= 1, got {num_embeddings} and {embedding_dim}"
            )
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        rng = np.random.default_rng(seed)
        self.add_param("weight", rng.standard_normal((num_embeddings, embedding_dim)).astype(dtype))
        self._ids = None

    def forward(self, ids):
        """ids: (...) integers in [0, num_embeddings) -> y: (..., embedding_dim)."""
        weight = self._params["weight"]
        xp = get_array_module(ids, weight)
        # take, not weight[ids]: a third faster (0.06 against 0.09 ms for 2048 x 256 float32, 1.6
        # against 2.4 ms for 6400 x 512) as it skips fancy indexing's general iterator
        return xp.take(weight, self.record_ids(ids), axis=0)

    def record_ids(self, ids):
        """Checks ids as :meth:`forward` does and keeps them for :meth:`backward`, without the
        lookup: for a caller that folds the lookup into its next product (CharRNN: a lookup in
        weight @ W_ih^T) and hands the table's gradient to :meth:`add_weight_grad`. Returns ids
        as an array of the weight's module."""
        weight = self._params["weight"]
        xp = get_array_module(ids, weight)
        ids = xp.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"Embedding takes integer ids, got dtype {ids.dtype}; encode tokens as integers first")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise ValueError(
                f"Embedding ids must lie in [0, {self.num_embeddings}), got values in "
                f"[{int(ids.min())}, {int(ids.max())}]; check the vocabulary size"
            )
        self._ids = ids
        return ids

    def add_weight_grad(self, dweight):
        """Adds dweight: (num_embeddings, embedding_dim), a gradient of the whole table, into
        grads["weight"] (see :meth:`record_ids`)."""
        self._grads["weight"] += dweight

    def backward(self, dy):
        """dy: (..., embedding_dim) -> None (ids have no gradient); adds into grads["weight"]."""
        ids = _require_forward(self._ids, "Embedding")
        if dy.shape != ids.shape + (self.embedding_dim,):
            raise ValueError(f"Embedding.backward: dy has shape {dy.shape}, expected {ids.shape + (self.embedding_dim,)}")
        dweight = self._grads["weight"]
        # a scatter-add that sums repeated ids (plain fancy-index += would keep only one of them)
        get_backend(dy, dweight).kernels.embedding_backward(dweight, ids, dy)
        return None


class Linear(Module):
    """``y = x @ weight.T + bias`` over any leading dims. Init U(-1/sqrt(in), 1/sqrt(in)), as torch.nn.Linear.

    Parameters: ``weight: (out_features, in_features)``, ``bias: (out_features,)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32,
                 seed: int | None = None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear needs in_features >= 1 and out_features >= 1, got {in_features} and {out_features}")
        self.in_features, self.out_features = in_features, out_features
        rng = np.random.default_rng(seed)
        bound = 1.0 / np.sqrt(in_features)
        self.add_param("weight", rng.uniform(-bound, bound, (out_features, in_features)).astype(dtype))
        if bias:
            self.add_param("bias", rng.uniform(-bound, bound, (out_features,)).astype(dtype))
        self._x = None

    def forward(self, x):
        """x: (..., in_features) -> y: (..., out_features)."""
        get_backend(x, self._params["weight"])  # a NumPy/CuPy mix is a clear TypeError here
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects input (..., {self.in_features}), got shape {tuple(x.shape)}")
        self._x = x
        return self.apply(x)

    def backward(self, dy):
        """dy: (..., out_features) -> dx: (..., in_features); adds into grads["weight"], grads["bias"]."""
        x = _require_forward(self._x, "Linear")
        if dy.shape != x.shape[:-1] + (self.out_features,):
            raise ValueError(f"Linear.backward: dy has shape {dy.shape}, expected {x.shape[:-1] + (self.out_features,)}")
        return self.apply_backward(x, dy)

    def apply(self, x):
        """:meth:`forward` without keeping x: for a caller that applies the layer many times before
        their backward passes (a decoder's steps) and keeps each x itself for :meth:`apply_backward`."""
        weight = self._params["weight"]
        y = get_backend(x, weight).kernels.matmul(x.reshape(-1, self.in_features), weight.T)
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        if "bias" in self._params:
            y += self._params["bias"]
        return y

    def apply_backward(self, x, dy):
        """The backward of :meth:`apply` at x for dy: adds into ``grads``, returns dx: (..., in_features)."""
        # flatten the leading dims so each parameter gradient is one GEMM
        dy2 = dy.reshape(-1, self.out_features)
        matmul = get_backend(dy, x).kernels.matmul
        self._grads["weight"] += matmul(dy2.T, x.reshape(-1, self.in_features))
        if "bias" in self._grads:
            self._grads["bias"] += dy2.sum(axis=0)
        return matmul(dy2, self._params["weight"]).reshape(x.shape)


class Dropout(Module):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

    Identity in eval mode or with p=0. Masks come from :func:`rnnfast.random.dropout_mask` with
    ``stream`` = the number of training calls so far, so a run is reproducible on CPU and GPU, and
    ``rng_state()``/``set_rng_state()`` carry that counter through a checkpoint so a resumed run
    draws the same masks. Give each Dropout in a model its own ``seed``. ``batch_axis``: the input's
    batch axis, along which a data-parallel process draws its rows of the global batch's mask.
    """

    def __init__(self, p: float, seed: int = 0, batch_axis: int = 0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1), got {p}")
        self.p, self.seed, self.batch_axis = float(p), int(seed), int(batch_axis)
        self._calls = 0
        self._mask = None

    def forward(self, x):
        """x: (...) -> y: (...)."""
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        xp = get_array_module(x)
        self._mask = dropout_mask(x.shape, self.p, self.seed, self._calls, xp, x.dtype.type,
                                  self.draw_rows(self.batch_axis))
        self._calls += 1
        return x * self._mask

    def backward(self, dy):
        """dy: (...) -> dx: (...)."""
        return dy if self._mask is None else dy * self._mask

    def rng_state(self) -> dict:
        """JSON-able state that fixes every future mask."""
        return {"seed": self.seed, "calls": self._calls}

    def set_rng_state(self, state: dict) -> None:
        self.seed, self._calls = int(state["seed"]), int(state["calls"])
