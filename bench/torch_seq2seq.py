"""The translate model written the usual PyTorch way, holding rnnfast's weights: what the seq2seq
tests and ``bench/translate.py`` hold :class:`rnnfast.models.seq2seq.Seq2Seq` to.

Built as in PyTorch's tutorial "NLP From Scratch: Translation with a Sequence to Sequence Network
and Attention": ``nn.Embedding`` -> an ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` encoder over the packed
source (``pack_padded_sequence``, so each sentence's final state is the one at its own length and
its padded outputs are zeros) -> ``tanh(bridge(final))`` as the decoder's first state -> a decoder
stepped one token at a time with ``BahdanauAttention`` (additive), ``LuongAttention`` ("general"
multiplicative, then ``tanh(combine([c; h]))``) or no attention, padding masked to ``-inf`` before
the softmax -> ``nn.Linear`` head -> ``F.cross_entropy(..., ignore_index=0)``. Parameter names and
shapes are the spec's (``enc_embed.weight``, ``encoder.weight_ih_l0``, ``bridge.weight``,
``dec_embed.weight``, ``decoder.*``, ``attention.query/key/score``, ``combine.weight``,
``head.weight/bias``), so the state dict of a ``Seq2Seq`` loads 1:1 (:func:`from_rnnfast`).

Token ids: 0 ``<pad>``, 1 ``<bos>``, 2 ``<eos>``. Batches are batch-first as the data is
(``src`` (B, S), ``tgt`` (B, T), lengths (B,)); inside, the encoder runs time-major.

Decoding: :meth:`TorchSeq2Seq.greedy` is batched (every sentence steps together until all have
written EOS or ``max_len`` tokens); :meth:`TorchSeq2Seq.beam` is batched over sentences too, as
(B*k) rows: each step expands every live hypothesis by the whole vocabulary, keeps the best k of
each sentence's k*V by summed log-probability, and keeps a finished one in its slot (extended by
PAD at no cost) until every slot of every sentence has finished or ``max_len`` steps have run;
the answer is the hypothesis with the best ``score / length**length_penalty`` (length counting
its EOS). With k = 1 this is greedy decoding.

Needs PyTorch; the tests and the bench import this module only when PyTorch is installed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnfast.bench.torch_reference import TORCH_CELLS
from rnnfast.data import BOS, EOS, PAD
ATTENTIONS = ("bahdanau", "luong", "none")


class BahdanauAttention(nn.Module):
    """Additive attention: ``score(tanh(key(K[s]) + query(q)))`` over the source positions.

    ``query.weight`` (H, H) no bias; ``key.weight`` (H, D*H), ``key.bias`` (H,); ``score.weight``
    (1, H) no bias."""

    def __init__(self, hidden_size: int, memory_size: int):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.key = nn.Linear(memory_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, query, keys, values, pad_mask):
        """query: (B, H) the top decoder layer's previous state; keys: (B, S, H) ``key(values)``,
        projected once per batch; values: (B, S, D*H) the encoder's outputs; pad_mask: (B, S), True
        past each source's length. Returns the context (B, D*H) and the weights (B, S)."""
        scores = self.score(torch.tanh(keys + self.query(query).unsqueeze(1))).squeeze(-1)
        return _attend(scores, values, pad_mask)


class LuongAttention(nn.Module):
    """Multiplicative ("general") attention: ``h . key(K[s])``; ``key.weight`` (H, D*H) no bias."""

    def __init__(self, hidden_size: int, memory_size: int):
        super().__init__()
        self.key = nn.Linear(memory_size, hidden_size, bias=False)

    def forward(self, query, keys, values, pad_mask):
        """query: (B, H) the top decoder layer's new state; the rest as BahdanauAttention's."""
        scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)
        return _attend(scores, values, pad_mask)


def _attend(scores, values, pad_mask):
    """Masked softmax of scores (B, S) over the source, and the weighted sum of values (B, S, D*H)."""
    weights = F.softmax(scores.masked_fill(pad_mask, float("-inf")), dim=-1)
    return torch.bmm(weights.unsqueeze(1), values).squeeze(1), weights


