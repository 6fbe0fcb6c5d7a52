"""Recurrent layers: ``RNN``, ``LSTM``, ``GRU`` and their single-step cells, PyTorch-compatible.

Parameters carry PyTorch's names, shapes, gate orders and init (``weight_ih_l{k}``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, suffix ``_reverse``; every weight and bias
``U(-1/sqrt(H), 1/sqrt(H))``), so ``state_dict()`` loads into ``torch.nn.LSTM`` and back.

    >>> import numpy as np, rnnfast as rf
    >>> gru = rf.GRU(4, 8, num_layers=2, bidirectional=True, seed=0)
    >>> x = np.ones((6, 3, 4), np.float32)                      # (T, B, I)
    >>> y, h = gru(x, lengths=np.array([6, 4, 1]))              # y: (T, B, 2H), h: (2*2, B, H)
    >>> dx, dh0 = gru.backward(np.ones_like(y))                 # gradients land in gru.grads
    >>> y.shape, h.shape, dx.shape
    ((6, 3, 16), (4, 3, 8), (6, 3, 4))

A layer owns the time loop (in the kernels), the stacking of layers, both directions, the
dropout between layers, the weight drop on ``W_hh`` and the draws of the cell options; the kernels (``rnnfast.kernels.<backend>.<cell>``) do one layer and one
direction. The backward direction runs over each sequence reversed within its own length.
``forward`` keeps the caches of its last call and ``backward`` runs BPTT through them.

``weight_drop=p`` is DropConnect on the recurrent weights, as AWD-LSTM (Merity et al. 2017) does it:
in training mode each forward call draws one mask per layer and direction over ``W_hh`` (zero with
probability p, else ``1/(1-p)``, inverted-dropout scaling), shared by the batch and every time
step; the kernels run on ``W_hh * mask`` and backward masks the gradient the same way,
``dW_hh += mask * dW_hh_eff``. Eval mode uses the plain weights. The masks come from the same
counter-based streams as the dropout (``rng_state``), so CPU and GPU draw the same ones.

``recurrent_dropout=p`` is variational dropout on the state (Gal & Ghahramani 2016; Keras's
``recurrent_dropout``): in training each forward call draws one mask per layer and direction over
(B, H), on ``h_{t-1}`` where it enters the recurrent product ``W_hh h``, the same at every time step,
scaled by ``1/(1-p)``. ``zoneout=p`` (Krueger et al. 2016), or ``(p_h, p_c)`` for the LSTM: at
each step each unit keeps its previous state with probability p, ``h_t = d*h_{t-1} + (1-d)*h'``,
with fresh draws per unit, step, sequence, layer and direction; eval mode uses the expectation
``p*h_{t-1} + (1-p)*h'``, as haste does. The LSTM's ``tanh`` reads the cell's own ``c'``. Both run
inside the kernels (the cell options of kernels/README.md), on both backends, with masks from the
same streams; p = 0 leaves the layer as it is, bit for bit.

``layer_norm=True`` (Ba et al. 2016, as haste's LayerNormLSTM/LayerNormGRU do it) normalises the
input pre-activations ``W_ih x`` and the recurrent ones ``W_hh h`` separately, each over its G*H
entries with its own gain and bias, before ``b_ih`` and ``b_hh`` are added; the LSTM also
normalises ``c'`` (over H) where it enters the output ``tanh``, ``h' = o * tanh(LN_c(c'))``, ``c``
itself staying ``c'``. Epsilon 1e-5, as torch.nn.LayerNorm. Its parameters, gains 1 and biases 0
at init: ``layernorm_ih_l{k}.weight``, ``layernorm_ih_l{k}.bias`` (G*H,), ``layernorm_hh_l{k}.weight``,
``.bias`` (G*H,) and, for the LSTM, ``layernorm_c_l{k}.weight``, ``.bias`` (H,); suffix ``_reverse``
on the ``layernorm_*`` part for the backward direction (``layernorm_ih_l0_reverse.weight``).
``layer_norm=False`` is the plain layer, bit for bit.
"""
from __future__ import annotations

import numpy as np

