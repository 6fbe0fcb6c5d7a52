"""Data-parallel training over MPI (mpi4py): N processes train one model, each on its rows of the
global batch, and together they take exactly the steps one process takes on the whole batch.

    mpiexec -n 2 rnnfast train --batch-size 32 ...     # 16 rows a process, one model

What makes N processes equal one:

- the batch is the global one, and each rank takes its rows of it (:meth:`World.share`); the
  batchers' positions are global, so a checkpoint holds no rank's view of the data;
- each rank's model draws its dropout, zoneout and recurrent-dropout masks for its global rows
  (``Module.set_batch_rows``, rnnfast.random's ``rows``), the weight-drop masks (over ``W_hh``,
  not rows) the same on every rank;
- each rank's gradient of its rows' mean loss, weighted by its share of the batch, is summed over
  the ranks in one ``Allreduce`` over one flat buffer (:meth:`World.sum_step`), so every rank holds
  the global batch's gradient, clips it by the global norm and takes the same optimizer step;
- the hidden state carried between batches is gathered into its global batch for a checkpoint and
  cut into the ranks' rows on resume, so a run resumes exactly with any number of processes.

Without mpiexec (or with one process) :func:`world` is a world of one, mpi4py is not imported, and
every method leaves things as they are, so a run is the single-process run bit for bit.

When a rank dies, a collective with it can wait forever, and MPICH's mpiexec ends the others with
a banner naming a PID. :meth:`World.watch` starts one watcher process per host (``rnnfast/watch.py``) that hears each rank's exit at once (a pidfd per rank) and prints one line
naming the rank that died first, or that stopped with an error the others did not share, then
ends the ranks still waiting. Rank 0 writes checkpoints atomically, so the last one is whole.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from rnnfast.backend import get_array_module, to_numpy
from rnnfast.errors import RnnfastError

# What the MPI launchers tell their processes: MPICH's and Intel MPI's Hydra (PMI_*), Open MPI,
# MVAPICH. Read before importing mpi4py, which starts MPI (and is not needed without a launcher).
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
INSTALL_HINT = "pip install 'rnnfast[mpi]' (mpi4py and mpich)"


def launched_size() -> int:
    """How many processes the MPI launcher started this one among (1 when none did)."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def world() -> "World":
    """The processes training together: MPI's COMM_WORLD when a launcher started more than one,
    else a world of one. A launch of several without mpi4py is a RnnfastError naming the extra."""
    if launched_size() <= 1:
        return World()
    try:
        from mpi4py import MPI
    except ImportError:
        raise RnnfastError(f"started by mpiexec with {launched_size()} processes, but mpi4py is not installed; "
                           f"{INSTALL_HINT}") from None
    return World(MPI.COMM_WORLD)


