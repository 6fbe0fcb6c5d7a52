"""CPU kernels (Numba @njit), one module per cell, the kernel contract of DESIGN.md."""
from rnnfast.kernels.cpu.gemm import matmul
from rnnfast.kernels.cpu.generate import generate
from rnnfast.kernels.cpu.gru import gru_backward, gru_forward
from rnnfast.kernels.cpu.lstm import lstm_backward, lstm_forward
from rnnfast.kernels.cpu.rnn import rnn_backward, rnn_forward

__all__ = ["matmul", "generate", "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward"]
