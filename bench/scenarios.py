"""Benchmark scenarios as data: what to run, never how.

A scenario names a cell, a shape and a kind:

- ``fwd``: forward of a layer; ``fwd+bwd``: forward alone and forward plus backward (both timed,
  so one row gives both numbers);
- ``generate``: per-character sampling latency of a character model (batch 1);
- ``memory``: peak memory of one training step (forward + backward) of a layer;
- ``cold-generate``: wall time of a fresh process that loads a model and generates ``chars``
  characters, with the compiled-kernel cache cold and then warm.

Cells are ``lstm``, ``gru``, ``rnn_tanh`` and ``rnn_relu``. Shapes are (T, B, I, H); ``layers`` and
``directions`` stack as in ``rnnfast.LSTM(num_layers=..., bidirectional=...)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
KINDS = ("fwd", "fwd+bwd", "generate", "memory", "cold-generate")


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
    vocab: int = 0      # generate / cold-generate: vocabulary size V
    chars: int = 0      # generate / cold-generate: characters sampled

    @property
    def name(self) -> str:
        if self.kind in ("generate", "cold-generate"):
            return f"{self.kind} {self.cell} L={self.layers} H={self.H} V={self.vocab} N={self.chars}"
        extra = "".join([f" L={self.layers}" if self.layers > 1 else "",
                         " bidir" if self.directions == 2 else "",
                         f" {self.dtype}" if self.dtype != "float32" else ""])
        return f"{self.kind} {self.cell} ({self.T},{self.B},{self.I},{self.H}){extra}"

    def as_dict(self) -> dict:
        return asdict(self)


# The target shapes (T, B, I, H).
TARGET_SHAPES = ((100, 32, 128, 256), (100, 64, 512, 512), (50, 1, 128, 128))

_GENERATE = Scenario("lstm", "generate", layers=2, H=256, I=256, vocab=65, chars=200)
_COLD = Scenario("lstm", "cold-generate", layers=2, H=256, I=256, vocab=65, chars=200)


def _training(cells, shapes, dtype="float32"):
    return [Scenario(cell, "fwd+bwd", *shape, dtype=dtype) for shape in shapes for cell in cells]


# Quick: every target shape for the three cell families, generation and one memory check;
# about a minute and a half on a 2-core machine.
QUICK = (_training(("lstm", "gru", "rnn_tanh"), TARGET_SHAPES)
         + [_GENERATE, Scenario("lstm", "memory", 100, 64, 512, 512)])

# Full: every target of the issue, plus ReLU RNNs, stacked and bidirectional layers, float64
# and the cold-start generate.
FULL = (_training(CELLS, TARGET_SHAPES)
        + [Scenario(cell, "fwd+bwd", 100, 32, 128, 256, layers=2, directions=2) for cell in ("lstm", "gru")]
        + _training(("lstm",), ((50, 16, 64, 128),), dtype="float64")
        + [_GENERATE]
        + [Scenario(cell, "memory", 100, 64, 512, 512) for cell in ("lstm", "gru", "rnn_tanh")]
        + [Scenario("lstm", "memory", 100, 32, 128, 256, layers=2)]
        + [_COLD])


def select(full: bool = False, cells=None) -> list[Scenario]:
    """The quick or full set, restricted to ``cells`` (names from CELLS; "rnn" means both RNNs)."""
    chosen = FULL if full else QUICK
    if cells is None:
        return list(chosen)
    wanted = set()
    for cell in cells:
        names = ("rnn_tanh", "rnn_relu") if cell == "rnn" else (cell,)
        unknown = [n for n in names if n not in CELLS]
        if unknown:
            raise ValueError(f"unknown cell {cell!r}; choose from {', '.join(CELLS + ('rnn',))}")
        wanted.update(names)
    return [s for s in chosen if s.cell in wanted]
