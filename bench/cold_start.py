"""The first run after install: ``rnnfast train --steps 1`` and then ``rnnfast generate`` from its
checkpoint, each a fresh process, first with the compiled-kernel cache empty and then warm.

Cold: ``NUMBA_CACHE_DIR`` is a new empty folder, so Numba compiles every kernel the command needs
(the kernels' caches beside their sources are not read while it is set, and not touched). Warm: the
same two commands again with that folder as the first pair left it. The times are wall clock from
the start of the process to its exit: interpreter, imports, reading the corpus, compiling or
loading kernels, the work itself and writing checkpoints.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rnnfast.bench.scenarios import Scenario


def cli_command() -> tuple[list[str], str]:
    """How to run the ``rnnfast`` command of this Python: its console script when installed beside
    the interpreter, else the same entry point (``rnnfast.cli:main``) through ``python -c``."""
    script = Path(sys.executable).with_name("rnnfast")
    if script.is_file():
        return [str(script)], "rnnfast"
    return [sys.executable, "-c", "import sys; from rnnfast.cli import main; sys.exit(main())"], \
        "python -c 'rnnfast.cli.main()'"


def _timed(rnnfast: list[str], args: list[str], env: dict) -> float:
    """Wall seconds of the process ``rnnfast args``; its last line of output in the error if it fails."""
    start = time.perf_counter()
    out = subprocess.run(rnnfast + args, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        last = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"`rnnfast {' '.join(args)}` failed (exit {out.returncode}): {last}")
    return seconds


def bench_cold_start(s: Scenario) -> dict:
    """Seconds of ``train --steps 1`` (the default corpus, ``s.layers`` x ``s.H`` ``s.cell``) and of
    ``generate --length s.chars`` from its best checkpoint, cold and then warm."""
    rnnfast, how = cli_command()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "numba-cache"))
        for warmth in ("cold", "warm"):
            run = os.path.join(tmp, f"run-{warmth}")
            result[f"{warmth}_train_s"] = _timed(
                rnnfast, ["train", "--steps", "1", "--cell", s.cell.split("_")[0], "--hidden", str(s.H),
                          "--layers", str(s.layers), "--out", run, "--no-progress"], env)
            result[f"{warmth}_generate_s"] = _timed(
                rnnfast, ["generate", os.path.join(run, "best.safetensors"), "--length", str(s.chars),
                          "--seed", "0"], env)
    result["method"] = (f"fresh processes of `{how} train --steps 1` then `{how} generate --length {s.chars}`, "
                        "empty NUMBA_CACHE_DIR, then both again with it warm")
    return result