from rnnfast.backend import get_backend, to_numpy
from rnnfast.kernels.cells import CELLS, cell_named
from rnnfast.module import Module
from rnnfast.random import below, dropout_mask

_DTYPES = (np.float32, np.float64)


def _check_size(name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.type not in _DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _shape_error(name, got, expected):
    return ValueError(f"{name} has shape {tuple(got)}, expected {expected}")


def _reverse_index(lengths, T, B, xp):
    """Time indices that reverse each sequence within its length: idx: (T, B), an involution."""
    t = xp.arange(T)[:, None]
    L = xp.asarray(lengths)[None, :]
    return xp.where(t < L, L - 1 - t, t)


def _reverse(a, index, xp):
    """a: (T, B, ...) with each column b reversed inside its length (index from _reverse_index)."""
    if index is None:
        return a[::-1]
    return a[index, xp.arange(a.shape[1])[None, :]]


def layer_norm_names(cell, layer: int, suffix: str = "") -> tuple[str, ...]:
    """The names of one layer and direction's layer-norm gains and biases, in the kernels' order
    (gain_ih, bias_ih, gain_hh, bias_hh[, gain_c, bias_c]): ``layernorm_ih_l0.weight``, ...,
    ``layernorm_c_l0_reverse.bias``."""
    norms = ("ih", "hh", "c") if cell_named(cell).has_cell_state else ("ih", "hh")
    return tuple(f"layernorm_{n}_l{layer}{suffix}.{p}" for n in norms for p in ("weight", "bias"))


def param_shapes(cell, input_size, hidden_size, num_layers=1, bias=True, bidirectional=False,
                 layer_norm=False) -> dict[str, tuple]:
    """Every parameter of a layer of ``cell`` (a name or kind of the cell table) by name, with its
    shape, in PyTorch's names, layout and order (``weight_ih_l0`` (G*H, I), ``weight_hh_l0`` (G*H, H),
    ``bias_ih_l0``, ``bias_hh_l0`` (G*H,), suffix ``_reverse``; with ``layer_norm`` each layer and
    direction's :func:`layer_norm_names` after them, (G*H,) and the LSTM's c (H,)), from the sizes
    alone: the layer builds its parameters from it, and a checkpoint's tensors are checked against
    it before anything is allocated."""
    GH, D = cell_named(cell).num_gates * hidden_size, 2 if bidirectional else 1
    shapes = {}
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else hidden_size * D
        for suffix in ("", "_reverse")[:D]:
            shapes[f"weight_ih_l{layer}{suffix}"] = (GH, in_size)
            shapes[f"weight_hh_l{layer}{suffix}"] = (GH, hidden_size)
            if bias:
                shapes[f"bias_ih_l{layer}{suffix}"] = (GH,)
                shapes[f"bias_hh_l{layer}{suffix}"] = (GH,)
            if layer_norm:
                for name, size in zip(layer_norm_names(cell, layer, suffix), (GH, GH, GH, GH, hidden_size, hidden_size)):
                    shapes[name] = (size,)
    return shapes


def _zoneout_fractions(zoneout, parts) -> tuple[float, ...]:
    """``zoneout`` as one fraction per state part: a number for every part, or a pair (p_h, p_c)
    for a cell with two; each in [0, 1)."""
    values = tuple(zoneout) if isinstance(zoneout, (tuple, list)) else (zoneout,) * len(parts)
    if len(values) != len(parts):
        form = "a number or a pair (p_h, p_c)" if len(parts) == 2 else "a number (this cell has only h)"
        raise ValueError(f"zoneout must be {form}, got {zoneout!r}")
    for part, p in zip(parts, values):
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0.0 <= float(p) < 1.0:
            raise ValueError(f"zoneout for {part} must be in [0, 1), got {p!r}")
    return tuple(float(p) for p in values)


class _Recurrent(Module):
    """Shared machinery of RNN, LSTM and GRU: parameters, validation, layers and directions.
    What differs between the cells is read from their entry in the cell table (``self.spec``)."""

    cell = "rnn"  # the kind: "rnn", "lstm" or "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, seed=None, nonlinearity=None,
                 weight_drop=0.0, recurrent_dropout=0.0, zoneout=0.0, layer_norm=False):
        super().__init__()
        if nonlinearity is not None and self.cell != "rnn":
            raise TypeError(f"{type(self).__name__} has no nonlinearity option")
        nonlinearity = "tanh" if nonlinearity is None else nonlinearity
        _check_size("input_size", input_size)
        _check_size("hidden_size", hidden_size)
        _check_size("num_layers", num_layers)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        for name, p in (("weight_drop", weight_drop), ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p!r}")
        if not isinstance(layer_norm, (bool, np.bool_)):
            raise TypeError(f"layer_norm must be True or False, got {layer_norm!r}")
        choices = [c.activation for c in CELLS.values() if c.kind == "rnn"]
        if nonlinearity not in choices:
            raise ValueError(f"nonlinearity must be one of {', '.join(map(repr, choices))}, got {nonlinearity!r}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional, self.nonlinearity = bool(bidirectional), nonlinearity
        self.weight_drop, self.recurrent_dropout = float(weight_drop), float(recurrent_dropout)
        self.layer_norm = bool(layer_norm)
        self.spec = cell_named(self.cell, nonlinearity)
        self.zoneout = _zoneout_fractions(zoneout, self.spec.state)
        self.num_directions = 2 if bidirectional else 1
        self.dtype = _check_dtype(dtype)
        rng = np.random.default_rng(seed)
        self.dropout_seed = int(rng.integers(2**63))
        self.dropout_stream = 0
        k = 1.0 / np.sqrt(self.hidden_size)
        for name, shape in param_shapes(self.spec.name, self.input_size, self.hidden_size, self.num_layers, self.bias,
                                        self.bidirectional, self.layer_norm).items():
            if name.startswith("layernorm_"):  # gains 1, biases 0, as torch.nn.LayerNorm; no draw
                self.add_param(name, np.full(shape, name.endswith(".weight"), self.dtype))
            else:
                self.add_param(name, rng.uniform(-k, k, shape).astype(self.dtype))
        self._cache = None

    @property
    def gates(self) -> int:
        return self.spec.num_gates

    @property
    def has_cell_state(self) -> bool:
        return self.spec.has_cell_state

    @property
    def _suffixes(self):
        return ("", "_reverse")[: self.num_directions]

    # -- validation -----------------------------------------------------------------------------
    def _check_input(self, x, xp):
        if not isinstance(x, xp.ndarray):
            raise TypeError(f"x is a {type(x).__module__}.{type(x).__name__}; pass a NumPy array (a torch tensor: "
                            f"x.numpy()) or, on the GPU, a CuPy array")
        if x.ndim != 3:
            layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
            shape = getattr(x, "shape", type(x).__name__)
            raise ValueError(f"x must be a 3-D array {layout}, got shape {shape}")
        if x.shape[-1] != self.input_size:
            raise _shape_error("x", x.shape, f"last dimension input_size={self.input_size}")
        if x.dtype != self.dtype:
            other = (f" or build the layer with dtype={x.dtype.name}" if x.dtype.type in _DTYPES
                     else "; the layers run float32 or float64")
            raise TypeError(f"x has dtype {x.dtype} but the layer's parameters are {self.dtype}; "
                            f"pass x.astype(np.{self.dtype.name}){other}")
        if 0 in x.shape:
            raise _shape_error("x", x.shape, "at least one time step and one sequence")
        if not bool(xp.isfinite(x).all()):
            raise ValueError("x contains NaN or Inf values")

    def _check_state(self, state, B, xp, parts=("h0", "c0")):
        """state (or a gradient of one, named by ``parts``) as a tuple of (D*L, B, H) arrays."""
        expected = (self.num_layers * self.num_directions, B, self.hidden_size)
        parts = parts if self.has_cell_state else parts[:1]
        what = f"a tuple ({', '.join(parts)})"
        if state is None:
            return tuple(xp.zeros(expected, self.dtype) for _ in parts)
        if self.has_cell_state:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"{what} of arrays {expected} is needed, got {type(state).__name__}")
        else:
            state = (state,)
        for name, s in zip(parts, state):
            if not hasattr(s, "shape") or tuple(s.shape) != expected:
                raise _shape_error(name, getattr(s, "shape", ()), expected)
            if s.dtype != self.dtype:
                raise TypeError(f"{name} has dtype {s.dtype}, expected {self.dtype}")
            if not bool(xp.isfinite(s).all()):
                raise ValueError(f"{name} contains NaN or Inf values")
        return tuple(state)

    @staticmethod
    def _check_lengths(lengths, T, B):
        """Returns host int64 lengths (B,), or None when every sequence has all T steps."""
        if lengths is None:
            return None
        host = np.asarray(to_numpy(lengths))
        if host.shape != (B,):
            raise _shape_error("lengths", host.shape, f"({B},), one length per sequence")
        if host.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers, got dtype {host.dtype}")
        if host.min() < 1 or host.max() > T:
            raise ValueError(f"lengths must be in 1..T={T}, got values from {host.min()} to {host.max()}")
        return host.astype(np.int64)

    # -- kernels --------------------------------------------------------------------------------
    def cell_options(self, T, B, xp, layer=0, direction=0) -> dict:
        """The cell options for one kernel call of a layer and direction (kernels/README.md): the
        recurrent-dropout mask and zoneout's fractions, drawn from the dropout streams in training
        (each draw advances the stream), zoneout's constant expectation in eval, and the layer's
        layer-norm gains and biases; {} when all are off."""
        options, H = {}, self.hidden_size
        if self.layer_norm:
            options["layer_norm"] = tuple(self._params[n] for n in self._layer_norm_names(layer, direction))
        if self.training and self.recurrent_dropout > 0:
            options["h_mask"] = dropout_mask((B, H), self.recurrent_dropout, self.dropout_seed, self.dropout_stream, xp,
                                             self.dtype, self.draw_rows(0))
            self.dropout_stream += 1
        if any(self.zoneout):
            zone = []
            for p in self.zoneout:
                if p == 0:
                    zone.append(None)
                elif self.training:
                    zone.append(below((T, B, H), p, self.dropout_seed, self.dropout_stream, xp, self.dtype,
                                      self.draw_rows(1)))
                    self.dropout_stream += 1
                else:
                    zone.append(xp.full((T, B, H), p, self.dtype))
            options["zone"] = tuple(zone)
        return options

    def direction_weights(self, layer: int, direction: int = 0, xp=np):
        """(w_ih, w_hh, b_ih, b_hh) of one layer and direction, as the kernels take them; zeros for
        the biases of a layer built with ``bias=False``."""
        p, suffix = self._params, self._suffixes[direction]
        w_ih, w_hh = p[f"weight_ih_l{layer}{suffix}"], p[f"weight_hh_l{layer}{suffix}"]
        if self.bias:
            return w_ih, w_hh, p[f"bias_ih_l{layer}{suffix}"], p[f"bias_hh_l{layer}{suffix}"]
        zeros = xp.zeros(self.gates * self.hidden_size, self.dtype)
        return w_ih, w_hh, zeros, zeros

    def _layer_norm_names(self, layer, direction):
        return layer_norm_names(self.spec.name, layer, self._suffixes[direction])

    def zero_state(self, batch_size: int, xp=np) -> tuple:
        """The initial state as the kernels take it: a tuple of (D*L, B, H) zero arrays, one per
        state part of the cell (h, and c for the LSTM)."""
        return self._check_state(None, batch_size, xp)

    # -- forward / backward -------------------------------------------------------------------
    def forward(self, x, state=None, lengths=None, embedded=None):
        """x: (T, B, I), or (B, T, I) with batch_first; state: h0 (D*L, B, H), or (h0, c0) for LSTM;
        lengths: (B,) ints in 1..T or None. Returns y: (T, B, D*H) (or batch-first) and the final
        state in the form of ``state``.

        embedded: (weight (V, I), ids (T, B)) in place of x = weight[ids], for a layer fed by an
        embedding, on the CPU and not batch-first (x is None then). Layer 0's input projection is
        then a row lookup in weight @ W_ih^T, V rows instead of T*B; :meth:`backward` returns the
        gradient of ``weight`` in place of dx. On an LSTM 2x256 B32 T64 training step this skips
        three of the eleven large products."""
        be = get_backend(x if embedded is None else embedded[0], state)
        xp = be.xp
        if embedded is not None:
            weight, ids = embedded
            if self.batch_first or xp is not np:
                raise ValueError("embedded input is for a time-major layer on the CPU; pass x = weight[ids]")
            if weight.shape[1] != self.input_size or weight.dtype != self.dtype or ids.ndim != 2:
                raise ValueError(f"embedded takes a ({self.input_size},)-wide {self.dtype} weight and (T, B) ids, "
                                 f"got {weight.dtype}{weight.shape} and ids of shape {ids.shape}")
            T, B = ids.shape
        else:
            self._check_input(x, xp)
            if self.batch_first:
                x = x.transpose(1, 0, 2)
            T, B = x.shape[:2]
        state = self._check_state(state, B, xp)
        host_lengths = self._check_lengths(lengths, T, B)
        lengths_dev = None if host_lengths is None else xp.asarray(host_lengths)
        rev = None if host_lengths is None else _reverse_index(lengths_dev, T, B, xp)
        forward = be.kernels.KERNELS[self.spec.name][0]
        caches, masks, weight_masks, finals = [], [], [], [[] for _ in state]
        layer_in = None if embedded is not None else xp.ascontiguousarray(x)
        for layer in range(self.num_layers):
            if layer > 0 and self.training and self.dropout > 0:
                mask = dropout_mask(layer_in.shape, self.dropout, self.dropout_seed, self.dropout_stream, xp, self.dtype,
                                    self.draw_rows(1))
                self.dropout_stream += 1
                layer_in = layer_in * mask
                masks.append(mask)
            else:
                masks.append(None)
            outs = []
            for d, suffix in enumerate(self._suffixes):
                idx = layer * self.num_directions + d
                w_ih, w_hh, b_ih, b_hh = self.direction_weights(layer, d, xp)
                projected = {}
                if layer == 0 and embedded is not None:  # rows of weight @ W_ih^T, looked up
                    inp = xp.take(be.kernels.matmul(weight, w_ih.T), ids, axis=0)
                    inp = inp if d == 0 else xp.ascontiguousarray(_reverse(inp, rev, xp))
                    projected = {"projected": True}
                else:
                    inp = layer_in if d == 0 else xp.ascontiguousarray(_reverse(layer_in, rev, xp))
                weight_mask = None
                if self.training and self.weight_drop > 0:
                    weight_mask = dropout_mask(w_hh.shape, self.weight_drop, self.dropout_seed, self.dropout_stream,
                                               xp, self.dtype)
                    self.dropout_stream += 1
                    w_hh = w_hh * weight_mask
                weight_masks.append(weight_mask)
                y_d, final, cache = forward(inp, tuple(s[idx] for s in state), (w_ih, w_hh, b_ih, b_hh), lengths_dev,
                                            **self.cell_options(T, B, xp, layer, d), **projected)
                outs.append(y_d if d == 0 else _reverse(y_d, rev, xp))
                caches.append(cache)
                for acc, f in zip(finals, final):
                    acc.append(f)
            layer_in = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=2)
        self._cache = (be, caches, masks, weight_masks, rev, B, embedded)
        y = layer_in.transpose(1, 0, 2) if self.batch_first else layer_in
        final_state = tuple(xp.stack(f) for f in finals)
        return y, (final_state if self.has_cell_state else final_state[0])

    def backward(self, dy, dstate=None):
        """BPTT through the last forward. dy: like y; dstate: gradient of the final state (same
        form as the state, None for zeros). Adds into ``grads``; returns dx (like x) and dstate0."""
        if self._cache is None:
            raise RuntimeError("backward() called before forward(); run the layer on an input first")
        be, caches, masks, weight_masks, rev, B, embedded = self._cache
        xp = be.xp
        if get_backend(dy, dstate) is not be:
            raise TypeError("dy and dstate must be on the same device as the forward input")
        if self.batch_first:
            dy = dy.transpose(1, 0, 2)
        H, D = self.hidden_size, self.num_directions
        T = dy.shape[0]
        expected = (T, B, D * H)
        if tuple(dy.shape) != expected:
            raise _shape_error("dy", dy.shape, expected)
        n_parts = 2 if self.has_cell_state else 1
        if dstate is None:
            dstate = (None,) * n_parts
        else:
            dstate = self._check_state(dstate, B, xp, ("dhT", "dcT"))
        dstate0 = [xp.zeros((self.num_layers * D, B, H), self.dtype) for _ in range(n_parts)]
        backward = be.kernels.KERNELS[self.spec.name][1]
        dy = dy.astype(self.dtype, copy=False)
        for layer in reversed(range(self.num_layers)):
            dx_layer = None
            for d, suffix in enumerate(self._suffixes):
                idx = layer * D + d
                dy_d = dy[:, :, d * H:(d + 1) * H]
                if d == 1:
                    dy_d = _reverse(dy_d, rev, xp)
                dfinal = tuple(None if s is None else s[idx] for s in dstate)
                grads = tuple(self._grads.get(f"{name}_l{layer}{suffix}")
                              for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                if self.layer_norm:
                    grads += tuple(self._grads[n] for n in self._layer_norm_names(layer, d))
                weight_mask = weight_masks[idx]
                if weight_mask is not None:
                    # the kernels add into the buffers, so dW_hh_eff goes to a temporary and only
                    # this call's part is masked, not the gradient accumulated before it
                    dw_hh = grads[1]
                    grads = (grads[0], xp.zeros_like(dw_hh)) + grads[2:]
                dx_d, dinit, filled = backward(xp.ascontiguousarray(dy_d), dfinal, caches[idx], grads)
                if weight_mask is not None:
                    dw_hh += filled[1] * weight_mask
                if d == 1:
                    dx_d = _reverse(dx_d, rev, xp)
                if layer == 0 and embedded is not None:  # dx_d is d(x @ W_ih^T): back to weight's rows
                    dx_d = self._embedded_grads(embedded, dx_d, layer, d, be)
                dx_layer = dx_d if dx_layer is None else dx_layer + dx_d
                for acc, g in zip(dstate0, dinit):
                    acc[idx] = g
            if masks[layer] is not None:
                dx_layer = dx_layer * masks[layer]
            dy = dx_layer
        dx = dy.transpose(1, 0, 2) if self.batch_first else dy
        return dx, (tuple(dstate0) if self.has_cell_state else dstate0[0])

    def _embedded_grads(self, embedded, dprojected, layer, d, be):
        """From d(x @ W_ih^T): (T, B, G*H) with x = weight[ids], the gradient of the lookup table
        (V, G*H) (a scatter-add over the ids, repeated ids summed), then dW_ih += dtable^T @ weight
        into ``grads`` and the gradient of ``weight``, dtable @ W_ih, returned: each a product of V
        rows where the plain path has two of T*B."""
        weight, ids = embedded
        w_ih = self.direction_weights(layer, d, be.xp)[0]
        dtable = be.xp.zeros((weight.shape[0], w_ih.shape[0]), self.dtype)
        be.kernels.embedding_backward(dtable, ids, dprojected)
        name = f"weight_ih_l{layer}{self._suffixes[d]}"
        if name in self._grads:
            self._grads[name] += be.kernels.matmul(dtable.T, weight)
        return be.kernels.matmul(dtable, w_ih)

    # -- step by step --------------------------------------------------------------------------
    def take_cache(self):
        """What the last :meth:`forward` kept for :meth:`backward`, handed over: the layer forgets it.
        A caller that runs the layer one step at a time (a decoder feeding each step's output back
        in) keeps one per call and returns each with :meth:`restore_cache` before its backward."""
        cache, self._cache = self._cache, None
        return cache

    def restore_cache(self, cache) -> None:
        """Make ``cache`` (from :meth:`take_cache`) the one the next :meth:`backward` runs through."""
        self._cache = cache

    # -- reproducible dropout and weight drop ---------------------------------------------------
    def rng_state(self) -> dict:
        return {"seed": self.dropout_seed, "stream": self.dropout_stream}

    def set_rng_state(self, state: dict) -> None:
        self.dropout_seed, self.dropout_stream = int(state["seed"]), int(state["stream"])

    def __repr__(self):
        extra = f", nonlinearity={self.nonlinearity!r}" if self.cell == "rnn" else ""
        zoneout = self.zoneout if len(set(self.zoneout)) > 1 else self.zoneout[0]
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
                f", bidirectional={self.bidirectional}, dropout={self.dropout}, weight_drop={self.weight_drop}"
                f", recurrent_dropout={self.recurrent_dropout}, zoneout={zoneout}, layer_norm={self.layer_norm}{extra}"
                f", dtype={self.dtype.name})")


