"""Models built from the layers: a character language model, a sequence regressor and a classifier.

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
from __future__ import annotations

import copy

import numpy as np

from rnnfast.backend import get_array_module, get_backend, to_device, to_numpy
from rnnfast.checkpoint import CARRY_PREFIX, OPTIM_PREFIX, load_checkpoint
from rnnfast.data import StreamBatcher
from rnnfast.errors import CheckpointError
from rnnfast.layers import Dropout, Embedding, Linear
from rnnfast.losses import cross_entropy, mse
from rnnfast.metrics import accuracy, bits_per_char, mae, perplexity, precision_recall_f1, rmse
from rnnfast.module import Module
from rnnfast.random import uniform
from rnnfast.recurrent import GRU, LSTM, RNN

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def _recurrent(cell, input_size, hidden_size, num_layers, dropout, bidirectional, dtype, seed, batch_first):
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELLS))}, got {cell!r}")
    return CELLS[cell](input_size, hidden_size, num_layers=num_layers, dropout=dropout,
                       bidirectional=bidirectional, dtype=dtype, seed=seed, batch_first=batch_first)


def _child_seeds(seed: int, n: int) -> list[int]:
    """Independent seeds for a model's n parts, all fixed by the model's one seed."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]


def _resolve_seed(seed) -> int:
    """A concrete seed, so config() rebuilds the very same model even when none was given."""
    return int(np.random.default_rng().integers(2**63)) if seed is None else int(seed)


class _Model(Module):
    """What every model shares: its config, its dropout streams, the carried state, device moves."""

    def __init__(self, **config):
        super().__init__()
        self._config = config
        self._state = None  # hidden state carried from one training batch to the next (CharRNN)

    def config(self) -> dict:
        """JSON-able ``{"class": name, **constructor arguments}``; :func:`from_config` rebuilds the model."""
        return {"class": type(self).__name__, **self._config}

    def rng_state(self) -> dict:
        """The position of every dropout stream (JSON-able): all future masks follow from it."""
        return {name: child.rng_state() for name, child in self._children.items() if hasattr(child, "rng_state")}

    def set_rng_state(self, state: dict) -> None:
        for name, child_state in state.items():
            self._children[name].set_rng_state(child_state)

    # -- the state carried across training batches ------------------------------------------------
    def reset_state(self) -> None:
        """Forget the carried hidden state: the next training batch starts from zeros."""
        self._state = None

    def carried_state(self) -> dict:
        """The carried hidden state as NumPy arrays (``{"h": (L*D, B, H)}``, plus ``"c"`` for an LSTM);
        ``{}`` when there is none. A checkpoint stores it so that a resumed run continues exactly."""
        if self._state is None:
            return {}
        parts = self._state if isinstance(self._state, tuple) else (self._state,)
        return {name: np.array(to_numpy(p)) for name, p in zip(("h", "c"), parts)}

    def set_carried_state(self, tensors: dict) -> None:
        """Inverse of :meth:`carried_state`."""
        if not tensors:
            self._state = None
            return
        parts = tuple(to_device(tensors[name], self.device) for name in ("h", "c") if name in tensors)
        self._state = parts if self.rnn.has_cell_state else parts[0]

    def _on_move(self, device: str) -> None:
        if self._state is not None:
            parts = self._state if isinstance(self._state, tuple) else (self._state,)
            moved = tuple(to_device(p, device) for p in parts)
            self._state = moved if isinstance(self._state, tuple) else moved[0]

    def _to_model(self, a, dtype=None):
        """``a`` (NumPy, CuPy or a list) on this model's device, cast to ``dtype`` when given."""
        a = to_device(a if hasattr(a, "shape") else np.asarray(a), self.device)
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"


# -- character language model -------------------------------------------------------------------

