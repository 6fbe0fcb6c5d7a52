"""CPU kernels (Numba @njit), one module per cell, the kernel contract of DESIGN.md."""
from rnnfast.kernels.cpu.lstm import lstm_backward, lstm_forward

__all__ = ["lstm_forward", "lstm_backward"]
