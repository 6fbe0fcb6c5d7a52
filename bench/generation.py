"""Generation latency: per-character sampling of a character model, batch 1.

``CharRNN.sample`` (on the CPU one compiled loop, ``rnnfast.kernels.cpu.generate``) against the usual
PyTorch sampling loop (the model of ``bench/torch_reference.py``), one step per character:
``Embedding`` -> ``nn.LSTM`` (state carried) -> ``Linear`` -> ``softmax`` -> ``multinomial``, under
``no_grad``. The two draw different random numbers, so
agreement is checked by teacher forcing: PyTorch reads rnnfast's ids and, with rnnfast's uniforms
and the same inverse-CDF rule, must pick the same next id (``id_agreement``, ids that land within
rounding of a boundary may differ).
"""
from __future__ import annotations

import numpy as np

import rnnfast as rf


def rnnfast_sampler(model, chars: int):
    """A no-argument function that samples ``chars`` ids after a one-id prime, batch 1, through the
    public ``CharRNN.sample`` (on the CPU its whole loop is one compiled call). Returns (1, chars) ids."""
    prime = np.zeros(1, np.int64)

    def sample():
        return model.sample(prime, chars, seed=0, compiled=True)[None, 1:]

    return sample


def torch_sampler(model, chars: int):
    """PyTorch's step-by-step sampler with the same weights, and the teacher-forced id agreement."""
    import torch

    from rnnfast.bench.torch_reference import from_rnnfast

    ref = from_rnnfast(model)
    embed, rnn, head = ref.embed, ref.rnn, ref.head

    @torch.no_grad()
    def sample():
        token = torch.zeros((1, 1), dtype=torch.long)
        state = None
        out = []
        for _ in range(chars):
            y, state = rnn(embed(token), state)
            probs = torch.softmax(head(y[0]), dim=-1)
            token = torch.multinomial(probs, 1)
            out.append(token)
        return torch.cat(out, dim=1)

    ids = rnnfast_sampler(model, chars)()[0]
    uniforms = rf.random.uniform((1, chars), 0, stream=0, dtype=np.float64)[0]
    with torch.no_grad():
        tokens = torch.from_numpy(np.concatenate([[0], ids[:-1]])).long()[:, None]
        y, _ = rnn(embed(tokens))
        probs = torch.softmax(head(y[:, 0]).double(), dim=-1).numpy()
    chosen = (np.cumsum(probs, axis=1) > uniforms[:, None] * probs.sum(axis=1, keepdims=True)).argmax(axis=1)
    return sample, float(np.mean(chosen == ids))