def sample_from_logits(logits, u, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """Draw one id per row by the sampling rule of :meth:`CharRNN.sample` (the specification that any
    compiled generator follows).

    logits: (S, V); u: (S,) uniforms in [0, 1) -> ids: (S,) int32. All arithmetic in float64:

    1. ``top_k``: keep the logits >= the k-th largest of the row (ties at the boundary stay).
    2. ``top_p``: with ``e = exp(logit - max)`` over the kept ids, visit them by descending ``e`` (ties
       by ascending id) and keep each while the mass visited before it is ``< top_p * sum(e)``; the
       most likely id always stays.
    3. ``temperature``: weights ``w = exp((logit - max) / temperature)`` on the kept ids, 0 elsewhere.
    4. Inverse CDF: ``c = cumsum(w)`` in id order; the id drawn is the first with ``c > u * c[-1]``.

    ``temperature == 0`` draws the largest logit (the first on ties), i.e. greedy decoding.
    """
    logits = np.asarray(logits, dtype=np.float64)
    num_ids = logits.shape[1]
    keep = np.ones(logits.shape, dtype=bool)
    if top_k is not None and top_k < num_ids:
        kth = -np.partition(-logits, top_k - 1, axis=1)[:, top_k - 1 : top_k]
        keep = logits >= kth
    z = np.where(keep, logits - logits.max(axis=1, keepdims=True), -np.inf)
    if top_p is not None and top_p < 1.0:
        e = np.exp(z)
        order = np.argsort(-e, axis=1, kind="stable")
        sorted_e = np.take_along_axis(e, order, axis=1)
        mass_before = np.cumsum(sorted_e, axis=1) - sorted_e
        in_nucleus = np.zeros_like(keep)
        np.put_along_axis(in_nucleus, order, mass_before < top_p * sorted_e.sum(axis=1, keepdims=True), axis=1)
        keep &= in_nucleus
        z = np.where(keep, z, -np.inf)
    if temperature == 0:
        return z.argmax(axis=1).astype(np.int32)
    c = np.cumsum(np.exp(z / temperature), axis=1)
    return (c > (np.asarray(u, np.float64) * c[:, -1])[:, None]).argmax(axis=1).astype(np.int32)


class CharRNN(_Model):
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
                 dropout: float = 0.0, embedding_dim: int | None = None, dtype=np.float32, seed: int | None = None):
        seed = _resolve_seed(seed)
        embedding_dim = hidden_size if embedding_dim is None else embedding_dim
        dtype = np.dtype(dtype)
        super().__init__(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, cell=cell,
                         dropout=float(dropout), embedding_dim=embedding_dim, dtype=dtype.name, seed=seed)
        s = _child_seeds(seed, 4)
        # built first: it checks sizes, dropout and dtype with the clearest messages
        rnn = _recurrent(cell, embedding_dim, hidden_size, num_layers, dropout, False, dtype, s[1], False)
        self.add("embed", Embedding(vocab_size, embedding_dim, dtype=dtype, seed=s[0]))
        self.add("rnn", rnn)
        self.add("drop", Dropout(dropout, seed=s[3]))
        self.add("head", Linear(hidden_size, vocab_size, dtype=dtype, seed=s[2]))
        self.vocab_size = vocab_size

    def forward(self, ids, state=None):
        """ids: (T, B) ints in [0, vocab_size); state: as the recurrent layer's (None for zeros).
        Returns logits: (T, B, V) and the final state."""
        ids = self._to_model(ids)
        if ids.ndim != 2:
            raise ValueError(f"CharRNN takes ids of shape (T, B), got shape {tuple(ids.shape)}")
        y, state = self.rnn(self.embed(ids), state)
        return self.head(self.drop(y)), state

    def backward(self, dlogits):
        """dlogits: (T, B, V) -> the gradient of the initial state; adds into ``grads``."""
        dx, dstate0 = self.rnn.backward(self.drop.backward(self.head.backward(dlogits)))
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

    def sample(self, prime, length: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, num_samples: int = 1, vocab=None, stream=None,
               compiled: bool | None = None):
        """Generate ``length`` characters after ``prime``, ``num_samples`` at once (the batch).

        ``prime``: a string (needs ``vocab``; an unknown character is a DataError) or ids. Each new
        id is drawn by :func:`sample_from_logits` with the uniforms
        ``rnnfast.random.uniform((num_samples, length), seed, stream=0, dtype=float64)``, so a seed
        gives the same text on the CPU and the GPU. ``stream``, if given, is called with the prime and
        then each new piece as it comes (a string, or a list of one per sample when
        ``num_samples > 1``; ids without ``vocab``); the pieces joined are the returned text.

        ``compiled`` (CPU): True runs the whole loop as one compiled call, compiling it first if this
        dtype's loop is not compiled or cached yet (6-8 s, once); False runs one forward step per id
        through the layers' kernels; None (the default) takes the compiled loop when it is ready or
        when ``num_samples * length`` reaches ``GENERATE_COMPILE_PAYS_AT``, where compiling pays. Both
        give the same ids.

        Returns the prime plus the generated text: a string (a list of ``num_samples`` strings), or
        without ``vocab`` ids: (P + length,) int32 ((num_samples, P + length)).
        """
        if not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"length must be a non-negative integer, got {length!r}")
        if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if isinstance(prime, str):
            if vocab is None:
                raise ValueError("a text prime needs the vocabulary: pass vocab= (a checkpoint's meta has it) or ids")
            prime_ids = vocab.encode(prime)
        else:
            prime_ids = np.asarray(to_numpy(prime)).reshape(-1).astype(np.int32)
        if prime_ids.size == 0:
            raise ValueError("the prime is empty; give at least one character to start from")
        seed = _resolve_seed(seed)
        u = uniform((num_samples, length), seed, stream=0, xp=np, dtype=np.float64)

        def emit(ids):
            if stream is None:
                return
            if vocab is None:
                stream(ids if num_samples > 1 else ids[0])
            else:
                texts = [vocab.decode(row) for row in ids]
                stream(texts if num_samples > 1 else texts[0])

        out = np.empty((num_samples, prime_ids.size + length), dtype=np.int32)
        out[:, : prime_ids.size] = prime_ids
        emit(out[:, : prime_ids.size])
        was_training = self.training
        self.eval()
        try:
            generate = self._compiled_sampler(compiled, num_samples * length)
            if generate is not None:
                self._sample_compiled(generate, prime_ids, u, temperature, top_k, top_p, out, emit,
                                      chunk=length if stream is None else 16)
            else:
                self._sample_stepwise(prime_ids, u, temperature, top_k, top_p, out, emit)
        finally:
            self.train(was_training)
        if vocab is None:
            return out if num_samples > 1 else out[0]
        texts = [vocab.decode(row) for row in out]
        return texts if num_samples > 1 else texts[0]


    def _compiled_sampler(self, compiled, ids):
        """The backend's compiled sampling loop when :meth:`sample` should use it (see ``compiled``), else None."""
        kernels = get_backend(self.head.params["weight"]).kernels
        generate = getattr(kernels, "generate", None)  # only the CPU has one
        if generate is None or compiled is False:
            return None
        if compiled or ids >= kernels.GENERATE_COMPILE_PAYS_AT or self.sampling_compiled:
            return generate
        return None

    @property
    def sampling_compiled(self) -> bool:
        """Whether the CPU's compiled sampling loop for this model's dtype is ready (compiled in this
        process or in Numba's cache); False on a backend without one."""
        kernels = get_backend(self.head.params["weight"]).kernels
        ready = getattr(kernels, "generate_compiled_for", None)
        return ready is not None and ready(self.head.params["weight"].dtype)

    def compile_sampling_in_background(self) -> None:
        """Compile the CPU sampling loop for this model's dtype into Numba's cache in a detached
        process, so that later processes (the next ``rnnfast generate``) find it ready. Does nothing
        on a backend without one."""
        start = getattr(get_backend(self.head.params["weight"]).kernels, "compile_generate_in_background", None)
        if start is not None:
            start(self.head.params["weight"].dtype)

    def _sample_stepwise(self, prime_ids, u, temperature, top_k, top_p, out, emit):
        """The plain path of :meth:`sample` (any device, and the CPU path's specification): one
        forward step and one :func:`sample_from_logits` per id. Fills out[:, P:], emitting each id."""
        num_samples, P = out.shape[0], prime_ids.size
        logits, state = self.forward(np.repeat(prime_ids[:, None], num_samples, axis=1))
        for t in range(u.shape[1]):
            next_ids = sample_from_logits(to_numpy(logits[-1]), u[:, t], temperature, top_k, top_p)
            out[:, P + t] = next_ids
            emit(next_ids[:, None])
            if t + 1 < u.shape[1]:
                logits, state = self.forward(next_ids[None, :], state)

    def _sample_compiled(self, generate, prime_ids, u, temperature, top_k, top_p, out, emit, chunk):
        """:meth:`sample` on a backend with a compiled sampling loop (``generate``, the CPU's
        :func:`rnnfast.kernels.cpu.generate.generate`: same rule and uniforms as the step loop), one
        call per ``chunk`` ids so a stream still sees text as it comes. Fills out[:, P:], emitting each chunk."""
        rnn = self.rnn
        cell = rnn.spec.name
        weights = [rnn.direction_weights(layer) for layer in range(rnn.num_layers)]
        num_samples, P = out.shape[0], prime_ids.size
        state = rnn.zero_state(num_samples)
        feed = np.repeat(prime_ids[None, :], num_samples, axis=0)
        for start in range(0, u.shape[1], max(chunk, 1)):
            ids, state = generate(cell, weights, self.embed.params["weight"], self.head.params["weight"],
                                  self.head.params["bias"], state, feed, u[:, start:start + chunk],
                                  temperature, top_k, top_p)
            out[:, P + start:P + start + ids.shape[1]] = ids
            emit(ids)
            feed = ids[:, -1:]