class TorchSeq2Seq(nn.Module):
    """Encoder-decoder with attention; the arguments are ``Seq2Seq``'s (``embedding_dim`` None:
    ``hidden_size``; ``decoder_cell`` None: ``cell``)."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, hidden_size: int = 128, num_layers: int = 1,
                 cell: str = "gru", decoder_cell: str | None = None, bidirectional: bool = False,
                 attention: str = "bahdanau", embedding_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(map(repr, ATTENTIONS))}, got {attention!r}")
        E, H, L = embedding_dim or hidden_size, hidden_size, num_layers
        D = 2 if bidirectional else 1
        self.attention_kind, self.num_layers, self.hidden_size, self.directions = attention, L, H, D
        decoder_cell = decoder_cell or cell
        self.drop = nn.Dropout(dropout)
        self.enc_embed = nn.Embedding(src_vocab_size, E)
        self.encoder = TORCH_CELLS[cell](E, H, num_layers=L, bidirectional=bidirectional)
        self.bridge = nn.Linear(D * H, L * H)
        self.dec_embed = nn.Embedding(tgt_vocab_size, E)
        self.decoder = TORCH_CELLS[decoder_cell](E + D * H if attention == "bahdanau" else E, H, num_layers=L)
        if attention == "bahdanau":
            self.attention = BahdanauAttention(H, D * H)
        elif attention == "luong":
            self.attention = LuongAttention(H, D * H)
            self.combine = nn.Linear(D * H + H, H, bias=False)
        self.head = nn.Linear(H, tgt_vocab_size)

    # -- the encoder --------------------------------------------------------------------------
    def encode(self, src, src_len):
        """src: (B, S) ids; src_len: (B,). Returns the decoder's first state ((L, B, H), or its
        (h, c) with c zeros) and the memory ``(keys (B, S, H) or None, values (B, S, D*H), pad_mask
        (B, S))``."""
        B, S = src.shape
        emb = self.drop(self.enc_embed(src.t()))                                       # (S, B, E)
        packed = pack_padded_sequence(emb, src_len.cpu(), enforce_sorted=False)
        out, h_n = self.encoder(packed)
        values, _ = pad_packed_sequence(out, total_length=S)                           # (S, B, D*H)
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n                                # (L*D, B, H)
        top = (self.num_layers - 1) * self.directions
        final = torch.cat([h_n[top + d] for d in range(self.directions)], dim=-1)      # (B, D*H)
        h0 = torch.tanh(self.bridge(final)).view(B, self.num_layers, self.hidden_size).transpose(0, 1).contiguous()
        state = (h0, torch.zeros_like(h0)) if isinstance(self.decoder, nn.LSTM) else h0
        values = values.transpose(0, 1)                                                # (B, S, D*H)
        keys = self.attention.key(values) if self.attention_kind != "none" else None
        pad_mask = torch.arange(S, device=src.device)[None, :] >= src_len.to(src.device)[:, None]
        return state, (keys, values, pad_mask)

    # -- one decoder step ---------------------------------------------------------------------
    def step(self, y_prev, state, memory):
        """y_prev: (B,) the previous tokens; state: the decoder's; memory: from :meth:`encode`.
        Returns logits (B, Vt) and the new state."""
        keys, values, pad_mask = memory
        x = self.drop(self.dec_embed(y_prev))                                          # (B, E)
        if self.attention_kind == "bahdanau":
            context, _ = self.attention(_top(state), keys, values, pad_mask)
            x = torch.cat([x, context], dim=-1)
        out, state = self.decoder(x.unsqueeze(0), state)
        h = out[0]                                                                     # (B, H)
        if self.attention_kind == "luong":
            context, _ = self.attention(h, keys, values, pad_mask)
            h = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))
        return self.head(self.drop(h)), state

    # -- training -----------------------------------------------------------------------------
    def forward(self, src, src_len, tgt):
        """Teacher-forced logits (T, B, Vt) for tgt: (B, T) (the target ids, EOS, PAD)."""
        src, src_len, tgt = _ids(src), _ids(src_len), _ids(tgt)
        state, memory = self.encode(src, src_len)
        y_in = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], dim=1)
        logits = []
        for t in range(tgt.shape[1]):
            step_logits, state = self.step(y_in[:, t], state, memory)
            logits.append(step_logits)
        return torch.stack(logits)

    def loss(self, src, src_len, tgt, tgt_len=None):
        """Mean cross-entropy over the non-pad target tokens (teacher forcing 1.0). ``tgt_len`` is
        implied by the padding and accepted to mirror ``Seq2Seq.train_step``'s batch."""
        logits = self.forward(src, src_len, tgt)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), _ids(tgt).t().reshape(-1), ignore_index=PAD)

    # -- decoding -----------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, src, src_len, max_len: int) -> list[list[int]]:
        """Batched greedy decoding: list of B lists of ids, each up to its first EOS (dropped) or
        ``max_len`` ids (ids the model writes itself, PAD or BOS among them, are kept, as
        ``Seq2Seq.translate`` keeps them)."""
        src, src_len = _ids(src), _ids(src_len)
        state, memory = self.encode(src, src_len)
        token = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)
        done = torch.zeros_like(token, dtype=torch.bool)
        out = []
        for _ in range(max_len):
            logits, state = self.step(token, state, memory)
            token = logits.argmax(dim=-1)
            out.append(token)
            done |= token == EOS
            if bool(done.all()):
                break
        return [_strip(row) for row in torch.stack(out, dim=1).tolist()]

    @torch.no_grad()
    def beam(self, src, src_len, k: int, max_len: int, length_penalty: float = 1.0) -> list[list[int]]:
        """Batched beam search (the module docstring says how): list of B lists of ids, EOS dropped."""
        src, src_len = _ids(src), _ids(src_len)
        B = src.shape[0]
        state, memory = self.encode(src, src_len)
        rows = torch.arange(B, device=src.device).repeat_interleave(k)                 # (B*k,) each slot's sentence
        state, memory = _select(state, rows), tuple(None if m is None else m[rows] for m in memory)
        scores = torch.full((B, k), float("-inf"), dtype=memory[1].dtype, device=src.device)
        scores[:, 0] = 0.0                   # one live hypothesis at the start, not k copies of it
        token = torch.full((B * k,), BOS, dtype=torch.long, device=src.device)
        finished = torch.zeros_like(token, dtype=torch.bool)
        lengths = torch.zeros_like(token)
        seqs = token.new_empty((B * k, 0))
        for _ in range(max_len):
            logits, state = self.step(token, state, memory)
            logp = F.log_softmax(logits, dim=-1)                                       # (B*k, V)
            V = logp.shape[-1]
            pad_only = torch.full((V,), float("-inf"), dtype=logp.dtype, device=logp.device)
            pad_only[PAD] = 0.0
            logp = torch.where(finished[:, None], pad_only, logp)
            top, index = (scores.view(-1, 1) + logp).view(B, k * V).topk(k, dim=-1)    # (B, k)
            parent = (index // V + torch.arange(B, device=src.device)[:, None] * k).view(-1)
            token = (index % V).view(-1)
            state, seqs = _select(state, parent), torch.cat([seqs[parent], token[:, None]], dim=1)
            finished, lengths = finished[parent], lengths[parent] + (~finished[parent]).long()
            finished = finished | (token == EOS)
            scores = top
            if bool(finished.all()):
                break
        ranked = scores / lengths.view(B, k).to(scores.dtype).clamp(min=1) ** length_penalty
        best = ranked.argmax(dim=-1) + torch.arange(B, device=src.device) * k
        return [_strip(row) for row in seqs[best].tolist()]


def _ids(a):
    """A long tensor of ``a`` (a tensor, NumPy array or list of ids)."""
    return a.long() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a), dtype=torch.long)


