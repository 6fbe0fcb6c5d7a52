"""Benchmark scenarios as data: what to run, never how.

A scenario names a cell, a shape and a kind:

- ``fwd``: forward of a layer; ``fwd+bwd``: forward alone and forward plus backward (both timed,
  so one row gives both numbers);
- ``generate``: per-character sampling latency of a character model (batch 1);
- ``memory``: peak memory of one training step (forward + backward) of a layer;
- ``train-step``: the whole training step of a character model (``CharRNN``: embedding of size
  ``I`` -> ``layers`` recurrent layers of ``H`` -> linear head to ``vocab``; cross-entropy,
  backward, clipping, Adam) on a (T, B) batch, against the same model in PyTorch;
- ``sweep``: a ``train-step`` at one size of ``rnnfast bench --sweep``, with its peak memory;
- ``time-to-loss``: the best validation loss after ``seconds`` of training on the corpus ``data``
  ("" for tinyshakespeare beside the checkout), rnnfast's Trainer against a PyTorch loop,
  validating every ``eval_every`` steps;
- ``cold-start``: wall time of the first ``rnnfast train --steps 1`` and ``rnnfast generate``
  (``chars`` characters) in fresh processes, with the compiled-kernel cache empty and then warm.

Cells are ``lstm``, ``gru``, ``rnn_tanh`` and ``rnn_relu`` (the character model has no ReLU RNN).
Shapes are (T, B, I, H); ``layers`` and ``directions`` stack as in
``rnnfast.LSTM(num_layers=..., bidirectional=...)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
KINDS = ("fwd", "fwd+bwd", "generate", "memory", "train-step", "sweep", "time-to-loss", "cold-start", "option-cost")


@dataclass(frozen=True)
class Scenario:
    cell: str
    kind: str
    T: int = 1
    B: int = 1
    I: int = 1
    H: int = 1
    layers: int = 1
    directions: int = 1
    dtype: str = "float32"
    vocab: int = 0          # generate, train-step, sweep: vocabulary size V
    chars: int = 0          # generate, cold-start: characters sampled
    seconds: float = 0.0    # time-to-loss: training budget per library
    eval_every: int = 0     # time-to-loss: steps between validations
    data: str = ""          # time-to-loss: the corpus ("" for the one beside the checkout)
    option: str = ""        # option-cost: the layer's regulariser, "name=p" ("+" between several)

    @property
    def name(self) -> str:
        model = f"{self.cell} {self.layers}x{self.H}"
        if self.kind == "generate":
            return f"{self.kind} {self.cell} L={self.layers} H={self.H} V={self.vocab} N={self.chars}"
        if self.kind in ("train-step", "sweep"):
            return f"{self.kind} {model} B={self.B} T={self.T}"
        if self.kind == "time-to-loss":
            return f"{self.kind} {model} B={self.B} T={self.T} {self.seconds:g} s"
        if self.kind == "cold-start":
            return f"{self.kind} {model} N={self.chars}"
        if self.kind == "option-cost":
            return f"{self.kind} {model} B={self.B} T={self.T} {self.option}"
        extra = "".join([f" L={self.layers}" if self.layers > 1 else "",
                         " bidir" if self.directions == 2 else "",
                         f" {self.dtype}" if self.dtype != "float32" else ""])
        return f"{self.kind} {self.cell} ({self.T},{self.B},{self.I},{self.H}){extra}"

    def as_dict(self) -> dict:
        return asdict(self)


# The target shapes (T, B, I, H).
TARGET_SHAPES = ((100, 32, 128, 256), (100, 64, 512, 512), (50, 1, 128, 128))

_GENERATE = Scenario("lstm", "generate", layers=2, H=256, I=256, vocab=65, chars=200)

# The training step at (layers x hidden, B, T): the CLI's default model, a wider one, one wide layer.
TRAIN_SHAPES = ((2, 128, 32, 64), (2, 256, 32, 64), (1, 512, 64, 100))
TRAIN_CELLS = ("lstm", "gru", "rnn_tanh")
# The time-to-loss: an LSTM 2x256 at the CLI's batch and length, 150 s per library,
# validated at the CLI's default interval.
TIME_TO_LOSS = Scenario("lstm", "time-to-loss", T=64, B=32, I=256, H=256, layers=2, seconds=150.0, eval_every=100)
# rnnfast train's default model, then 200 characters from its checkpoint.
COLD_START = Scenario("lstm", "cold-start", I=128, H=128, layers=2, chars=200)


# What each regulariser costs in the training step of the CLI's default model (2x128, B=32, T=64),
# for each cell: recurrent dropout, weight drop and zoneout at typical rates, and layer norm.
OPTIONS = ("recurrent_dropout=0.25", "weight_drop=0.3", "zoneout=0.1", "layer_norm=True")


def option_costs(cells=TRAIN_CELLS) -> list[Scenario]:
    """One option-cost scenario per cell of ``cells`` and option of OPTIONS."""
    return [Scenario(cell, "option-cost", T=64, B=32, I=128, H=128, layers=2, vocab=65, option=option)
            for cell in cells for option in OPTIONS]


def _training(cells, shapes, dtype="float32"):
    return [Scenario(cell, "fwd+bwd", *shape, dtype=dtype) for shape in shapes for cell in cells]


def train_steps(cells, shapes=TRAIN_SHAPES, kind="train-step") -> list[Scenario]:
    """Training steps of a character model (vocabulary 65, embedding dim = hidden) at each
    (layers, H, B, T) of ``shapes``, for each cell."""
    return [Scenario(cell, kind, T=T, B=B, I=H, H=H, layers=layers, vocab=65)
            for layers, H, B, T in shapes for cell in cells if cell in TRAIN_CELLS]


# ``rnnfast bench --sweep``: a 2-layer model at B=32 over the hidden size (at T=64) and the sequence
# length (at H=256); the largest points take seconds a step.
SWEEP_HIDDEN = (64, 128, 256, 512, 1024)
SWEEP_LENGTH = (32, 128, 512, 2048)


def sweep(cells=("lstm",)) -> list[Scenario]:
    """The sweep's points: every H of SWEEP_HIDDEN at T=64, then every T of SWEEP_LENGTH at H=256."""
    shapes = [(2, H, 32, 64) for H in SWEEP_HIDDEN] + [(2, 256, 32, T) for T in SWEEP_LENGTH]
    return train_steps(cells, shapes, kind="sweep")