# -- many-to-one and many-to-many sequence models -----------------------------------------------

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


class _SequenceModel(_Model):
    """Shared by SeqRegressor and SeqClassifier: batch-first sequences, optional lengths, an optional
    embedding, the recurrent layer, and a head on the last step's features or on every step."""

    many_to_many = False

    def _build(self, cell, input_size, hidden_size, num_layers, bidirectional, dropout, out_features, dtype, seed,
               vocab_size=None):
        s = _child_seeds(seed, 4)
        rnn = _recurrent(cell, input_size, hidden_size, num_layers, dropout, bidirectional, dtype, s[1], True)
        if vocab_size is not None:
            self.add("embed", Embedding(vocab_size, input_size, dtype=dtype, seed=s[0]))
        self.add("rnn", rnn)
        self.add("drop", Dropout(dropout, seed=s[3]))
        self.add("head", Linear(rnn.num_directions * hidden_size, out_features, dtype=dtype, seed=s[2]))
        self.hidden_size, self.dtype = hidden_size, np.dtype(dtype)
        self._cache = None

    def _inputs(self, x, lengths):
        """The recurrent layer's input (B, T, I) and lengths (B,) on the model's device (or None)."""
        raise NotImplementedError

    def forward(self, x, lengths=None):
        """x: (B, T, ...) batch-first; lengths: (B,) ints in 1..T or None (all T).
        Returns (B, out) from the last valid step, or (B, T, out) with ``many_to_many``."""
        x, lengths = self._inputs(x, lengths)
        y, _ = self.rnn(x, None, lengths)
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
                 dtype=np.float32, seed: int | None = None):
        seed = _resolve_seed(seed)
        dtype = np.dtype(dtype)
        super().__init__(input_size=input_size, hidden_size=hidden_size, output_size=output_size,
                         num_layers=num_layers, cell=cell, bidirectional=bool(bidirectional), dropout=float(dropout),
                         many_to_many=bool(many_to_many), dtype=dtype.name, seed=seed)
        self.input_size, self.output_size, self.many_to_many = input_size, output_size, bool(many_to_many)
        self._build(cell, input_size, hidden_size, num_layers, bidirectional, dropout, output_size, dtype, seed)

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
                 seed: int | None = None):
        if (vocab_size is None) == (input_size is None):
            raise ValueError("give vocab_size (token ids in) or input_size (feature vectors in), exactly one of them")
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes!r}")
        seed = _resolve_seed(seed)
        dtype = np.dtype(dtype)
        if vocab_size is not None:
            embedding_dim = hidden_size if embedding_dim is None else embedding_dim
        super().__init__(vocab_size=vocab_size, num_classes=num_classes, hidden_size=hidden_size,
                         num_layers=num_layers, cell=cell, bidirectional=bool(bidirectional), dropout=float(dropout),
                         embedding_dim=embedding_dim, input_size=input_size, dtype=dtype.name, seed=seed)
        self.num_classes = num_classes
        rnn_input = embedding_dim if vocab_size is not None else input_size
        self._build(cell, rnn_input, hidden_size, num_layers, bidirectional, dropout, num_classes, dtype, seed,
                    vocab_size=vocab_size)

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

    def evaluate(self, data, batch_size: int = 256) -> dict:
        """data: ``(x, labels)`` or ``(x, lengths, labels)``. Returns ``{"loss", "accuracy",
        "precision", "recall", "f1"}`` (macro averages over the classes present)."""
        x, lengths, labels = _unpack(data)
        logits = self._predict_raw(x, lengths, batch_size)
        labels = self._to_model(labels)
        precision, recall, f1 = precision_recall_f1(logits, labels, num_classes=self.num_classes)
        return {"loss": cross_entropy(logits, labels)[0], "accuracy": accuracy(logits, labels),
                "precision": precision, "recall": recall, "f1": f1}


