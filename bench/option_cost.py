"""What each regulariser of the recurrent layers costs: the whole training step of a character
model with the option against the same model without it, timed in alternating rounds in one
process (``harness.time_alternating``). cost = option time / plain time, paired median; the goal
(issue 13) is at most 1.15 for the dropouts and zoneout and 1.40 for layer norm.

Both trainers are :mod:`rnnfast.bench.train_step`'s (Adam, clipping, the CLI's rates) over the same
random stream, from the same weights; the option's masks are drawn in every step, as in a run.
"""
from __future__ import annotations

import numpy as np

import rnnfast as rf
from rnnfast.bench.harness import paired_ratio, time_alternating
from rnnfast.bench.scenarios import Scenario
from rnnfast.bench.train_step import CLIP, LR, one_update, random_stream


def parse_option(option: str) -> dict:
    """``"zoneout=0.1"`` -> {"zoneout": 0.1}, ``"layer_norm=True"`` -> {"layer_norm": True}; several
    joined by ``+``."""
    out = {}
    for part in option.split("+"):
        name, value = part.split("=")
        out[name] = value == "True" if value in ("True", "False") else float(value)
    return out


def _trainer(s: Scenario, ids, **options) -> rf.Trainer:
    model = rf.models.CharRNN(s.vocab, hidden_size=s.H, num_layers=s.layers, cell=s.cell.split("_")[0],
                              embedding_dim=s.I, dtype=np.dtype(s.dtype), seed=0, **options)
    return rf.Trainer(model, rf.optim.Adam(lr=LR), rf.StreamBatcher(ids, s.B, s.T), clip=CLIP)


def bench_option_cost(s: Scenario, repeats: int, budget_s: float | None = None) -> dict:
    """ms per step with and without ``s.option``, and cost = with / without (paired median)."""
    ids = random_stream(s)
    plain, regularised = _trainer(s, ids), _trainer(s, ids, **parse_option(s.option))
    samples = time_alternating({"plain": lambda: one_update(plain), "option": lambda: one_update(regularised)},
                               repeats, budget_s)
    return {"plain_ms": float(np.median(samples["plain"])) * 1e3, "ms": float(np.median(samples["option"])) * 1e3,
            "cost": paired_ratio(samples, "option", "plain")}
