"""``rnnfast bench``: the benchmark scenarios of ``bench/``, run from the command line."""
from __future__ import annotations

import json

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
                                           "memory, cold start) instead of the quick set.")
@click.option("--cell", "cells", multiple=True, type=click.Choice(CELLS + ("rnn",)),
              help="Only scenarios for this cell (repeatable; rnn means rnn_tanh and rnn_relu).")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Timed rounds per scenario; the median is reported.  [default: 5 quick, 9 full]")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (one object per scenario, "
                                                      "the first describing the machine) instead of a table.")
@config_option
def bench(device, full, cells, repeats, as_json):
    """Time forward, forward+backward and generation for each cell, against PyTorch when installed.

    Both libraries run the same shapes in the same process; their results are checked to agree
    before anything is timed. Prints a Markdown table of medians and ratios (PyTorch time / rnnfast
    time, above 1 means rnnfast is faster). The quick set takes about a minute and a half on two
    cores. The same scenarios run with: python -m rnnfast.bench.
    """
    device = resolve_device(device)
    # Imported here: the harness imports PyTorch, which would slow every other command's start.
    from rnnfast.bench import format_table, run_bench

    results = run_bench(full=full, device=device, cells=list(cells) or None,
                        repeats=repeats, progress=_announce)
    click.echo(json.dumps(results, indent=2) if as_json else format_table(results))