# -- configs and checkpoints --------------------------------------------------------------------

MODELS = {cls.__name__: cls for cls in (CharRNN, SeqRegressor, SeqClassifier)}


def from_config(config: dict):
    """The model that ``config`` (from a model's :meth:`config`) describes, freshly initialised."""
    config = dict(config)
    name = config.pop("class", None)
    if name not in MODELS:
        raise ValueError(f"unknown model class {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](**config)


def load_weights(model, tensors: dict, source: str = "the checkpoint") -> None:
    """Copy a checkpoint's parameters into ``model``. Names and shapes must match exactly (the
    optimizer's and the carried state's tensors are skipped); otherwise a one-line CheckpointError."""
    own = model.params
    theirs = {k: v for k, v in tensors.items() if not k.startswith((OPTIM_PREFIX, CARRY_PREFIX))}
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    wrong = [k for k in own if k in theirs and tuple(theirs[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        what = (f"lacks {missing[:3]}" if missing else f"has unexpected {unexpected[:3]}" if unexpected else
                f"has {wrong[0]} of shape {tuple(theirs[wrong[0]].shape)}, not {tuple(own[wrong[0]].shape)}")
        raise CheckpointError(f"{source} does not fit this {type(model).__name__}: it {what}; "
                              "it is from another model, so build the model from the checkpoint (load_model)")
    model.load_state_dict({k: theirs[k] for k in own})


def load_model(path):
    """A model from a checkpoint written by :class:`rnnfast.Trainer`: ``(model, meta)``.

    The model is rebuilt from ``meta["model"]``, gets the saved parameters and dropout streams, and
    is in eval mode on the CPU (``model.to("gpu")`` moves it). ``meta`` holds the rest (the
    vocabulary under ``"vocab"`` when the trainer was given one). A checkpoint of another kind or
    version is a one-line CheckpointError.
    """
    tensors, meta = load_checkpoint(path)
    config = meta.get("model")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds no model description; use a checkpoint written by rnnfast's trainer")
    try:
        model = from_config(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} describes a model this rnnfast cannot build ({exc}); "
                              "it is from another version of rnnfast, so use that version or retrain") from None
    load_weights(model, tensors, str(path))
    if "rng" in meta:
        model.set_rng_state(meta["rng"])
    return model.eval(), meta
