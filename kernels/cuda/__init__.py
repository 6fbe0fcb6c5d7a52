"""GPU kernels (numba.cuda + CuPy), one module per cell, the kernel contract of kernels/README.md.
Imported only when the GPU backend is asked for (or by the simulator tests, which drive them with
NumPy arrays)."""
import contextlib
from functools import partial

from rnnfast.kernels.cells import ACTIVATIONS

from rnnfast.kernels.cuda.gru import gru_backward, gru_forward
from rnnfast.kernels.cuda.lstm import lstm_backward, lstm_forward
from rnnfast.kernels.cuda.rnn import rnn_backward, rnn_forward

# cell name (kernels/cells.py) -> (forward, backward), as the contract has them
KERNELS = {
    "rnn_tanh": (rnn_forward, rnn_backward),
    "rnn_relu": (partial(rnn_forward, act=ACTIVATIONS.index("relu")), rnn_backward),
    "lstm": (lstm_forward, lstm_backward),
    "gru": (gru_forward, gru_backward),
}


def matmul(a, b):
    """a: (M, K) @ b: (K, N) through cuBLAS (the CPU side's twin is rnnfast.kernels.cpu.gemm.matmul)."""
    return a @ b


def reuse_packing():
    """The CPU's packed-weight reuse (rnnfast.kernels.cpu.gemm.reuse_packing) has no work here: cuBLAS
    reads the weights as they are."""
    return contextlib.nullcontext()


def embedding_backward(dweight, ids, dy):
    """dweight: (V, E) += each row of dy: (..., E) at the row its id in ids: (...) names, repeated
    ids summed (the CPU side's twin is rnnfast.kernels.cpu.embedding.embedding_backward)."""
    import cupy  # here, not at the top: the simulator tests import this package without CuPy

    # atomic adds: repeated ids sum (in any order); ufunc.at is in CuPy >= 12, cupyx.scatter_add is deprecated
    cupy.add.at(dweight, ids.reshape(-1), dy.reshape(-1, dweight.shape[1]))


__all__ = ["KERNELS", "matmul", "reuse_packing", "embedding_backward", "rnn_forward", "rnn_backward", "lstm_forward",
           "lstm_backward", "gru_forward", "gru_backward"]
