"""Generation scenarios: per-character sampling latency, and the cold start of a generating process.

Latency: ``CharRNN.sample`` (on the CPU one compiled loop, ``rnnfast.kernels.cpu.generate``) against the usual PyTorch
sampling loop, one step per character: ``Embedding`` -> ``nn.LSTM`` (state carried) -> ``Linear``
-> ``softmax`` -> ``multinomial``, under ``no_grad``. The two draw different random numbers, so
agreement is checked by teacher forcing: PyTorch reads rnnfast's ids and, with rnnfast's uniforms
and the same inverse-CDF rule, must pick the same next id (``id_agreement``, ids that land within
rounding of a boundary may differ).
"""
from __future__ import annotations

import os
import shutil
import string
import subprocess
import sys
import tempfile
import time

import numpy as np

import rnnfast as rf
from rnnfast.bench.scenarios import Scenario


def build_char_model(s: Scenario) -> rf.models.CharRNN:
    cell = "rnn" if s.cell.startswith("rnn") else s.cell
    return rf.models.CharRNN(vocab_size=s.vocab, hidden_size=s.H, num_layers=s.layers, cell=cell,
                             embedding_dim=s.I, seed=0).eval()


def rnnfast_sampler(model, chars: int):
    """A no-argument function that samples ``chars`` ids after a one-id prime, batch 1, through the
    public ``CharRNN.sample`` (on the CPU its whole loop is one compiled call). Returns (1, chars) ids."""
    prime = np.zeros(1, np.int64)

    def sample():
        return model.sample(prime, chars, seed=0)[None, 1:]

    return sample


def torch_sampler(model, chars: int):
    """PyTorch's step-by-step sampler with the same weights, and the teacher-forced id agreement."""
    import torch

    kind = model.rnn.cell
    H, L, V = model.rnn.hidden_size, model.rnn.num_layers, model.vocab_size
    p = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.params.items()}
    embed = torch.nn.Embedding(*p["embed.weight"].shape)
    embed.weight.data.copy_(p["embed.weight"])
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind](
        p["embed.weight"].shape[1], H, num_layers=L)
    rnn.load_state_dict({k[len("rnn."):]: v for k, v in p.items() if k.startswith("rnn.")})
    head = torch.nn.Linear(H, V)
    head.load_state_dict({"weight": p["head.weight"], "bias": p["head.bias"]})

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


# -- cold start ---------------------------------------------------------------------------------
_CHILD = """
import numpy as np, rnnfast as rf
model, meta = rf.models.load_model({path!r})
model.sample(np.array([0]), {chars}, seed=0)
"""


def _cold_command(path, chars):
    """``rnnfast generate`` when the command is installed, else the same work through ``python -c``."""
    exe = shutil.which("rnnfast")
    if exe:
        return [exe, "generate", path, "--length", str(chars), "--seed", "0"], "`rnnfast generate --length {chars}`"
    return [sys.executable, "-c", _CHILD.format(path=path, chars=chars)], "`python -c` loading the checkpoint and sampling {chars} chars"


def bench_cold_generate(s: Scenario) -> dict:
    """Wall time of a fresh process generating ``s.chars`` characters from a saved checkpoint, with the
    compiled-kernel cache empty (cold: NUMBA_CACHE_DIR a new empty folder) and then filled by that
    first run (warm)."""
    model = build_char_model(s)
    vocab = rf.Vocab(string.printable[: s.vocab] if s.vocab <= len(string.printable)
                     else [chr(0x100 + k) for k in range(s.vocab)])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.ckpt")
        rf.save_checkpoint(path, model.state_dict(), {"model": model.config(), "vocab": vocab.to_dict()})
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "numba-cache"))
        command, what = _cold_command(path, s.chars)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            times.append(time.perf_counter() - start)
            if out.returncode != 0:
                raise RuntimeError(f"the generating process failed: {out.stderr.strip()[-500:]}")
    return {"cold_s": times[0], "warm_s": times[1], "ms": times[1] * 1e3,
            "method": f"fresh process, {what.format(chars=s.chars)}, empty NUMBA_CACHE_DIR then the same again"}
