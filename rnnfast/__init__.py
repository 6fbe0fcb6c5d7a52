"""rnnfast: RNN, LSTM and GRU with hand-written BPTT, on Numba (CPU) and numba.cuda + CuPy (GPU)."""
__version__ = "0.1.0"
