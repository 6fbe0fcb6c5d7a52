"""GPU kernels (numba.cuda + CuPy), the kernel contract of DESIGN.md. Imported only when the GPU
backend is asked for (or by the simulator tests, which drive them with NumPy arrays)."""
from rnnfast.kernels.cuda.gru import gru_backward, gru_forward
from rnnfast.kernels.cuda.lstm import lstm_backward, lstm_forward
from rnnfast.kernels.cuda.rnn import rnn_backward, rnn_forward



def matmul(a, b):
    """a: (M, K) @ b: (K, N) through cuBLAS (the CPU side's twin is rnnfast.kernels.cpu.gemm.matmul)."""
    return a @ b


__all__ = ["matmul", "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward"]
