"""Benchmarks: rnnfast against PyTorch on the same shapes, in the same process.

    >>> from rnnfast.bench import run_bench, format_table      # doctest: +SKIP
    >>> print(format_table(run_bench(cells=["lstm"])))          # doctest: +SKIP

``python -m rnnfast.bench [--full] [--json PATH] [--cells lstm gru ...]`` and ``rnnfast bench``
run the same scenarios (``bench/scenarios.py``); ``bench/harness.py`` says how they are timed.
"""
from rnnfast.bench.harness import format_table, run_bench

__all__ = ["run_bench", "format_table"]