# Quick: every target shape for the three cell families, generation, one memory check (a minute and
# a half on a 2-core machine) and the training step at the two 2-layer shapes (28 s more, measured
# there). The cold start (31 s: 16 s of it compiling for the first train) stays in the full set.
QUICK = (_training(("lstm", "gru", "rnn_tanh"), TARGET_SHAPES)
         + [_GENERATE, Scenario("lstm", "memory", 100, 64, 512, 512)]
         + train_steps(TRAIN_CELLS, TRAIN_SHAPES[:2]))

# Full: every target of the issue, plus ReLU RNNs, stacked and bidirectional layers, float64,
# every training step, the cold start and time-to-loss (over five minutes of it).
FULL = (_training(CELLS, TARGET_SHAPES)
        + [Scenario(cell, "fwd+bwd", 100, 32, 128, 256, layers=2, directions=2) for cell in ("lstm", "gru")]
        + _training(("lstm",), ((50, 16, 64, 128),), dtype="float64")
        + [_GENERATE]
        + [Scenario(cell, "memory", 100, 64, 512, 512) for cell in ("lstm", "gru", "rnn_tanh")]
        + [Scenario("lstm", "memory", 100, 32, 128, 256, layers=2)]
        + train_steps(TRAIN_CELLS)
        + option_costs()
        + [COLD_START, TIME_TO_LOSS])


def _expand(cells) -> set[str]:
    """Cell names from CELLS, "rnn" meaning both RNNs; an unknown one is a ValueError."""
    wanted = set()
    for cell in cells:
        names = ("rnn_tanh", "rnn_relu") if cell == "rnn" else (cell,)
        unknown = [n for n in names if n not in CELLS]
        if unknown:
            raise ValueError(f"unknown cell {cell!r}; choose from {', '.join(CELLS + ('rnn',))}")
        wanted.update(names)
    return wanted


def select(full: bool = False, cells=None, sweep_points: bool = False) -> list[Scenario]:
    """The quick or full set (or with ``sweep_points`` the sweep's, LSTM unless ``cells`` say), restricted
    to ``cells`` (names from CELLS; "rnn" means both RNNs)."""
    if sweep_points:
        chosen = [c for c in TRAIN_CELLS if c in _expand(cells or ("lstm",))]
        if not chosen:
            raise ValueError(f"the sweep trains a character model, whose cells are {', '.join(TRAIN_CELLS)}")
        return sweep(chosen)
    chosen = FULL if full else QUICK
    if cells is None:
        return list(chosen)
    wanted = _expand(cells)
    return [s for s in chosen if s.cell in wanted]
