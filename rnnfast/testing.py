"""What the tests and the bench hold rnnfast to, written once: kernel cases, the kernel-against-
reference check, a float64 central-difference gradient checker and a run of the same thing in
PyTorch.

The specification of every cell is ``rnnfast.kernels.cpu.reference``; a kernel on any device
matches it when every output and gradient is within :data:`TOLERANCE` of the reference's, in
float64, relative to the reference's largest magnitude.

    >>> import numpy as np
    >>> from rnnfast import testing
    >>> case = testing.make_case("lstm", (4, 3, 2, 5), np.float64, lengths=True)
    >>> errors = testing.check_kernel(testing.device("cpu"), case)
    >>> sorted(errors) == sorted(testing.output_names("lstm"))
    True

The library ships this module so that ``python -m rnnfast.bench.gpu_check`` runs the same checks
as ``pytest``; pytest and torch are imported only by the functions that need them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np

from rnnfast.kernels.cells import cell_named
from rnnfast.kernels.cpu import reference

# largest error a kernel may have against the float64 reference, relative to the reference's
# largest magnitude; float32 kernels are compared with the reference run on the same inputs in float64
TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
# kernel shapes (T, B, I, H): the edges (one step, one sequence), then ones that walk the CUDA
# kernels' tiling (several batch chunks, H past a thread block, W_hh in shared memory or not)
KERNEL_SHAPES = [(5, 3, 4, 6), (1, 1, 3, 4), (6, 1, 2, 3), (7, 5, 6, 40), (5, 3, 4, 300), (4, 70, 8, 64)]
DEVICES = ("cpu", "gpu")
WEIGHT_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh")
# the layer-norm option's gains and biases, in its order (the last two for a cell with a cell state)
LAYER_NORM_NAMES = ("gain_ih", "bias_ih", "gain_hh", "bias_hh", "gain_c", "bias_c")


# -- cases ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One kernel call's inputs and upstream gradients, as NumPy arrays. x: (T, B, I); state and
    dstate: one (B, H) array per state part (a dstate entry may be None); weights: (w_ih (G*H, I),
    w_hh (G*H, H), b_ih, b_hh (G*H,)); lengths: (B,) or None; dy: (T, B, H)."""

    cell: str
    x: np.ndarray
    state: tuple
    weights: tuple
    lengths: np.ndarray | None
    dy: np.ndarray
    dstate: tuple
    options: dict = field(default_factory=dict)  # the kernel's cell options (h_mask, zone, layer_norm), as keywords

    @property
    def dtype(self):
        return self.x.dtype

    def astype(self, dtype) -> Case:
        def cast(a):
            return None if a is None else a.astype(dtype)

        return replace(self, x=cast(self.x), state=tuple(map(cast, self.state)), weights=tuple(map(cast, self.weights)),
                       dy=cast(self.dy), dstate=tuple(map(cast, self.dstate)), options=map_options(self.options, cast))


def map_options(options, f):
    """``options`` (a case's cell options) with ``f`` applied to each array in them."""
    return {k: (tuple(None if z is None else f(z) for z in v) if isinstance(v, tuple) else f(v))
            for k, v in options.items()}


OPTIONS = ("recurrent_dropout", "zoneout", "zoneout_eval", "layer_norm")