class RNN(_Recurrent):
    """Elman RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act ``tanh`` or ``relu``."""

    cell = "rnn"


class LSTM(_Recurrent):
    """LSTM, gate order i, f, g, o: ``c' = f*c + i*g``, ``h' = o*tanh(c')``. State is ``(h, c)``."""

    cell = "lstm"


class GRU(_Recurrent):
    """GRU, gate order r, z, n: ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``, ``h' = (1-z)*n + z*h``."""

    cell = "gru"


class _Cell(Module):
    """One time step of a cell, with PyTorch's ``*Cell`` parameter names (``weight_ih``, ...).

    It wraps a one-layer, one-direction layer and runs it for T=1, so it shares its kernels.
    ``backward`` differentiates the last ``forward`` call.
    """

    layer_class = RNN

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, seed=None, **kwargs):
        super().__init__()
        for name in ("weight_drop", "recurrent_dropout"):
            if kwargs.get(name, 0):
                raise ValueError(f"{type(self).__name__} has no {name}: a mask per forward call would be a new mask "
                                 f"every step; run rf.{self.layer_class.__name__}(..., {name}=p) over the sequence")
        self._layer = self.layer_class(input_size, hidden_size, bias=bias, dtype=dtype, seed=seed, **kwargs)
        self.input_size, self.hidden_size, self.dtype = input_size, hidden_size, self._layer.dtype
        for name in list(self._layer._params):
            self._params[self._own_name(name)] = self._layer._params[name]
            self._grads[self._own_name(name)] = self._layer._grads[name]

    @staticmethod
    def _own_name(name):
        """The layer's ``weight_ih_l0`` as PyTorch's cells name it, ``weight_ih`` (and
        ``layernorm_ih_l0.weight`` as ``layernorm_ih.weight``)."""
        return name.replace("_l0", "", 1)

    def _on_move(self, device):
        for name in list(self._layer._params):
            self._layer._params[name] = self._params[self._own_name(name)]
            self._layer._grads[name] = self._grads[self._own_name(name)]

    def forward(self, x, state=None):
        """x: (B, I); state: h (B, H), or (h, c) for LSTMCell. Returns the new state."""
        if not hasattr(x, "ndim") or x.ndim != 2:
            raise ValueError(f"x must be a 2-D array (B, input_size), got shape {getattr(x, 'shape', None)}")
        if state is not None:
            state = tuple(s[None] for s in state) if isinstance(state, (tuple, list)) else state[None]
        _, new = self._layer(x[None], state)
        return tuple(s[0] for s in new) if isinstance(new, tuple) else new[0]

    def backward(self, dstate):
        """dstate: dh (B, H), or (dh, dc) for LSTMCell. Returns dx: (B, I) and the initial state's gradient."""
        if isinstance(dstate, (tuple, list)):
            dh = dstate[0]
            dfinal = tuple(s[None] for s in dstate)
        else:
            dh, dfinal = dstate, dstate[None]
        dy = get_backend(dh).xp.zeros((1,) + tuple(dh.shape), self.dtype)
        dx, dinit = self._layer.backward(dy, dfinal)
        return dx[0], (tuple(s[0] for s in dinit) if isinstance(dinit, tuple) else dinit[0])

    def train(self, mode=True):
        self._layer.train(mode)
        return super().train(mode)


class RNNCell(_Cell):
    """One step of :class:`RNN` (``nonlinearity`` "tanh" or "relu")."""

    layer_class = RNN


class LSTMCell(_Cell):
    """One step of :class:`LSTM`; state ``(h, c)``."""

    layer_class = LSTM


class GRUCell(_Cell):
    """One step of :class:`GRU`."""

    layer_class = GRU
