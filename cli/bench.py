"""``rnnfast bench``: the benchmark scenarios of ``bench/``, run from the command line."""
from __future__ import annotations

import json
from pathlib import Path

import click

from rnnfast.bench.scenarios import CELLS
from rnnfast.cli.common import Command, config_option, device_option, resolve_device


def _announce(row: dict) -> None:
    """Progress on stderr, so that stdout holds only the table or the JSON."""
    if row.get("kind") == "machine":
        against = f"against PyTorch {row['torch']}" if row.get("torch") else "rnnfast alone (PyTorch is not installed)"
        click.echo(f"{row.get('cpu', '?')}, {row.get('cores', '?')} cores: timing {against}", err=True)
    else:
        status = f"error: {row['error']}" if "error" in row else "done"
        click.echo(f"  {row['scenario']}: {status}", err=True)


@click.command("bench", cls=Command)
@device_option(default="cpu")
@click.option("--full", is_flag=True, help="Run every scenario (more cells, stacked, bidirectional, float64, "
                                           "memory, every training step, cold start, time-to-loss) instead of "
                                           "the quick set.")
@click.option("--sweep", is_flag=True, help="Instead: time the whole training step and its peak memory over the "
                                            "hidden size and the sequence length (2-layer LSTM unless --cell), "
                                            "and plot them to --plot.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=Path("sweep.png"),
              show_default=True, help="Where --sweep writes its plot (PNG; needs matplotlib).")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Corpus of the time-to-loss scenario (--full).  [default: ../shared/data/tinyshakespeare.txt "
                   "beside the checkout]")
@click.option("--cell", "cells", multiple=True, type=click.Choice(CELLS + ("rnn",)),
              help="Only scenarios for this cell (repeatable; rnn means rnn_tanh and rnn_relu).")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Timed rounds per scenario; the median is reported.  [default: 5 quick, 9 full]")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (one object per scenario, "
                                                      "the first describing the machine) instead of a table.")
@config_option
def bench(device, full, sweep, plot, data, cells, repeats, as_json):
    """Time layers, the whole training step and generation for each cell, against PyTorch when installed.

    Both libraries run the same shapes in the same process; their results are checked to agree
    before anything is timed. Prints Markdown tables of medians and ratios (PyTorch time / rnnfast
    time, above 1 means rnnfast is faster). The quick set takes about two minutes on two cores;
    --full adds the best validation loss after 150 s of training each and the first run with an
    empty kernel cache; --sweep draws the training step's time and memory against its size. The
    same scenarios run with: python -m rnnfast.bench.
    """
    device = resolve_device(device)
    if sweep and (full or device != "cpu"):
        raise click.UsageError("--sweep runs on its own on the CPU; drop --full / --device gpu")
    # Imported here: the harness imports PyTorch, which would slow every other command's start.
    from rnnfast.bench import format_table, run_bench

    try:
        results = run_bench(full=full, device=device, cells=list(cells) or None, repeats=repeats,
                            progress=_announce, data=data, sweep=sweep)
    except ValueError as exc:  # a cell the chosen set does not have
        raise click.UsageError(str(exc)) from None
    click.echo(json.dumps(results, indent=2) if as_json else format_table(results))
    if sweep:
        from rnnfast.bench.sweep import plot_sweep

        try:
            click.echo(f"wrote {plot_sweep(results, plot)}", err=True)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