def make_case(cell, shape, dtype=np.float64, lengths=False, dstate=True, seed=0, options=()) -> Case:
    """Random inputs for ``cell`` at ``shape`` = (T, B, I, H), seeded: weights from PyTorch's init
    U(-1/sqrt(H), 1/sqrt(H)), x, dy and dstate standard normal, the state half that. ``lengths``:
    False for none, True for random ones in 1..T (the first sequence full), or the array itself;
    ``dstate``: False for all None. ``options``: names from :data:`OPTIONS`, the cell options the
    kernels get: a recurrent-dropout mask (p = 0.3), zoneout's 0/1 draws (p = 0.4, every state
    part), zoneout's eval-mode constant fractions (0.3, and 0.6 for the LSTM's c), or layer
    norm's gains (1 + 0.3 N(0, 1)) and biases (0.2 N(0, 1)), not their init, so that both bite."""
    T, B, I, H = shape
    spec = cell_named(cell)
    rng = np.random.default_rng(seed)
    k = 1 / np.sqrt(H)

    def uniform(*s):
        return rng.uniform(-k, k, s).astype(dtype)

    def normal(*s):
        return rng.standard_normal(s).astype(dtype)

    GH = spec.num_gates * H
    weights = (uniform(GH, I), uniform(GH, H), uniform(GH), uniform(GH))
    state = tuple(0.5 * normal(B, H) for _ in spec.state)
    x, dy = normal(T, B, I), normal(T, B, H)
    d_state = tuple(normal(B, H) if dstate else None for _ in spec.state)
    if lengths is True:
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
    elif lengths is False or lengths is None:
        lengths = None
    else:
        lengths = np.asarray(lengths, dtype=np.int64)
    kernel_options = {}
    for name in options:
        if name == "recurrent_dropout":
            kernel_options["h_mask"] = ((rng.uniform(size=(B, H)) >= 0.3) / 0.7).astype(dtype)
        elif name == "zoneout":
            kernel_options["zone"] = tuple((rng.uniform(size=(T, B, H)) < 0.4).astype(dtype) for _ in spec.state)
        elif name == "zoneout_eval":
            kernel_options["zone"] = tuple(np.full((T, B, H), p, dtype) for p in (0.3, 0.6)[:len(spec.state)])
        elif name == "layer_norm":
            sizes = (GH, GH, H)[:len(layer_norm_names(cell)) // 2]
            kernel_options["layer_norm"] = tuple(a.astype(dtype) for n in sizes
                                                 for a in (1 + 0.3 * rng.standard_normal(n), 0.2 * rng.standard_normal(n)))
        else:
            raise ValueError(f"unknown option {name!r}; use one of {', '.join(OPTIONS)}")
    return Case(spec.name, x, state, weights, lengths, dy, d_state, kernel_options)


def layer_norm_names(cell):
    """The names of ``cell``'s layer-norm gains and biases, in the option's order."""
    return LAYER_NORM_NAMES[: 6 if cell_named(cell).has_cell_state else 4]


def output_names(cell, layer_norm=False):
    """The names :func:`run_kernels` gives a kernel's outputs and gradients, in contract order
    (with ``layer_norm``, the gradients of its gains and biases last)."""
    parts = cell_named(cell).state
    norms = layer_norm_names(cell) if layer_norm else ()
    return ["y", *(f"{p}T" for p in parts), "dx", *(f"d{p}0" for p in parts),
            *(f"d{w}" for w in WEIGHT_NAMES + norms)]


# -- devices ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """A kernel table (a module with ``KERNELS``) and the array moves to and from its arrays."""

    name: str
    kernels: object
    to: object    # NumPy -> a fresh array on the device
    host: object  # device array -> NumPy


def device(name) -> Device:
    """The device called ``name``: "cpu"; "gpu" (the CUDA kernels on CuPy arrays); or "sim" (the
    CUDA kernels on NumPy arrays, in a process started with NUMBA_ENABLE_CUDASIM=1)."""
    if name not in ("cpu", "gpu", "sim"):
        raise ValueError(f"unknown device {name!r}; use 'cpu', 'gpu' or 'sim'")
    if name == "cpu":
        from rnnfast.kernels import cpu

        return Device("cpu", cpu, np.array, np.asarray)
    from rnnfast.kernels import cuda

    if name == "sim":
        return Device("sim", cuda, np.array, np.asarray)
    import cupy

    return Device("gpu", cuda, cupy.asarray, cupy.asnumpy)


def device_params():
    """``DEVICES`` for ``pytest.mark.parametrize``, "gpu" marked ``gpu`` (tests/conftest.py skips
    those without a usable GPU)."""
    import pytest

    return [pytest.param(name, marks=pytest.mark.gpu) if name == "gpu" else name for name in DEVICES]


REFERENCE = Device("reference", reference, np.array, np.asarray)


# -- the kernel against the reference ------------------------------------------------------------
def run_kernels(dev, case, grads=None):
    """Forward then backward of ``case`` through ``dev``'s kernels (``KERNELS[case.cell]``), on
    copies of the inputs. ``grads``: None, or NumPy (dw_ih, dw_hh, db_ih, db_hh) to start from (the
    backward adds into copies; an entry may be None). Returns {name: NumPy array} by
    :func:`output_names`."""
    forward, backward = dev.kernels.KERNELS[case.cell]
    to = dev.to
    lengths = None if case.lengths is None else to(case.lengths)
    y, final, cache = forward(to(case.x), tuple(map(to, case.state)), tuple(map(to, case.weights)), lengths,
                              **map_options(case.options, to))
    start = None if grads is None else tuple(None if g is None else to(g) for g in grads)
    dstate = tuple(None if d is None else to(d) for d in case.dstate)
    dx, dstate0, dweights = backward(to(case.dy), dstate, cache, start)
    if start is not None:
        moved = [name for name, s, d in zip(WEIGHT_NAMES, start, dweights) if s is not None and d is not s]
        assert not moved, f"{dev.name} {case.cell}: backward returned new arrays for {moved}, not the grads given"
    return {name: None if a is None else dev.host(a)
            for name, a in zip(output_names(case.cell, "layer_norm" in case.options),
                               (y, *final, dx, *dstate0, *dweights), strict=True)}


def rel_err(ours, ref) -> float:
    """max |ours - ref| relative to the largest |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def kernel_errors(dev, case, grads=None):
    """{name: relative error} of every output and gradient of ``dev``'s kernels against the
    reference run on the same inputs in float64 (see :func:`run_kernels` for ``grads``)."""
    got = run_kernels(dev, case, grads)
    want = run_kernels(REFERENCE, case.astype(np.float64),
                       None if grads is None else tuple(None if g is None else g.astype(np.float64) for g in grads))
    errors = {}
    for name, w in want.items():
        g = got[name]
        if g is None or w is None:
            assert g is None and w is None, f"{dev.name} {case.cell}: {name} is {g!r}, the reference's {w!r}"
            continue
        assert g.shape == w.shape, f"{dev.name} {case.cell}: {name} has shape {g.shape}, expected {w.shape}"
        assert g.dtype == case.dtype, f"{dev.name} {case.cell}: {name} is {g.dtype}, the inputs {case.dtype}"
        errors[name] = rel_err(g, w)
    return errors


def worst(errors):
    """(largest error, its name) of :func:`kernel_errors`' result."""
    name = max(errors, key=errors.get)
    return errors[name], name


def check_kernel(dev, case, grads=None, tol=None):
    """Assert every output and gradient of ``dev``'s kernels on ``case`` is within ``tol``
    (default :data:`TOLERANCE` of the case's dtype) of the reference. Returns the errors."""
    tol = TOLERANCE[case.dtype] if tol is None else tol
    errors = kernel_errors(dev, case, grads)
    bad = {name: f"{e:.1e}" for name, e in errors.items() if not e <= tol}
    T, B, _ = case.x.shape
    assert not bad, (f"{dev.name} {case.cell} {case.dtype} T={T} B={B} lengths={case.lengths}: relative error "
                     f"above {tol:.0e} in {bad}")
    return errors


def perturbed(dev, weight=1, delta=1e-6):
    """``dev`` with a forward that adds ``delta`` to weights[``weight``]: what a slightly wrong
    kernel looks like, so that a test can show a check fails."""
    def wrong(forward):
        def call(x, state, weights, lengths=None, **options):
            weights = tuple(w + delta if k == weight else w for k, w in enumerate(weights))
            return forward(x, state, weights, lengths, **options)
        return call

    table = {cell: (wrong(f), b) for cell, (f, b) in dev.kernels.KERNELS.items()}
    return replace(dev, name=f"{dev.name} (weights[{weight}] + {delta:g})", kernels=SimpleNamespace(KERNELS=table))


# -- gradients by central differences ---------------------------------------------------------------
def central_difference(loss, x, at, eps=1e-6):
    """d loss() / d x[i] for each index i in ``at``, by central differences; ``loss()`` reads x,
    which is perturbed in place and restored."""
    out = []
    for i in at:
        old = x[i]
        x[i] = old + eps
        up = float(loss())
        x[i] = old - eps
        down = float(loss())
        x[i] = old
        out.append((up - down) / (2 * eps))
    return np.array(out)


def check_gradients(loss, variables, analytic, rtol=1e-5, atol=1e-7, entries=None, eps=1e-6, seed=0):
    """Assert the ``analytic`` gradients {name: array} of the scalar ``loss()`` match central
    differences for every float64 array in ``variables`` {name: array}, which ``loss()`` reads.

    entries: None for every entry; an int k for the k - 1 largest in magnitude (so the check
    bites) and one at random; or a list of indices."""
    rng = np.random.default_rng(seed)
    for name, value in variables.items():
        if value.dtype != np.float64:
            raise TypeError(f"{name}: central differences need float64, got {value.dtype}")
        grad = np.asarray(analytic[name])
        assert grad.shape == value.shape, f"{name}: gradient has shape {grad.shape}, expected {value.shape}"
        if entries is None:
            at = list(np.ndindex(value.shape))
        elif isinstance(entries, int):
            flat = set(np.argsort(-np.abs(grad.reshape(-1)))[: entries - 1].tolist()) | {int(rng.integers(grad.size))}
            at = [np.unravel_index(i, value.shape) for i in sorted(flat)]
        else:
            at = list(entries)
        numeric = central_difference(loss, value, at, eps)
        np.testing.assert_allclose(np.array([grad[i] for i in at]), numeric, rtol=rtol, atol=atol,
                                   err_msg=f"{name} at {at}")


# -- the same in PyTorch -----------------------------------------------------------------------
def torch_recurrent(cell, input_size, hidden_size, state_dict, dtype=np.float64, **kwargs):
    """The torch.nn.RNN/LSTM/GRU for ``cell`` holding ``state_dict`` (NumPy arrays, PyTorch's names)
    in ``dtype``; kwargs: num_layers, bidirectional, bias, batch_first."""
    import torch

    spec = cell_named(cell)
    if spec.kind == "rnn":
        kwargs["nonlinearity"] = spec.activation
    kind = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[spec.kind]
    module = kind(input_size, hidden_size, **kwargs)
    module = module.double() if np.dtype(dtype) == np.float64 else module.float()
    module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()})
    return module


