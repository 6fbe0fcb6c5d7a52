"""Benchmarks: rnnfast against PyTorch on the same shapes, in the same process.

    >>> from rnnfast.bench import run_bench, format_table      # doctest: +SKIP
    >>> print(format_table(run_bench(cells=["lstm"])))          # doctest: +SKIP

``python -m rnnfast.bench [--full | --sweep] [--json PATH] [--cells lstm gru ...]`` and ``rnnfast bench``
run the same scenarios (``bench/scenarios.py``); ``bench/harness.py`` says how they are timed. What a
user's job costs has its own modules: ``train_step.py`` (the whole training step), ``time_to_loss.py``,
``cold_start.py`` and ``sweep.py``, against the PyTorch model of ``torch_reference.py``.
"""

__all__ = ["run_bench", "format_table"]


def __getattr__(name):
    # The harness imports PyTorch (a second or more); importing rnnfast.bench.scenarios, as the
    # command line does at start-up, must not pay for it.
    if name in __all__:
        from rnnfast.bench import harness
        return getattr(harness, name)
    raise AttributeError(f"module 'rnnfast.bench' has no attribute {name!r}")