def _top(state):
    """The top decoder layer's hidden state (B, H) from a GRU/RNN h or an LSTM (h, c)."""
    return (state[0] if isinstance(state, tuple) else state)[-1]


def _select(state, index):
    """The decoder state's batch rows ``index`` (for the beam: each slot's parent)."""
    return tuple(s[:, index] for s in state) if isinstance(state, tuple) else state[:, index]


def _strip(ids: list[int]) -> list[int]:
    """Ids up to the first EOS, which is dropped (a finished beam's PADs come after it)."""
    return ids[:ids.index(EOS)] if EOS in ids else ids


def from_rnnfast(model) -> TorchSeq2Seq:
    """A TorchSeq2Seq in eval mode with a copy of ``model``'s (an ``rf.models.seq2seq.Seq2Seq``)
    weights and dtype."""
    config = {k: v for k, v in model.config().items()
              if k in ("src_vocab_size", "tgt_vocab_size", "hidden_size", "num_layers", "cell", "decoder_cell",
                       "bidirectional", "attention", "embedding_dim")}
    return from_state_dict(model.state_dict(), **config)


def from_state_dict(weights: dict, **config) -> TorchSeq2Seq:
    """A TorchSeq2Seq(**config) in eval mode holding ``weights`` (name -> NumPy array), in their dtype."""
    ref = TorchSeq2Seq(**config)
    ref = ref.to(torch.from_numpy(np.asarray(weights["head.bias"])).dtype)
    ref.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    return ref.eval()

