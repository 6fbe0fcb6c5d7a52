"""The watcher of a data-parallel run's ranks on one host (started by rnnfast.parallel's
``World.watch``, run by its path so that it imports nothing but the standard library).

A collective with a dead rank can wait forever, and MPICH's mpiexec ends the others with a banner
naming a PID, not a rank. This process hears each rank's exit the moment it happens (a pidfd per
rank), and reads the word each rank leaves when it exits through Python ("ok" or "error"). A rank
gone without word died (SIGKILL, a crash below Python); one that left "error" while the others still
run after ERROR_GRACE_S failed alone. Either way it prints one line naming the rank and ends the
ranks still waiting (SIGKILL: they wait inside MPI's C code, where no Python handler runs); rank 0
writes checkpoints atomically, so the last one is whole.

    python rnnfast/watch.py FOLDER RANK:PID [RANK:PID ...]
"""
import os
import select
import signal
import sys
import time
from pathlib import Path

# A rank that stopped with an error of its own leaves the others waiting in the next collective;
# one whose error they all share (a NaN loss) is followed by them within this many seconds.
ERROR_GRACE_S = 3.0


def watch(folder: Path, ranks: dict[int, int]) -> None:
    """The watcher: wait for the ranks (rank -> pid) to end; when one died (no word left) or failed
    while the others still run, print one line naming it and end the others (SIGKILL: they wait in
    MPI's C code, where no Python handler runs)."""
    fds, alive, failed_at = {}, set(ranks), None
    for rank, pid in ranks.items():
        try:
            fds[os.pidfd_open(pid)] = rank
        except ProcessLookupError:  # gone already: its word (or none) is read below
            fds[os.open(os.devnull, os.O_RDONLY)] = rank
    while alive:
        timeout = None if failed_at is None else max(0.0, failed_at[1] + ERROR_GRACE_S - time.monotonic())
        ready, _, _ = select.select(list(fds), [], [], timeout)
        died = []
        for fd in ready:
            rank = fds.pop(fd)
            os.close(fd)
            alive.discard(rank)
            word = folder / f"rank-{rank}.end"
            if not word.exists():
                died.append(rank)
            elif word.read_text() != "ok" and failed_at is None:
                failed_at = (rank, time.monotonic())
        if died:  # several at once: mpiexec may already have ended the others, so all are named
            return _stop_the_rest(folder, ranks, alive, died, "died (killed, or crashed below Python)", False)
        if failed_at is not None and alive and time.monotonic() >= failed_at[1] + ERROR_GRACE_S:
            return _stop_the_rest(folder, ranks, alive, [failed_at[0]], "stopped with an error the others did not have",
                                  True)
    _clean_up(folder)


def _stop_the_rest(folder: Path, ranks: dict, alive: set, culprits: list[int], what: str, quote: bool) -> None:
    """Print the line naming ``culprits`` (with the last line of its stderr when ``quote``: its
    error), then end the ranks still ``alive``."""
    run_dir = folder / "run_dir"
    where = run_dir.read_text() if run_dir.exists() else None
    log = folder / f"rank-{culprits[0]}.log"
    last = log.read_text(errors="replace").strip().splitlines()[-1:] if quote and log.exists() else []
    said = f" ({last[0]})" if last else ""
    kept = (f"; the last checkpoint is whole: continue with rnnfast train --resume {where}/latest.safetensors"
            if where else "")
    who = " and ".join(f"{r} (pid {ranks[r]})" for r in culprits)
    print(f"rnnfast train: rank{'s' if len(culprits) > 1 else ''} {who} {what}{said}; stopping the other ranks{kept}",
          file=sys.stderr, flush=True)
    for other in alive:
        try:
            os.kill(ranks[other], signal.SIGKILL)
        except ProcessLookupError:
            pass
    _clean_up(folder)


def _clean_up(folder: Path) -> None:
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()


if __name__ == "__main__":
    watch(Path(sys.argv[1]), {int(r): int(p) for r, p in (a.split(":") for a in sys.argv[2:])})