class World:
    """This process's place among ``size`` processes training one model (``rank`` 0 writes)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self._buffer = None  # the flat buffer of sum_step, kept between steps
        self._watch_dir = None  # where this rank leaves word of how it ended (World.watch)
        self._ended_cleanly = False

    def rows(self, total: int) -> tuple[int, int]:
        """This rank's rows ``start:stop`` of a batch of ``total``: shares as equal as they can be."""
        return self.rank * total // self.size, (self.rank + 1) * total // self.size

    def share(self, batch, batch_axis: int, row_weights=None) -> tuple[tuple, tuple[int, int], float]:
        """This rank's part of a global ``batch`` (a tuple of arrays whose ``batch_axis`` runs over
        the rows): the part, its rows ``(start, total)`` and its share of the batch's mean (its rows
        over the total, or with ``row_weights(batch) -> (total,)``, what each row counts in the
        mean, its rows' part of their sum: a translator's loss is a mean over target tokens, not
        rows). A rank left no rows (the last, short batch of an epoch) runs row 0 with a share of
        0: its step then draws the same masks as the others', so its streams stay theirs."""
        total = batch[0].shape[batch_axis]
        start, stop = self.rows(total)
        if row_weights is None:
            share = (stop - start) / total
        else:
            weights = np.asarray(row_weights(batch), dtype=np.float64)
            share = float(weights[start:stop].sum() / weights.sum())
        if stop == start:
            start, stop = 0, 1
        cut = (slice(None),) * batch_axis + (slice(start, stop),)
        return tuple(np.ascontiguousarray(a[cut]) if isinstance(a, np.ndarray) else a[cut] for a in batch), \
            (start, total), share

    def sum_step(self, grads: dict, share: float, scalars) -> list[float]:
        """Every rank's ``share`` x ``grads`` summed over the ranks, into ``grads`` on every rank, and
        ``scalars`` summed, in one Allreduce over one flat buffer (in the gradients' dtype, so a
        float32 model's scalars are float32 numbers); returns the summed scalars."""
        from mpi4py import MPI

        arrays = list(grads.values())
        n = sum(g.size for g in arrays)
        dtype = arrays[0].dtype
        if self._buffer is None or self._buffer.size != n + len(scalars) or self._buffer.dtype != dtype:
            self._buffer = np.empty(n + len(scalars), dtype)
        buf, offset = self._buffer, 0
        for g in arrays:
            part = buf[offset: offset + g.size]
            np.multiply(to_numpy(g).reshape(-1), share, out=part, casting="unsafe")
            offset += g.size
        buf[n:] = scalars
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        offset = 0
        for g in arrays:
            g[...] = get_array_module(g).asarray(buf[offset: offset + g.size].reshape(g.shape))
            offset += g.size
        return [float(v) for v in buf[n:]]

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank (a JSON-able result, such as a validation's metrics)."""
        return value if self.size == 1 else self.comm.bcast(value, root=0)

    def gather_rows(self, arrays: dict, axis: int) -> dict | None:
        """On rank 0, each array of every rank's ``arrays`` joined along ``axis`` in rank order (the
        global batch's carried state from the ranks' rows); None on the other ranks."""
        if self.size == 1:
            return arrays
        parts = self.comm.gather(arrays, root=0)
        if self.rank != 0:
            return None
        return {name: np.concatenate([p[name] for p in parts], axis=axis) for name in arrays}

    def rows_of(self, arrays: dict, axis: int) -> dict:
        """This rank's rows of each array of a global batch (the inverse of :meth:`gather_rows`)."""
        if self.size == 1:
            return arrays
        out = {}
        for name, a in arrays.items():
            start, stop = self.rows(a.shape[axis])
            out[name] = np.ascontiguousarray(a[(slice(None),) * axis + (slice(start, stop),)])
        return out

    # -- faults ---------------------------------------------------------------------------------
    def watch(self) -> None:
        """Start this host's watcher (on the host's first rank) and, on every rank, leave word at
        exit of how it ended (:meth:`end_cleanly` before a clean end), so that the watcher tells a
        rank that died or failed alone from a run that ended. Also sends this rank's stderr, when
        it is not rank 0, to the watcher's folder, whence the watcher shows its last line."""
        if self.size == 1:
            return
        from mpi4py import MPI

        host = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        ranks = host.gather((self.rank, os.getpid()), root=0)
        folder = tempfile.mkdtemp(prefix="rnnfast-ranks-") if host.Get_rank() == 0 else None
        self._watch_dir = Path(host.bcast(folder, root=0))
        if host.Get_rank() == 0:
            # its own session: mpiexec's clean-up of the ranks does not take it along
            # by its path, so that it starts without importing rnnfast (NumPy, Numba)
            subprocess.Popen([sys.executable, str(Path(__file__).with_name("watch.py")), str(self._watch_dir),
                              *(f"{rank}:{pid}" for rank, pid in ranks)],
                             stdin=subprocess.DEVNULL, start_new_session=True)
        host.Free()
        atexit.register(self._leave_word)

    def log_path(self) -> Path | None:
        """Where this rank's stderr goes when it is not rank 0 (None before :meth:`watch`)."""
        return None if self._watch_dir is None else self._watch_dir / f"rank-{self.rank}.log"

    def tell_run_dir(self, path) -> None:
        """Name the run directory for the watcher's message (rank 0)."""
        if self._watch_dir is not None and self.rank == 0:
            (self._watch_dir / "run_dir").write_text(str(path))

    def end_cleanly(self) -> None:
        """Say that this rank's run ended as it should (not by an error), just before it does."""
        self._ended_cleanly = True

    def _leave_word(self) -> None:
        try:
            (self._watch_dir / f"rank-{self.rank}.end").write_text("ok" if self._ended_cleanly else "error")
        except OSError:
            pass
