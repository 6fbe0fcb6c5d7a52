"""The whole training step of a character model, rnnfast against the same model written the usual
PyTorch way (``bench/torch_reference.py``).

rnnfast's step is :class:`rnnfast.Trainer`'s own, run one update at a time (``run(steps=step + 1)``):
``zero_grad`` -> ``CharRNN.train_step`` (embedding, the recurrent layers from the carried state,
linear head, mean cross-entropy, backward) -> the finiteness check -> ``clip_grad_norm(grads, CLIP)``
-> ``Adam(lr=LR).step``. Both sides start from
the same weights and read the same batches (each its own :class:`rnnfast.StreamBatcher` over one
stream of random ids); the state is carried between batches in both and forgotten in both when the
streams start over. Each ``run`` call also pays the setup a user's run pays once (installing and
restoring the Ctrl-C handler, the result dict): 0.1-0.2 ms measured on the loaded 2-core machine,
about 1% of the smallest step here, counted against rnnfast.

Before timing, one step from the same weights on the same batch must give the same loss, the same
(clipped) gradients and the same updated weights, within the harness's ``TOLERANCE``; a
disagreement raises, so the row is an error, never a ratio.
"""
from __future__ import annotations

import numpy as np

import rnnfast as rf
from rnnfast.bench.harness import TOLERANCE, paired_ratio, time_alternating
from rnnfast.bench.scenarios import TRAIN_CELLS, Scenario
from rnnfast.testing import rel_err

# rnnfast train's defaults (cli/train.py), the step a user's run takes.
LR, CLIP = 2e-3, 5.0
# Batches in the random stream: enough that consecutive steps read different data, few enough that
# the ids of the largest sweep point (T=2048) stay a few MB.
STREAM_BATCHES = 4


def build_model(s: Scenario) -> rf.models.CharRNN:
    """The scenario's CharRNN: vocabulary ``s.vocab``, ``s.layers`` x ``s.H``, embedding dim ``s.I``,
    no dropout, seed 0."""
    if s.cell not in TRAIN_CELLS:
        raise ValueError(f"the character model has cells {', '.join(TRAIN_CELLS)}, not {s.cell!r}")
    return rf.models.CharRNN(s.vocab, hidden_size=s.H, num_layers=s.layers, cell=s.cell.split("_")[0],
                             embedding_dim=s.I, dtype=np.dtype(s.dtype), seed=0)


def random_stream(s: Scenario, seq_len: int | None = None) -> np.ndarray:
    """(N,) random ids in [0, s.vocab): STREAM_BATCHES batches of (seq_len or s.T, s.B)."""
    T = seq_len or s.T
    return np.random.default_rng(2).integers(0, s.vocab, s.B * (STREAM_BATCHES * T + 1)).astype(np.int32)


def build_pair(s: Scenario, ids: np.ndarray, with_torch: bool, **trainer_kwargs):
    """rnnfast's Trainer (Adam(LR), clipping at CLIP: a user's run; ``trainer_kwargs`` such as
    ``val_data`` go to it) of the scenario's model and PyTorch's TorchTrainer (None without PyTorch)
    of a copy of its initial weights, each reading its own StreamBatcher of (s.T, s.B) batches over ``ids``."""
    model = build_model(s)
    reference = None
    if with_torch:
        from rnnfast.bench.torch_reference import TorchTrainer, from_rnnfast

        reference = TorchTrainer(from_rnnfast(model), rf.StreamBatcher(ids, s.B, s.T), lr=LR, clip=CLIP)
    trainer = rf.Trainer(model, rf.optim.Adam(lr=LR), rf.StreamBatcher(ids, s.B, s.T), clip=CLIP, **trainer_kwargs)
    return trainer, reference


def one_update(trainer: rf.Trainer) -> float:
    """One optimizer update through the trainer's own loop; returns its loss."""
    return trainer.run(steps=trainer.step + 1)["losses"][0]


def check_step(trainer: rf.Trainer, reference, tol: float) -> float:
    """One step of each of a fresh :func:`build_pair` (the same weights, the same first batch).
    Returns the largest relative error over the loss, every clipped gradient and every updated
    weight; raises past ``tol``."""
    from rnnfast.bench.torch_reference import torch_grads

    errors = {"loss": rel_err(one_update(trainer), reference.one_step())}
    model, grads, weights = trainer.model, torch_grads(reference.model), reference.model.state_dict()
    errors.update({f"d{k}": rel_err(g, grads[k]) for k, g in model.grads.items()})
    errors.update({f"updated {k}": rel_err(p, weights[k].numpy()) for k, p in model.params.items()})
    worst = max(errors, key=errors.get)
    if errors[worst] > tol:
        raise AssertionError(f"rnnfast and PyTorch disagree after one training step on {worst}: "
                             f"relative error {errors[worst]:.2e} > {tol}")
    return errors[worst]


def bench_train_step(s: Scenario, repeats: int, with_torch: bool, budget_s: float | None = None) -> dict:
    """ms per step and tokens/s of both libraries, ratio = PyTorch time / rnnfast time (paired
    median), after :func:`check_step`. ``budget_s`` caps the timed rounds (at least 3)."""
    trainer, reference = build_pair(s, random_stream(s), with_torch)
    result = {"max_rel_err": check_step(trainer, reference, TOLERANCE[s.dtype])} if with_torch else {}
    fns = {"rnnfast": lambda: one_update(trainer)}
    if with_torch:
        fns["torch"] = reference.one_step
    samples = time_alternating(fns, repeats, budget_s)
    tokens = s.T * s.B
    for side, prefix in (("rnnfast", ""), ("torch", "torch_")):
        if side in samples:
            seconds = float(np.median(samples[side]))
            result.update({f"{prefix}ms": seconds * 1e3, f"{prefix}tokens_per_s": tokens / seconds})
    if with_torch:
        result["ratio"] = paired_ratio(samples, "torch", "rnnfast")
    return result
