"""Compute kernels, forward directly above backward, one file per cell and backend.

``rnnfast.kernels.cpu`` holds Numba ``@njit`` kernels, ``rnnfast.kernels.cuda`` the numba.cuda
ones (imported only when the GPU backend is asked for). Kernels know nothing of layers.
"""