def torch_run(module, x, state=None, lengths=None, dy=None, dstate=None):
    """``module`` forward on x (lengths through a packed sequence) and backward of
    sum(y * dy) + sum(final state * dstate) (dy None: ones; dstate None: no final-state term).
    state, dstate: tuples of NumPy arrays (L*D, B, H) or None. Returns NumPy arrays {"y", "hT",
    ["cT",] "dx", ["dh0", "dc0"]} plus each parameter's gradient by its name."""
    import torch

    lstm = isinstance(module, torch.nn.LSTM)
    xt = torch.tensor(x, requires_grad=True)
    st = None if state is None else tuple(torch.tensor(s, requires_grad=True) for s in state)
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=module.batch_first,
                                                      enforce_sorted=False)
    yt, final = module(inp, None if st is None else (st if lstm else st[0]))
    if lengths is not None:
        T = x.shape[1 if module.batch_first else 0]
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, batch_first=module.batch_first, total_length=T)
    final = final if lstm else (final,)
    loss = (yt * (torch.ones_like(yt) if dy is None else torch.from_numpy(dy))).sum()
    if dstate is not None:
        loss = loss + sum((f * torch.from_numpy(d)).sum() for f, d in zip(final, dstate))
    loss.backward()
    parts = ("h", "c") if lstm else ("h",)
    out = {"y": yt.detach().numpy(), **{f"{p}T": f.detach().numpy() for p, f in zip(parts, final)},
           "dx": xt.grad.numpy()}
    if st is not None:
        out.update({f"d{p}0": s.grad.numpy() for p, s in zip(parts, st)})
    out.update({name: p.grad.numpy() for name, p in module.named_parameters()})
    return out
