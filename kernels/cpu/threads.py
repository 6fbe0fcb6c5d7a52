"""The CPU kernels' threads: work shared across the cores from Python, no parallel regions.

The recurrences give each core its own batch rows for the whole sequence, and large GEMMs give
each core a share of their tiles. Both run here on a small pool of Python threads while the
kernels have released the GIL (``nogil=True``, or a ctypes call into the compiled GEMM), instead
of in Numba ``prange`` loops: each ``parallel=True`` function was one more compiled copy of the
code it calls, and the first run compiled all of them (see ``gemm._core``).
"""
from concurrent.futures import ThreadPoolExecutor

from numba import config

THREADS = config.NUMBA_NUM_THREADS
_pool = None


def run_shared(fn, count):
    """Calls ``fn(k)`` for k in range(count) at once, k = 0 on the calling thread and the others on
    the pool; returns when all are done and re-raises the first error. ``fn`` must release the GIL
    for the calls to overlap."""
    global _pool
    if count <= 1:
        if count == 1:
            fn(0)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, THREADS - 1), thread_name_prefix="rnnfast")
    others = [_pool.submit(fn, k) for k in range(1, count)]
    try:
        fn(0)
    finally:
        for done in others:
            done.result()
