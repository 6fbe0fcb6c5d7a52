"""Sequence to sequence with attention: :class:`Seq2Seq`, an encoder over any cell and a decoder over
any cell with Bahdanau (additive), Luong (multiplicative) or no attention, trained with teacher
forcing and decoded greedily or by beam search; :class:`Attention` holds the attention's forward
and backward, written out.

Token ids on both sides: 0 ``<pad>``, 1 ``<bos>``, 2 ``<eos>`` (``rnnfast.data``'s PAD, BOS, EOS, as
:class:`rnnfast.data.TokenVocab` numbers them). A batch is ``(src (B, S), src_lengths (B,),
tgt (B, T), tgt_lengths (B,))``, padded with 0, each target ending in EOS (counted in its length).

    >>> import numpy as np, rnnfast as rf
    >>> model = rf.models.Seq2Seq(8, 8, hidden_size=16, seed=0)
    >>> src = np.array([[4, 5, 6], [7, 4, 0]]); tgt = np.array([[6, 5, 4, 2], [4, 7, 2, 0]])
    >>> out = model.train_step((src, np.array([3, 2]), tgt, np.array([4, 3])))
    >>> sorted(out), len(model.translate(src, np.array([3, 2])))
    (['loss', 'tokens'], 2)

The computation, time-major inside (K: the encoder's outputs (S, B, D*H), D = 2 when bidirectional):

1. ``K, h_n = encoder(drop(enc_embed(src)), lengths)``; the decoder starts from
   ``h_0 = tanh(bridge([h_n of the top layer, each direction]))``, one (B, H) per decoder layer
   (an LSTM decoder's c_0 is zero).
2. Step t reads y_{t-1} (BOS first): the target's token (teacher forcing) or, with probability
   ``1 - teacher_forcing`` per token in training, the argmax of step t-1's logits.
3. ``bahdanau``: ``c_t = attend(h_{t-1})``, ``h_t = decoder([drop(dec_embed(y_{t-1})); c_t], h_{t-1})``,
   ``logits = head(drop(h_t))``. ``luong``: ``h_t = decoder(drop(dec_embed(y_{t-1})), h_{t-1})``,
   ``c_t = attend(h_t)``, ``o_t = tanh(combine([c_t; h_t]))``, ``logits = head(drop(o_t))``.
   ``none``: ``logits = head(drop(h_t))``, the source reaching the decoder through h_0 alone.
4. Loss: cross-entropy over the target tokens, padding ignored.

With ``luong`` or ``none`` and full teacher forcing the decoder reads the whole target in one call
of its layer (the fast kernels' time loop); otherwise it runs one step per call. The encoder takes
the recurrent regularisers (weight_drop, recurrent_dropout, zoneout); the decoder, run step by step,
would draw them anew at each step, so it takes only the dropout between its layers (run step by
step, one mask per sequence for all steps) and layer norm.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from rnnfast.backend import get_array_module, get_backend, to_numpy
from rnnfast.data import BOS, EOS, PAD
from rnnfast.layers import Dropout, Embedding, Linear
from rnnfast.losses import cross_entropy
from rnnfast.models.base import Model, child_seeds, recurrent_layer, recurrent_shapes, regularisers, resolve_seed
from rnnfast.module import Module
from rnnfast.random import uniform
from rnnfast.recurrent import param_shapes

ATTENTIONS = ("bahdanau", "luong", "none")


@dataclasses.dataclass
class PairSet:
    """Translation pairs as a model scores them: the four arrays of a batch (see the module), and
    how to score decodings: ``detokenize(ids) -> str`` turns target ids into text for BLEU and chrF
    (None: no BLEU/chrF), ``beam`` the beam width of the decoding."""

    src: object
    src_lengths: object
    tgt: object
    tgt_lengths: object
    detokenize: Callable | None = None
    beam: int = 1

    @property
    def arrays(self) -> tuple:
        return self.src, self.src_lengths, self.tgt, self.tgt_lengths

    def __len__(self) -> int:
        return len(self.src)


def _compiled(backend, x) -> bool:
    """Whether the additive scores run compiled (kernels/cpu/attention.py): on the CPU, in float32/64."""
    return backend.name == "cpu" and x.dtype in backend.kernels.FLOAT_DTYPES


def _dtanh(dy, y):
    return dy * (1 - y * y)


class Attention(Module):
    """Attention of decoder states over the encoder's outputs, with a mask for padding.

    ``bahdanau`` (additive, Bahdanau et al. 2015): ``score[s] = w . tanh(W_k k_s + b_k + W_q q)``;
    children ``query`` (H -> H, no bias), ``key`` (K -> H), ``score`` (H -> 1, no bias).
    ``luong`` (multiplicative, Luong et al. 2015, "general"): ``score[s] = q . (W_k k_s)``; child
    ``key`` (K -> H, no bias). Then ``a = softmax(score)`` over the valid positions (padding gets
    weight 0) and the context ``c = sum_s a[s] k_s``.

    :meth:`prepare` takes the keys of a batch once; :meth:`attend` then serves any number of query
    calls, each returning what its :meth:`attend_backward` needs; :meth:`prepare_backward` ends
    the backward pass with the keys' gradient. Batch-first inside: keys (B, S, K), queries (B, N, H).
    On the CPU the additive scores are one compiled pass each way (kernels/cpu/attention.py); the
    array formulas here are the GPU path and their specification.
    """

    def __init__(self, kind: str, query_size: int, key_size: int, dtype=np.float32, seed: int | None = None):
        super().__init__()
        if kind not in ("bahdanau", "luong"):
            raise ValueError(f"attention must be one of {', '.join(map(repr, ATTENTIONS))}, got {kind!r}")
        self.kind = kind
        s = child_seeds(resolve_seed(seed), 3)
        if kind == "bahdanau":
            self.add("query", Linear(query_size, query_size, bias=False, dtype=dtype, seed=s[0]))
            self.add("key", Linear(key_size, query_size, dtype=dtype, seed=s[1]))
            self.add("score", Linear(query_size, 1, bias=False, dtype=dtype, seed=s[2]))
        else:
            self.add("key", Linear(key_size, query_size, bias=False, dtype=dtype, seed=s[1]))
        self._keys = self._lengths = None

    def prepare(self, keys, lengths):
        """keys: (B, S, K); lengths: (B,) valid positions of each row (on keys' device)."""
        xp = get_array_module(keys)
        valid = xp.arange(keys.shape[1])[None, :] < lengths[:, None]  # (B, S)
        projected = self.key(keys)  # (B, S, H); the key layer keeps keys for prepare_backward
        self._lengths = np.asarray(to_numpy(lengths), np.intp) if _compiled(get_backend(keys), keys) else None
        self._keys = (keys, projected, valid, xp.zeros_like(keys), xp.zeros_like(projected))

    def attend(self, q):
        """q: (B, N, H) -> context (B, N, K), weights (B, N, S), and the cache of this call."""
        keys, projected, valid, _, _ = self._keys
        backend = get_backend(q, keys)
        xp = backend.xp
        pre = None
        if self.kind == "luong":
            scores = xp.where(valid[:, None, :], q @ projected.transpose(0, 2, 1), -xp.inf)
        elif _compiled(backend, q):
            B, N, S, H = q.shape[:2] + projected.shape[1:]
            pre, scores = np.empty((B, N, S, H), q.dtype), np.full((B, N, S), -np.inf, q.dtype)
            backend.kernels.additive_scores(projected, self.query.apply(q), self.score.params["weight"][0],
                                            self._lengths, pre, scores)
        else:
            # pre: (B, N, S, H), the additive score's hidden layer for each query and position
            pre = xp.tanh(projected[:, None] + self.query.apply(q)[:, :, None])
            scores = xp.where(valid[:, None, :], pre @ self.score.params["weight"][0], -xp.inf)
        scores = scores - scores.max(axis=2, keepdims=True)
        weights = xp.exp(scores)
        weights /= weights.sum(axis=2, keepdims=True)
        return weights @ keys, weights, (q, pre, weights)

    def attend_backward(self, dcontext, cache):
        """dcontext: (B, N, K) -> dq: (B, N, H); the keys' gradient accumulates for prepare_backward."""
        keys, projected, _, dkeys, dprojected = self._keys
        q, pre, weights = cache
        if weights.shape[1] == 1:  # one query a call, as a decoder step makes: an outer product per row,
            dkeys += weights[:, 0, :, None] * dcontext[:, 0, None, :]  # 3x faster than B tiny matmuls
        else:
            dkeys += weights.transpose(0, 2, 1) @ dcontext
        dweights = dcontext @ keys.transpose(0, 2, 1)  # (B, N, S)
        # softmax backward; padded positions have weight 0, so their score gradient is 0
        dscores = weights * (dweights - (weights * dweights).sum(axis=2, keepdims=True))
        if self.kind == "luong":
            dprojected += dscores.transpose(0, 2, 1) @ q
            return dscores @ projected
        w = self.score.params["weight"]
        backend = get_backend(q, keys)
        if _compiled(backend, q):
            dquery = np.empty(q.shape[:2] + (w.shape[1],), q.dtype)
            backend.kernels.additive_scores_backward(pre, w[0], dscores, self._lengths, dprojected, dquery,
                                                     self.score.grads["weight"][0])
            return self.query.apply_backward(q, dquery)
        self.score.grads["weight"] += (dscores[..., None] * pre).sum(axis=(0, 1, 2))[None]
        dz = _dtanh(dscores[..., None] * w[0], pre)  # (B, N, S, H)
        dprojected += dz.sum(axis=1)
        return self.query.apply_backward(q, dz.sum(axis=2))

    def prepare_backward(self):
        """The keys' gradient (B, S, K) from every attend_backward since :meth:`prepare`."""
        _, _, _, dkeys, dprojected = self._keys
        return dkeys + self.key.backward(dprojected)


class Seq2Seq(Model):
    """Encoder-decoder with attention (see the module for the equations).

    Children ``enc_embed``, ``encoder`` (a recurrent layer of ``cell``, bidirectional allowed),
    ``bridge``, ``dec_embed``, ``decoder`` (of ``decoder_cell``, default ``cell``), ``attention``
    (bahdanau, luong), ``combine`` (luong), ``head``; ``enc_drop``, ``dec_drop`` and ``drop``
    apply ``dropout`` to the embeddings and before the head. ``embedding_dim`` defaults to
    ``hidden_size``. ``max_target_len``: the longest output, in tokens before its EOS, that decoding
    writes unless told (the longest target of training); ``max_source_len``: the longest source seen in training, for
    callers that warn about longer ones.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, hidden_size: int = 128, num_layers: int = 1,
                 cell: str = "gru", decoder_cell: str | None = None, bidirectional: bool = False,
                 attention: str = "bahdanau", embedding_dim: int | None = None, dropout: float = 0.0,
                 teacher_forcing: float = 1.0, max_target_len: int = 64, max_source_len: int | None = None,
                 dtype=np.float32, seed: int | None = None, weight_drop: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout=0.0, layer_norm: bool = False):
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(map(repr, ATTENTIONS))}, got {attention!r}")
        if not 0.0 < float(teacher_forcing) <= 1.0:
            raise ValueError(f"teacher_forcing must be in (0, 1], got {teacher_forcing!r}")
        for name, size in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size)):
            if not isinstance(size, (int, np.integer)) or size <= EOS:
                raise ValueError(f"{name} must be an integer above {EOS} (ids 0-2 are <pad>, <bos>, <eos>), "
                                 f"got {size!r}")
        seed = resolve_seed(seed)
        dtype = np.dtype(dtype)
        decoder_cell = cell if decoder_cell is None else decoder_cell
        embedding_dim = hidden_size if embedding_dim is None else embedding_dim
        options = regularisers(weight_drop, recurrent_dropout, zoneout, layer_norm)
        super().__init__(src_vocab_size=int(src_vocab_size), tgt_vocab_size=int(tgt_vocab_size),
                         hidden_size=hidden_size, num_layers=num_layers, cell=cell, decoder_cell=decoder_cell,
                         bidirectional=bool(bidirectional), attention=attention, embedding_dim=embedding_dim,
                         dropout=float(dropout), teacher_forcing=float(teacher_forcing),
                         max_target_len=int(max_target_len),
                         max_source_len=None if max_source_len is None else int(max_source_len),
                         dtype=dtype.name, seed=seed, **options)
        s = child_seeds(seed, 12)
        H, L, E = hidden_size, num_layers, embedding_dim
        encoder = recurrent_layer(cell, E, H, L, dropout, bidirectional, dtype, s[1], False, **options)
        D = encoder.num_directions
        self.add("enc_embed", Embedding(src_vocab_size, E, dtype=dtype, seed=s[0]))
        self.add("encoder", encoder)
        self.add("bridge", Linear(D * H, L * H, dtype=dtype, seed=s[2]))
        self.add("dec_embed", Embedding(tgt_vocab_size, E, dtype=dtype, seed=s[3]))
        decoder_in = E + D * H if attention == "bahdanau" else E
        self.add("decoder", recurrent_layer(decoder_cell, decoder_in, H, L, dropout, False, dtype, s[4], False,
                                            layer_norm=layer_norm))
        if attention != "none":
            self.add("attention", Attention(attention, H, D * H, dtype=dtype, seed=s[5]))
        if attention == "luong":
            self.add("combine", Linear(D * H + H, H, bias=False, dtype=dtype, seed=s[6]))
        self.add("head", Linear(H, tgt_vocab_size, dtype=dtype, seed=s[7]))
        self.add("enc_drop", Dropout(dropout, seed=s[8], batch_axis=1))
        self.add("dec_drop", Dropout(dropout, seed=s[9], batch_axis=1))
        self.add("drop", Dropout(dropout, seed=s[10], batch_axis=1))
        self.teacher_forcing_seed, self.teacher_forcing_calls = s[11], 0
        self.hidden_size, self.num_layers, self.num_directions = H, L, D
        self.attention_kind, self.teacher_forcing = attention, float(teacher_forcing)
        self.max_target_len, self.max_source_len = int(max_target_len), max_source_len
        self.dtype = dtype
        self._cache = None

    @staticmethod
    def _shapes(src_vocab_size, tgt_vocab_size, hidden_size, num_layers, cell, decoder_cell, bidirectional, attention,
                embedding_dim, layer_norm=False, **_) -> dict[str, tuple]:
        H, L, D = hidden_size, num_layers, 2 if bidirectional else 1
        E = hidden_size if embedding_dim is None else embedding_dim
        decoder_in = E + D * H if attention == "bahdanau" else E
        shapes = {"enc_embed.weight": (src_vocab_size, E),
                  **{f"encoder.{k}": v for k, v in param_shapes(cell, E, H, L, True, bool(bidirectional),
                                                                bool(layer_norm)).items()},
                  "bridge.weight": (L * H, D * H), "bridge.bias": (L * H,), "dec_embed.weight": (tgt_vocab_size, E),
                  **{f"decoder.{k}": v for k, v in param_shapes(decoder_cell or cell, decoder_in, H, L, True, False,
                                                                bool(layer_norm)).items()}}
        if attention == "bahdanau":
            shapes.update({"attention.query.weight": (H, H), "attention.key.weight": (H, D * H),
                           "attention.key.bias": (H,), "attention.score.weight": (1, H)})
        elif attention == "luong":
            shapes.update({"attention.key.weight": (H, D * H), "combine.weight": (H, D * H + H)})
        return {**shapes, "head.weight": (tgt_vocab_size, H), "head.bias": (tgt_vocab_size,)}

    def rng_state(self) -> dict:
        return {**super().rng_state(),
                "teacher_forcing": {"seed": self.teacher_forcing_seed, "calls": self.teacher_forcing_calls}}

    def set_rng_state(self, state: dict) -> None:
        state = dict(state)
        forcing = state.pop("teacher_forcing", None)
        if forcing is not None:
            self.teacher_forcing_seed, self.teacher_forcing_calls = int(forcing["seed"]), int(forcing["calls"])
        super().set_rng_state(state)

    # -- the encoder and the bridge -------------------------------------------------------------
    def _batch(self, src, src_lengths, tgt=None, tgt_lengths=None):
        """The batch on the model's device, time-major, cut to its longest source and target."""
        src, src_lengths = self._to_model(src), self._to_model(src_lengths)
        if src.ndim != 2 or src_lengths.shape != (src.shape[0],):
            raise ValueError(f"Seq2Seq takes src (B, S) ids and src_lengths (B,), got shapes {tuple(src.shape)} "
                             f"and {tuple(src_lengths.shape)}")
        src = src[:, : int(src_lengths.max())].T
        if tgt is None:
            return src, src_lengths, None
        tgt = self._to_model(tgt)[:, : int(to_numpy(tgt_lengths).max())].T
        return src, src_lengths, tgt

    def _encode(self, src, src_lengths):
        """src: (S, B) ids -> decoder state h_0 (and c_0), the keys prepared for attention, and what
        :meth:`_encode_backward` needs."""
        xp = get_array_module(src)
        keys, final = self.encoder(self.enc_drop(self.enc_embed(src)), None, src_lengths)
        h_n = final[0] if isinstance(final, tuple) else final
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        top = xp.concatenate([h_n[(L - 1) * D + d] for d in range(D)], axis=1)  # (B, D*H)
        h0 = xp.tanh(self.bridge(top))  # (B, L*H)
        h = xp.ascontiguousarray(h0.reshape(-1, L, H).transpose(1, 0, 2))
        state = (h, xp.zeros_like(h)) if self.decoder.has_cell_state else h
        keys_first = xp.ascontiguousarray(keys.transpose(1, 0, 2))  # (B, S, D*H)
        if "attention" in self._children:
            self.attention.prepare(keys_first, src_lengths)
        return state, keys_first, h0

    def _encode_backward(self, dstate, keys_first, h0):
        """dstate: the gradient of h_0 (and c_0, which is a constant); keys_first, h0: what
        :meth:`_encode` returned. The keys' gradient is the attention's (zero without one)."""
        xp = get_array_module(h0)
        dh = dstate[0] if isinstance(dstate, tuple) else dstate  # (L, B, H)
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        dtop = self.bridge.backward(_dtanh(dh.transpose(1, 0, 2).reshape(-1, L * H), h0))
        dh_n = xp.zeros((L * D,) + dh.shape[1:], self.dtype)
        for d in range(D):
            dh_n[(L - 1) * D + d] = dtop[:, d * H:(d + 1) * H]
        dfinal = (dh_n, xp.zeros_like(dh_n)) if self.encoder.has_cell_state else dh_n
        dkeys_first = self.attention.prepare_backward() if "attention" in self._children else xp.zeros_like(keys_first)
        dx, _ = self.encoder.backward(xp.ascontiguousarray(dkeys_first.transpose(1, 0, 2)), dfinal)
        self.enc_embed.backward(self.enc_drop.backward(dx))

    # -- one decoder step -----------------------------------------------------------------------
    def _step(self, x, state):
        """x: (B, E) the step's input embedding; state: the decoder's. Returns the head's input
        (B, H), the new state, the attention weights (B, S) (None without attention) and the
        step's cache for :meth:`_step_backward`."""
        xp = get_array_module(x)
        attn = None
        if self.attention_kind == "bahdanau":
            h_prev = (state[0] if isinstance(state, tuple) else state)[-1]
            context, weights, attn = self.attention.attend(h_prev[:, None])
            x = xp.concatenate([x, context[:, 0]], axis=1)
        y, state = self.decoder(x[None], state)
        h = y[0]
        out, combined = h, None
        if self.attention_kind == "luong":
            context, weights, attn = self.attention.attend(h[:, None])
            combined = xp.concatenate([context[:, 0], h], axis=1)
            out = xp.tanh(self.combine.apply(combined))
        return out, state, None if attn is None else weights[:, 0], (self.decoder.take_cache(), attn, combined, out)

    def _step_backward(self, dout, dstate, cache):
        """dout: (B, H) into the step's head input; dstate: the gradient of its new state (None at
        the last step). Returns dx (B, E) and the gradient of the step's input state."""
        decoder_cache, attn, combined, out = cache
        dh = dout
        if self.attention_kind == "luong":
            dcombined = self.combine.apply_backward(combined, _dtanh(dout, out))
            K = dcombined.shape[1] - self.hidden_size
            dh = dcombined[:, K:] + self.attention.attend_backward(dcombined[:, None, :K], attn)[:, 0]
        self.decoder.restore_cache(decoder_cache)
        dx, dstate = self.decoder.backward(dh[None], dstate)
        dx = dx[0]
        if self.attention_kind == "bahdanau":
            E = dx.shape[1] - self.attention.key.in_features
            dq = self.attention.attend_backward(dx[:, None, E:], attn)[:, 0]
            dh_prev = dstate[0] if isinstance(dstate, tuple) else dstate
            dh_prev[-1] += dq
            dx = dx[:, :E]
        return dx, dstate

    # -- training -------------------------------------------------------------------------------
    def _forced(self, shape, xp):
        """(T, B) True where a training step reads the target's token, drawn per token."""
        draws = uniform(shape, self.teacher_forcing_seed, self.teacher_forcing_calls, xp, np.float32,
                        self.draw_rows(1))
        self.teacher_forcing_calls += 1
        return draws < self.teacher_forcing

    def forward(self, src, src_lengths, tgt):
        """src: (S, B), src_lengths: (B,), tgt: (T, B) ids on the model's device -> logits (T, B, V),
        every step reading the target's previous token or (in training, with teacher_forcing < 1)
        the model's own argmax."""
        xp = get_array_module(src)
        T, B = tgt.shape
        state, keys, h0 = self._encode(src, src_lengths)
        inputs = xp.concatenate([xp.full((1, B), BOS, tgt.dtype), tgt[:-1]])  # (T, B)
        sample = self.training and self.teacher_forcing < 1.0
        forced = self._forced((T, B), xp) if sample else None
        embed = self.dec_embed.params["weight"]
        # the embeddings' dropout mask for all steps at once: Dropout of ones is its mask
        emb_mask = self.dec_drop(xp.ones((T, B, embed.shape[1]), self.dtype))
        head_mask = self.drop(xp.ones((T, B, self.hidden_size), self.dtype))
        if self.attention_kind != "bahdanau" and not sample:
            steps = None
            x = xp.take(embed, inputs, axis=0) * emb_mask
            outs, combined, attn = self._decode_all(x, state)
        else:
            steps, outs, combined, attn = [], [], None, None
            stream = self.decoder.dropout_stream
            for t in range(T):
                # every step draws the same masks between the decoder's layers, one per sequence as
                # variational dropout does, so the streams do not move with the batch's longest target
                # (a data-parallel rank's is its own)
                self.decoder.dropout_stream = stream
                if sample and t > 0:
                    guess = self.head.apply(outs[-1] * head_mask[t - 1]).argmax(axis=1).astype(inputs.dtype)
                    inputs[t] = xp.where(forced[t], inputs[t], guess)
                out, state, _, cache = self._step(xp.take(embed, inputs[t], axis=0) * emb_mask[t], state)
                outs.append(out)
                steps.append(cache)
            outs = xp.stack(outs)
        logits = self.head(outs * head_mask)
        self._cache = (inputs, emb_mask, head_mask, steps, combined, attn, outs, keys, h0)
        return logits

    def _decode_all(self, x, state):
        """The decoder over all T steps in one call of its layer (luong, none; full teacher forcing).
        x: (T, B, E) -> the head's input (T, B, H) and, for luong, [context; h] (T, B, D*H + H) and
        the attention's cache."""
        xp = get_array_module(x)
        y, _ = self.decoder(x, state)
        if self.attention_kind == "none":
            return y, None, None
        y_first = y.transpose(1, 0, 2)
        context, _, attn = self.attention.attend(y_first)
        combined = xp.concatenate([context, y_first], axis=2).transpose(1, 0, 2)  # (T, B, D*H + H)
        return xp.tanh(self.combine.apply(combined)), combined, attn

    def backward(self, dlogits):
        """dlogits: (T, B, V) -> None; adds into ``grads``."""
        if self._cache is None:
            raise RuntimeError("backward() called before forward(); run the model on a batch first")
        inputs, emb_mask, head_mask, steps, combined, attn, outs, keys, h0 = self._cache
        xp = get_array_module(dlogits)
        douts = self.head.backward(dlogits) * head_mask
        dx = xp.empty(emb_mask.shape, self.dtype)
        if steps is None:
            dy = douts
            if self.attention_kind == "luong":
                dcombined = self.combine.apply_backward(combined, _dtanh(douts, outs))
                K = dcombined.shape[2] - self.hidden_size
                dq = self.attention.attend_backward(dcombined[:, :, :K].transpose(1, 0, 2), attn)
                dy = dcombined[:, :, K:] + dq.transpose(1, 0, 2)
            dx, dstate = self.decoder.backward(xp.ascontiguousarray(dy))
        else:
            dstate = None
            for t in reversed(range(len(steps))):
                dx[t], dstate = self._step_backward(douts[t], dstate, steps[t])
        embed_grad = self.dec_embed.grads["weight"]
        get_backend(dx, embed_grad).kernels.embedding_backward(embed_grad, inputs, dx * emb_mask)
        self._encode_backward(dstate, keys, h0)
        self._cache = None

    @staticmethod
    def row_weights(batch):
        """(B,) what each pair of ``batch`` counts in train_step's mean, its target tokens (a
        data-parallel rank's share of a batch is its pairs' part of them: rnnfast.parallel)."""
        return to_numpy(_pairs(batch)[3])

    def train_step(self, batch) -> dict:
        """batch: ``(src, src_lengths, tgt, tgt_lengths)``. Mean cross-entropy over the target tokens
        (padding ignored), backward into ``grads``. Returns ``{"loss", "tokens"}`` (target tokens)."""
        src, src_lengths, tgt = self._batch(*_pairs(batch))
        logits = self.forward(src, src_lengths, tgt)
        loss, dlogits = cross_entropy(logits, tgt, ignore_index=PAD)
        self.backward(dlogits)
        return {"loss": loss, "tokens": int(to_numpy(batch[3]).sum())}

    # -- decoding -------------------------------------------------------------------------------
    def translate(self, src, src_lengths, beam: int = 1, max_len: int | None = None, length_penalty: float = 1.0,
                  return_attention: bool = False, batch_size: int = 256):
        """Decode each source, greedily (``beam=1``) or by beam search, in eval mode, ``batch_size``
        sources at a time. src: (N, S) ids, src_lengths: (N,). Returns N lists of target ids (up to
        their EOS, which is left out), and with ``return_attention`` N arrays (T_n, S_n) of attention
        weights, a row per written token (its EOS included), or N Nones without attention.
        ``max_len``: tokens written at most, an EOS included (default ``max_target_len + 1``: the
        longest target of training and its EOS); beam search ranks its hypotheses by total
        log-probability / length ** ``length_penalty``, the length counting the EOS."""
        if not isinstance(beam, (int, np.integer)) or beam < 1:
            raise ValueError(f"beam must be a positive integer, got {beam!r}")
        max_len = self.max_target_len + 1 if max_len is None else int(max_len)
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        src_lengths = np.asarray(to_numpy(src_lengths))
        if len(src_lengths) and src_lengths.min() < 1:
            raise ValueError("every source needs at least one token; src_lengths must be >= 1")
        was_training = self.training
        self.eval()
        tokens, attention = [], []
        # the weights stay as they are while decoding, so the CPU kernels pack each one once, not at
        # every step's layer call
        reuse_packing = get_backend(self.head.params["weight"]).kernels.reuse_packing
        try:
            with reuse_packing():
                for i in range(0, len(src_lengths), batch_size):
                    src_b, lengths_b, _ = self._batch(src[i:i + batch_size], src_lengths[i:i + batch_size])
                    if beam == 1:
                        found, weights = self._greedy(src_b, lengths_b, max_len, return_attention)
                    else:
                        found, weights = self._beam(src_b, lengths_b, beam, max_len, length_penalty,
                                                    return_attention)
                    tokens += found
                    attention += weights
        finally:
            self.train(was_training)
            self._cache = None
        return (tokens, attention) if return_attention else tokens

    def _start(self, src, src_lengths, copies: int = 1):
        """The encoder's start for decoding ``copies`` hypotheses of each source: the decoder state
        with each row repeated ``copies`` times and the attention prepared over the same rows."""
        state, keys, _ = self._encode(src, src_lengths)
        if copies == 1:
            return state
        xp = get_array_module(keys)
        rows = xp.repeat(xp.arange(keys.shape[0]), copies)
        if "attention" in self._children:
            self.attention.prepare(keys[rows], src_lengths[rows])
        return tuple(s[:, rows] for s in state) if isinstance(state, tuple) else state[:, rows]

    def _finish(self, history, weights, lengths, src_lengths, want_attention):
        """Host lists of each row's tokens up to EOS, and its attention rows (one per written token)."""
        history, lengths = to_numpy(history), to_numpy(lengths)
        src_lengths = to_numpy(src_lengths)
        found = [[int(t) for t in row[: n - (n > 0 and row[n - 1] == EOS)]] for row, n in zip(history, lengths)]
        if not want_attention or weights is None:
            return found, [None] * len(found)
        weights = to_numpy(weights)
        return found, [w[:n, :s] for w, n, s in zip(weights, lengths, src_lengths)]

    def _greedy(self, src, src_lengths, max_len, want_attention):
        xp = get_array_module(src)
        B = src.shape[1]
        state = self._start(src, src_lengths)
        embed = self.dec_embed.params["weight"]
        tokens = xp.full(B, BOS, src.dtype)
        done, lengths = xp.zeros(B, bool), xp.zeros(B, np.int64)
        history, weights = [], []
        for _ in range(max_len):
            out, state, attn, _ = self._step(xp.take(embed, tokens, axis=0), state)
            tokens = xp.where(done, PAD, self.head.apply(out).argmax(axis=1)).astype(src.dtype)
            lengths += ~done
            done |= tokens == EOS
            history.append(tokens)
            weights.append(attn)
            if bool(done.all()):
                break
        stacked = None if weights[0] is None or not want_attention else xp.stack(weights, axis=1)
        return self._finish(xp.stack(history, axis=1), stacked, lengths, src_lengths, want_attention)

    def _beam(self, src, src_lengths, k, max_len, length_penalty, want_attention):
        xp = get_array_module(src)
        B, V = src.shape[1], self.head.out_features
        state = self._start(src, src_lengths, k)
        embed = self.dec_embed.params["weight"]
        scores = xp.full((B, k), -xp.inf, self.dtype)
        scores[:, 0] = 0  # one live hypothesis per source at first, so its k continuations are distinct
        tokens = xp.full(B * k, BOS, src.dtype)
        finished, lengths = xp.zeros((B, k), bool), xp.zeros((B, k), np.int64)
        history = xp.zeros((B, k, 0), src.dtype)
        weights = None
        ended = xp.full(V, -xp.inf, self.dtype)
        ended[PAD] = 0  # a finished hypothesis goes on writing padding, at no cost
        for _ in range(max_len):
            out, state, attn, _ = self._step(xp.take(embed, tokens, axis=0), state)
            logits = self.head.apply(out)
            logits = logits - logits.max(axis=1, keepdims=True)
            logp = (logits - xp.log(xp.exp(logits).sum(axis=1, keepdims=True))).reshape(B, k, V)
            logp = xp.where(finished[..., None], ended, logp)
            candidates = (scores[..., None] + logp).reshape(B, k * V)
            best = xp.argsort(-candidates, axis=1, kind="stable")[:, :k]
            scores = xp.take_along_axis(candidates, best, axis=1)
            origin, tokens = best // V, (best % V).astype(src.dtype)
            rows = (xp.arange(B)[:, None] * k + origin).reshape(-1)
            state = tuple(s[:, rows] for s in state) if isinstance(state, tuple) else state[:, rows]
            history = xp.concatenate([xp.take_along_axis(history, origin[..., None], axis=1), tokens[..., None]], 2)
            if want_attention and attn is not None:
                attn = attn.reshape(B, k, 1, -1)
                step = xp.take_along_axis(attn, origin[..., None, None], axis=1)
                weights = step if weights is None else xp.concatenate(
                    [xp.take_along_axis(weights, origin[..., None, None], axis=1), step], axis=2)
            finished = xp.take_along_axis(finished, origin, axis=1)
            lengths = xp.take_along_axis(lengths, origin, axis=1) + ~finished
            finished |= tokens == EOS
            tokens = tokens.reshape(-1)
            if bool(finished.all()):
                break
        pick = (scores / xp.maximum(lengths, 1).astype(self.dtype) ** length_penalty).argmax(axis=1)
        chosen = xp.arange(B)
        return self._finish(history[chosen, pick], None if weights is None else weights[chosen, pick],
                            lengths[chosen, pick], src_lengths, want_attention)

    # -- scoring --------------------------------------------------------------------------------
    def evaluate(self, data, batch_size: int = 256) -> dict:
        """data: a :class:`PairSet` or ``(src, src_lengths, tgt, tgt_lengths)``. Returns ``{"loss"}``
        (teacher-forced, nats per target token), ``"token_accuracy"`` (of those teacher-forced
        predictions), ``"exact_match"`` (the fraction of decodings, with the set's beam, equal to
        their target) and, when the set can detokenize, sacrebleu's corpus ``"bleu"`` and ``"chrf"``
        (0-100) of the decodings against the targets. In eval mode; the training mode is restored."""
        pairs = data if isinstance(data, PairSet) else PairSet(*_pairs(data))
        if pairs.detokenize is not None:
            scorers = import_sacrebleu()
        src_all, src_lengths_all, tgt_all, tgt_lengths_all = pairs.arrays
        tgt_lengths_all = np.asarray(to_numpy(tgt_lengths_all))
        was_training = self.training
        self.eval()
        total = correct = count = 0
        try:
            for i in range(0, len(pairs), batch_size):
                part = slice(i, i + batch_size)
                src, src_lengths, tgt = self._batch(src_all[part], src_lengths_all[part], tgt_all[part],
                                                    tgt_lengths_all[part])
                logits = self.forward(src, src_lengths, tgt)
                scored = tgt != PAD
                total += cross_entropy(logits, tgt, ignore_index=PAD, reduction="sum")[0]
                correct += int(((logits.argmax(axis=2) == tgt) & scored).sum())
                count += int(scored.sum())
        finally:
            self.train(was_training)
            self._cache = None
        found = self.translate(src_all, src_lengths_all, beam=pairs.beam, batch_size=batch_size)
        tgt_host = np.asarray(to_numpy(tgt_all))
        wanted = [row[: n - 1].tolist() for row, n in zip(tgt_host, tgt_lengths_all)]
        metrics = {"loss": total / count, "token_accuracy": correct / count,
                   "exact_match": float(np.mean([f == w for f, w in zip(found, wanted)]))}
        if pairs.detokenize is not None:
            hypotheses = [pairs.detokenize(f) for f in found]
            references = [[pairs.detokenize(w) for w in wanted]]
            metrics["bleu"] = float(scorers.corpus_bleu(hypotheses, references).score)
            metrics["chrf"] = float(scorers.corpus_chrf(hypotheses, references).score)
        return metrics


def _pairs(batch) -> tuple:
    if isinstance(batch, PairSet):
        return batch.arrays
    if not isinstance(batch, (tuple, list)) or len(batch) != 4:
        raise ValueError("a translation batch is a tuple (src, src_lengths, tgt, tgt_lengths)")
    return tuple(batch)


def import_sacrebleu():
    """sacrebleu, which scores BLEU and chrF, imported when first asked for (an optional dependency);
    without it an ImportError that says how to install it."""
    try:
        import sacrebleu
    except ImportError:
        raise ImportError("a translation model is scored with BLEU and chrF by sacrebleu, which is not "
                          "installed: pip install 'rnnfast[translate]'") from None
    return sacrebleu
