"""Backend dispatch: the one place that looks at array types.

The array you pass in picks the backend: NumPy arrays run the Numba CPU kernels, CuPy arrays the
numba.cuda GPU kernels. Layers call :func:`get_backend` (or :func:`get_array_module`) once per call
and never test types themselves.

    >>> import numpy as np
    >>> be = get_backend(np.zeros(3))
    >>> be.name, be.xp.__name__
    ('cpu', 'numpy')
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

GPU_INSTALL_HINT = 'install the GPU extra with: pip install "rnnfast[gpu]" (needs an NVIDIA GPU and CUDA 12)'


@dataclass(frozen=True)
class Backend:
    """An array module plus the kernel table that works on its arrays."""

    name: str  # "cpu" or "gpu"
    xp: ModuleType  # numpy or cupy
    kernels: ModuleType  # rnnfast.kernels.cpu or rnnfast.kernels.cuda


def _cupy():
    """CuPy if it imports, else None (CuPy is optional)."""
    try:
        import cupy
    except Exception:  # ImportError, or a CUDA library that fails to load
        return None
    return cupy


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    cp = _cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def gpu_unavailable_reason() -> str | None:
    """None when the GPU backend is usable, else one line saying why and what to do."""
    cp = _cupy()
    if cp is None:
        return f"the GPU backend needs CuPy and numba-cuda, which are not installed; {GPU_INSTALL_HINT}"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy is installed but no CUDA device is usable ({exc.__class__.__name__}: {exc})"
    if n == 0:
        return "CuPy is installed but it sees no CUDA device"
    try:
        importlib.import_module("numba.cuda")
    except Exception:
        return f"numba.cuda cannot be imported; {GPU_INSTALL_HINT}"
    return None


def is_gpu_array(a) -> bool:
    """True for a CuPy ndarray (checked by module name, so CuPy is never imported for this)."""
    return type(a).__module__.startswith("cupy")


def _describe(a) -> str:
    return f"{type(a).__module__}.{type(a).__name__}"


def get_array_module(*arrays) -> ModuleType:
    """numpy or cupy, from the arrays given (None entries are skipped); mixing them is a TypeError."""
    return get_backend(*arrays).xp


def get_backend(*arrays) -> Backend:
    """The backend for these arrays. Nested tuples/lists (e.g. an LSTM's ``(h, c)``) are searched.

    Raises TypeError when NumPy and CuPy arrays are mixed, naming both.
    """
    cpu_example = gpu_example = None
    stack = list(arrays)
    while stack:
        a = stack.pop()
        if a is None:
            continue
        if isinstance(a, (tuple, list)):
            stack.extend(a)
        elif is_gpu_array(a):
            gpu_example = gpu_example if gpu_example is not None else a
        elif isinstance(a, np.ndarray):
            cpu_example = cpu_example if cpu_example is not None else a
    if cpu_example is not None and gpu_example is not None:
        raise TypeError(
            f"mixed CPU and GPU arrays in one call: {_describe(cpu_example)} and {_describe(gpu_example)}; "
            "move them to one device first (layer.to('gpu') / cupy.asarray, or layer.to('cpu') / cupy.asnumpy)"
        )
    if gpu_example is not None:
        return _gpu_backend()
    return _cpu_backend()


_CACHE: dict[str, Backend] = {}


def _cpu_backend() -> Backend:
    if "cpu" not in _CACHE:
        from rnnfast.kernels import cpu

        _CACHE["cpu"] = Backend("cpu", np, cpu)
    return _CACHE["cpu"]


def _gpu_backend() -> Backend:
    if "gpu" not in _CACHE:
        reason = gpu_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        import cupy

        from rnnfast.kernels import cuda

        _CACHE["gpu"] = Backend("gpu", cupy, cuda)
    return _CACHE["gpu"]


def backend_for_device(device: str) -> Backend:
    """The backend named by a device string: "cpu", "gpu" (or "cuda"), or "auto" (GPU when usable)."""
    device = device.lower()
    if device == "auto":
        return _gpu_backend() if gpu_unavailable_reason() is None else _cpu_backend()
    if device in ("gpu", "cuda"):
        return _gpu_backend()
    if device == "cpu":
        return _cpu_backend()
    raise ValueError(f"unknown device {device!r}; use 'cpu', 'gpu' or 'auto'")


def to_device(a, device: str):
    """Copy an array to "cpu" (NumPy) or "gpu" (CuPy); arrays already there are returned as they are."""
    if a is None:
        return None
    if device in ("gpu", "cuda"):
        if is_gpu_array(a):
            return a
        return _gpu_backend().xp.asarray(a)
    if device == "cpu":
        return a.get() if is_gpu_array(a) else np.asarray(a)
    raise ValueError(f"unknown device {device!r}; use 'cpu' or 'gpu'")


def to_numpy(a):
    """A NumPy copy/view of any array: CuPy arrays are copied to the host, torch tensors converted
    (bfloat16 as float32, which NumPy lacks); torch is recognised by duck type, never imported."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        return a.numpy()
    return to_device(a, "cpu")
