"""PNG plots of a run, drawn when matplotlib is installed (the ``plot`` extra) and skipped otherwise."""
from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np


def _import_matplotlib():
    try:
        import matplotlib.backends.backend_agg  # noqa: F401  (what Figure.savefig draws a PNG with)
        import matplotlib.figure  # noqa: F401
    except ImportError:
        pass


def preload() -> None:
    """Start importing matplotlib in the background: its import takes 1-2 s, and a training run
    spends that time in compiled kernels, which do not hold the GIL."""
    threading.Thread(target=_import_matplotlib, name="rnnfast-import-matplotlib", daemon=True).start()


def _figure():
    """A matplotlib Figure, or None without matplotlib. Figure() needs no GUI backend or pyplot state."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(figsize=(8, 4.5), dpi=100, layout="tight")


def plot_losses(metrics_path: Path, png_path: Path, title: str, baseline: float | None = None,
                baseline_name: str = "") -> bool:
    """Training and validation loss against step, from a run's metrics.jsonl (a resumed run's whole history)."""
    fig = _figure()
    if fig is None:
        return False
    steps, losses, val_steps, val_losses = [], [], [], []
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["event"] == "step":
                steps.append(record["step"])
                losses.append(record["loss"])
            elif record["event"] == "eval":
                val_steps.append(record["step"])
                val_losses.append(record["val_loss"])
    ax = fig.add_subplot()
    ax.plot(steps, losses, lw=0.8, alpha=0.6, label="training loss")
    ax.plot(val_steps, val_losses, "o-", ms=3, label="validation loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1, label=f"{baseline_name} baseline")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(png_path)
    return True


def plot_forecast(pred: np.ndarray, truth: np.ndarray, png_path: Path, title: str) -> bool:
    """One-step-ahead predictions against the true values over the validation windows (original units)."""
    fig = _figure()
    if fig is None:
        return False
    ax = fig.add_subplot()
    ax.plot(truth, lw=1, label="truth")
    ax.plot(pred, lw=1, label="prediction")
    ax.set(xlabel="validation window", ylabel="value", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(png_path)
    return True


def plot_future(history: np.ndarray, future: np.ndarray, title: str, ylabel: str, first: int = 0) -> bytes | None:
    """PNG bytes of a series and its forecast past the end, the future shaded (original units); None
    without matplotlib. history: (N,) values of the series from its row ``first`` to its end;
    future: (S,) the forecast of the rows after it."""
    fig = _figure()
    if fig is None:
        return None
    end = first + len(history)  # the first future row
    ax = fig.add_subplot()
    ax.plot(np.arange(first, end), history, lw=1, label="history")
    # drawn from the last known value, so that the forecast continues the line
    ax.plot(np.arange(end - 1, end + len(future)), np.concatenate([history[-1:], future]), lw=1.5, label="forecast")
    ax.axvspan(end - 1, end - 1 + len(future), color="gray", alpha=0.15, lw=0, label="future")
    ax.set(xlabel="row of the series", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    return png.getvalue()


def plot_search_history(points: list[tuple[int, float, str]], title: str, ylabel: str) -> bytes | None:
    """PNG bytes of a hyper-parameter search: each trial's loss against its number, complete trials
    as dots with the best so far as a line, pruned ones as crosses at their last loss; None without
    matplotlib. points: (trial number, loss, "complete" | "pruned")."""
    fig = _figure()
    if fig is None:
        return None
    ax = fig.add_subplot()
    complete = sorted((n, loss) for n, loss, state in points if state == "complete")
    pruned = [(n, loss) for n, loss, state in points if state == "pruned"]
    if complete:
        numbers, losses = zip(*complete)
        ax.plot(numbers, losses, "o", ms=5, label="complete trial")
        ax.step(numbers, np.minimum.accumulate(losses), where="post", lw=1.5, label="best so far")
    if pruned:
        ax.plot(*zip(*pruned), "x", color="gray", ms=6, label="pruned trial (its last loss)")
    ax.set(xlabel="trial", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    return png.getvalue()


def _visible(token: str) -> str:
    """A token as a tick label: a space (a character model's) drawn as an open box, so it shows."""
    return token.replace(" ", "\u2423")


def plot_attention(weights: np.ndarray, sources: list[str], targets: list[str], title: str) -> bytes | None:
    """PNG bytes of a translation's attention, each written token's weights over the source tokens
    as one row of a heat map, labelled with the tokens; None without matplotlib. weights: (T, S),
    rows summing to 1; sources: the S source tokens; targets: the T tokens written."""
    fig = _figure()
    if fig is None:
        return None
    rows, cols = weights.shape
    # about a third of an inch a token, so that the labels do not overlap, within a readable page
    fig.set_size_inches(min(20.0, max(4.0, 2.0 + 0.32 * cols)), min(20.0, max(3.0, 1.5 + 0.32 * rows)))
    ax = fig.add_subplot()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    words = max(map(len, sources), default=1) > 2  # long labels stand upright, side by side
    ax.set_xticks(np.arange(cols), [_visible(t) for t in sources], rotation=90 if words else 0)
    ax.set_yticks(np.arange(rows), [_visible(t) for t in targets])
    ax.set(xlabel="source token", ylabel="translation token", title=title)
    fig.colorbar(image, ax=ax, label="attention weight")
    png = io.BytesIO()
    fig.savefig(png, format="png")
    return png.getvalue()
