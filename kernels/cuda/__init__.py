"""GPU kernels (numba.cuda + CuPy). Imported only when the GPU backend is asked for."""
