"""``rnnfast bench --sweep``: the whole training step over the hidden size and the sequence length,
time per step and peak memory of a step, rnnfast beside PyTorch, drawn to ``sweep.png``.

Each point is a ``train-step`` (``bench/train_step.py``: checked against PyTorch, then timed in
alternating rounds) plus the peak memory of the same step in fresh processes (``bench/memory.py``).
"""
from __future__ import annotations

from pathlib import Path

from rnnfast.bench.memory import bench_memory
from rnnfast.bench.scenarios import Scenario
from rnnfast.bench.train_step import bench_train_step

# Timed rounds per point take about this long (and never fewer than 3): the small points get the
# usual repeats, T=2048 and H=1024 (one to two seconds a step on two cores) get 3.
POINT_BUDGET_S = 15.0
LIBRARIES = (("rnnfast", ""), ("PyTorch", "torch_"))


def bench_sweep_point(s: Scenario, repeats: int, with_torch: bool) -> dict:
    """A train-step row (``ms``, ``torch_ms``, ``ratio``, ...) with the step's peak extra memory:
    ``peak_mib``, ``torch_peak_mib`` and ``mem_ratio`` (PyTorch / rnnfast)."""
    result = bench_train_step(s, repeats, with_torch, budget_s=POINT_BUDGET_S)
    memory = bench_memory(s, with_torch)
    result.update(peak_mib=memory["peak_mib"], memory_method=memory["method"])
    if with_torch:
        result.update(torch_peak_mib=memory["torch_peak_mib"], mem_ratio=memory["ratio"])
    return result


def _figure():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError("the sweep's plot needs matplotlib: pip install matplotlib "
                           '(or pip install "rnnfast[plot]"); the table above has the same numbers') from None
    return Figure(figsize=(10, 7.5), dpi=100, layout="tight")


def plot_sweep(results, path) -> Path:
    """Draw time per step and peak memory against H (at T=64) and against T (at H=256) for both
    libraries, one line per library and cell, to the PNG ``path``. Returns the path written."""
    rows = [r for r in results if r.get("kind") == "sweep" and "error" not in r]
    if not rows:
        raise RuntimeError("no sweep point finished, so there is nothing to plot; see the errors in the table")
    fig = _figure()
    axes = fig.subplots(2, 2)
    panels = ((lambda r: r["T"] == 64, "H", "hidden size H (T=64)"),
              (lambda r: r["H"] == 256, "T", "sequence length T (H=256)"))
    for column, (chosen, size, label) in enumerate(panels):
        for row, (field, unit) in enumerate((("ms", "ms per step"), ("peak_mib", "peak MiB of a step"))):
            ax = axes[row, column]
            sizes = set()
            for cell in dict.fromkeys(r["cell"] for r in rows):
                points = sorted((r[size], r) for r in rows if r["cell"] == cell and chosen(r))
                for library, prefix in LIBRARIES:
                    xs = [x for x, r in points if prefix + field in r]
                    if xs:
                        ax.plot(xs, [r[prefix + field] for _, r in points if prefix + field in r], "o-", ms=4,
                                label=f"{library} {cell}")
                        sizes.update(xs)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sorted(sizes), [str(x) for x in sorted(sizes)])
            ax.tick_params(axis="x", which="minor", bottom=False)
            ax.set(xlabel=label, ylabel=unit)
            ax.grid(True, which="both", alpha=0.3)
            if sizes:
                ax.legend(fontsize=8)
    first = rows[0]
    fig.suptitle(f"training step of a {first['layers']}-layer character model, B={first['B']}, vocabulary "
                 f"{first['vocab']}")
    path = Path(path)
    fig.savefig(path)
    return path
