"""Optimizers, gradient clipping and learning-rate schedules.

An optimizer is not bound to parameter arrays: models move between devices and replace their
arrays, so each call names what to update. State (moments, accumulators) is created lazily per
parameter name, on that parameter's device, and follows the parameter if it moves.

    >>> import numpy as np
    >>> params, grads = {"w": np.ones(3)}, {"w": np.full(3, 0.5)}
    >>> opt = SGD(lr=0.1, momentum=0.9)
    >>> opt.step(params, grads)                     # updates params["w"] in place
    >>> params["w"]
    array([0.95, 0.95, 0.95])

Each update rule follows its torch.optim counterpart exactly (the tests hold them to 1e-6 in float64).
On the CPU, float32 and float64 parameters are updated by one compiled pass each
(:mod:`rnnfast.kernels.cpu.optim`, the analogue of torch's fused optimizers); CuPy arrays and other
dtypes take the array formulas written out in each ``_update``, which are the specification.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rnnfast.backend import get_array_module, get_backend, is_gpu_array, to_device


def _compiled(*arrays):
    """The CPU kernel table and 1-D views of ``arrays`` when one compiled pass can update them
    (NumPy, all of one dtype the kernels take, C-contiguous; a None entry, a state slot the rule
    does not use, becomes an empty array), else None: CuPy arrays and other dtypes take the array
    formulas."""
    present = [a for a in arrays if a is not None]
    backend = get_backend(*present)
    dtype = present[0].dtype
    if backend.name != "cpu" or dtype not in backend.kernels.FLOAT_DTYPES:
        return None
    if any(a.dtype != dtype or not a.flags.c_contiguous for a in present):
        return None
    return backend.kernels, [np.empty(0, dtype) if a is None else a.reshape(-1) for a in arrays]


class Optimizer:
    """Base class: hyper-parameters, step counters, lazily created per-name state, state dicts.

    Subclasses list their hyper-parameter names in ``HYPER`` and implement :meth:`_update`.
    """

    HYPER: tuple[str, ...] = ()

    def __init__(self, **hyper):
        if hyper["lr"] < 0:
            raise ValueError(f"learning rate must be >= 0, got {hyper['lr']}")
        if hyper.get("weight_decay", 0) < 0:
            raise ValueError(f"weight_decay must be >= 0, got {hyper['weight_decay']}")
        for name, value in hyper.items():
            setattr(self, name, value)
        self.steps = 0  # calls to step()
        self.param_steps: dict[str, int] = {}  # updates per parameter (Adam's bias correction counts these)
        self.state: dict[str, dict[str, object]] = {}  # name -> slot -> array

    def step(self, params: dict, grads: dict) -> None:
        """Update every parameter that has a gradient, in place.

        params: name -> array; grads: name -> array of the same shape (a missing or None gradient
        leaves that parameter and its state untouched, as torch does for ``grad is None``).
        """
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                continue
            if g.shape != p.shape:
                raise ValueError(f"gradient for {name!r} has shape {tuple(g.shape)}, parameter has {tuple(p.shape)}")
            self.param_steps[name] = self.param_steps.get(name, 0) + 1
            self._update(name, p, g, self.param_steps[name])
        self.steps += 1

    def _update(self, name: str, p, g, step: int) -> None:
        raise NotImplementedError

    def _slot(self, name: str, slot: str, p, fill: float = 0.0):
        """State array ``slot`` for parameter ``name``: created as ``fill`` on p's device, moved there if elsewhere."""
        slots = self.state.setdefault(name, {})
        if slot not in slots:
            slots[slot] = get_array_module(p).full(p.shape, fill, dtype=p.dtype)
        elif is_gpu_array(slots[slot]) != is_gpu_array(p):
            slots[slot] = to_device(slots[slot], "gpu" if is_gpu_array(p) else "cpu")
        return slots[slot]

    def _with_l2(self, p, g):
        """Coupled weight decay (torch's ``weight_decay`` for all but AdamW): g + wd * p, as a new array."""
        return g + self.weight_decay * p if self.weight_decay else g

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"type", "hyper", "step", "param_step"}`` are JSON-able; ``"state"`` maps
        ``"<slot>.<param name>"`` to NumPy copies (slot names have no dots, so the split is unambiguous)."""
        hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(self, k)) for k in self.HYPER)}
        return {
            "type": type(self).__name__,
            "hyper": hyper,
            "step": self.steps,
            "param_step": dict(self.param_steps),
            "state": {
                f"{slot}.{name}": np.array(to_device(arr, "cpu"))
                for name, slots in self.state.items()
                for slot, arr in slots.items()
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore hyper-parameters, counters and state from :meth:`state_dict`'s output."""
        if state.get("type") != type(self).__name__:
            raise ValueError(
                f"optimizer state is for {state.get('type')!r}, this optimizer is {type(self).__name__}; "
                "build the same optimizer type before loading"
            )
        for k, v in state["hyper"].items():
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        self.steps = int(state["step"])
        self.param_steps = {k: int(v) for k, v in state["param_step"].items()}
        self.state = {}
        for key, arr in state["state"].items():
            slot, name = key.split(".", 1)
            # a copy: step() updates state in place and must not write into the caller's arrays
            self.state.setdefault(name, {})[slot] = np.array(arr)

    def to(self, device: str) -> "Optimizer":
        """Move all state to "cpu" or "gpu" now (step() would also move it lazily)."""
        for slots in self.state.values():
            for slot in slots:
                slots[slot] = to_device(slots[slot], device)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self.HYPER)})"


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum, as torch.optim.SGD with dampening 0:
    ``g += wd*p; buf = momentum*buf + g; p -= lr * (g + momentum*buf if nesterov else buf)``."""

    HYPER = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        if nesterov and momentum <= 0:
            raise ValueError("nesterov=True needs momentum > 0")
        super().__init__(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    def _update(self, name, p, g, step):
        buf = self._slot(name, "momentum_buffer", p) if self.momentum else None
        compiled = _compiled(p, g, buf)
        if compiled is not None:
            kernels, views = compiled
            cast = p.dtype.type
            kernels.sgd_step(*views, cast(self.lr), cast(self.weight_decay), cast(self.momentum), bool(self.nesterov))
            return
        g = self._with_l2(p, g)
        if self.momentum:
            # buf starts at zero, so the first step gives buf = g exactly, as torch's clone
            buf *= self.momentum
            buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient, as torch.optim.Adam (amsgrad off)."""

    HYPER = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def _update(self, name, p, g, step):
        if not self._adam_compiled(name, p, g, step, 1.0, self.weight_decay):
            self._adam(name, p, self._with_l2(p, g), step)

    def _adam_compiled(self, name, p, g, step, lr_decay: float, weight_decay: float) -> bool:
        """The whole Adam/AdamW update in one compiled pass, when the arrays allow (else False):
        AdamW's ``p *= lr_decay`` and Adam's L2 ``g + weight_decay * p`` happen inside it."""
        exp_avg, exp_avg_sq = self._slot(name, "exp_avg", p), self._slot(name, "exp_avg_sq", p)
        compiled = _compiled(p, g, exp_avg, exp_avg_sq)
        if compiled is None:
            return False
        kernels, views = compiled
        beta1, beta2 = self.betas
        cast = p.dtype.type
        kernels.adam_step(*views, cast(lr_decay), cast(weight_decay), cast(beta1), cast(1 - beta1), cast(beta2),
                          cast(1 - beta2), cast(self.lr / (1 - beta1**step)), cast(math.sqrt(1 - beta2**step)),
                          cast(self.eps))
        return True

    def _adam(self, name, p, g, step):
        """The Adam moment update and step, shared with AdamW."""
        beta1, beta2 = self.betas
        exp_avg, exp_avg_sq = self._slot(name, "exp_avg", p), self._slot(name, "exp_avg_sq", p)
        exp_avg *= beta1
        exp_avg += (1 - beta1) * g
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        xp = get_array_module(p)
        denom = xp.sqrt(exp_avg_sq) / math.sqrt(1 - beta2**step) + self.eps
        p -= (self.lr / (1 - beta1**step)) * exp_avg / denom


class AdamW(Adam):
    """Adam with decoupled weight decay, as torch.optim.AdamW: ``p *= 1 - lr*wd`` before the Adam step."""

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _update(self, name, p, g, step):
        if not self._adam_compiled(name, p, g, step, 1 - self.lr * self.weight_decay, 0.0):
            p *= 1 - self.lr * self.weight_decay
            self._adam(name, p, g, step)


class RMSprop(Optimizer):
    """RMSprop (not centered), as torch.optim.RMSprop:
    ``v = alpha*v + (1-alpha)*g^2; p -= lr * g / (sqrt(v) + eps)``, through a momentum buffer if set."""

    HYPER = ("lr", "alpha", "eps", "momentum", "weight_decay")

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)

    def _update(self, name, p, g, step):
        square_avg = self._slot(name, "square_avg", p)
        buf = self._slot(name, "momentum_buffer", p) if self.momentum else None
        compiled = _compiled(p, g, square_avg, buf)
        if compiled is not None:
            kernels, views = compiled
            cast = p.dtype.type
            kernels.square_avg_step(*views, cast(self.lr), cast(self.weight_decay), cast(self.alpha),
                                    cast(1 - self.alpha), cast(self.eps), cast(self.momentum))
            return
        g = self._with_l2(p, g)
        square_avg *= self.alpha
        square_avg += (1 - self.alpha) * g * g
        scaled = g / (get_array_module(p).sqrt(square_avg) + self.eps)
        if self.momentum:
            buf *= self.momentum
            buf += scaled
            scaled = buf
        p -= self.lr * scaled


class Adagrad(Optimizer):
    """Adagrad, as torch.optim.Adagrad (lr_decay 0): ``s += g^2; p -= lr * g / (sqrt(s) + eps)``."""

    HYPER = ("lr", "eps", "weight_decay", "initial_accumulator_value")

    def __init__(self, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0):
        super().__init__(lr=lr, eps=eps, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value)

    def _update(self, name, p, g, step):
        state_sum = self._slot(name, "sum", p, self.initial_accumulator_value)
        compiled = _compiled(p, g, state_sum, None)
        if compiled is not None:  # RMSprop's pass with alpha = 1 keeps the running sum
            kernels, views = compiled
            cast = p.dtype.type
            kernels.square_avg_step(*views, cast(self.lr), cast(self.weight_decay), cast(1.0), cast(0.0),
                                    cast(self.eps), cast(0.0))
            return
        g = self._with_l2(p, g)
        state_sum += g * g
        p -= self.lr * g / (get_array_module(p).sqrt(state_sum) + self.eps)


# -- gradient clipping ------------------------------------------------------------------------------
def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping, as torch.nn.utils.clip_grad_norm_ (same 1e-6 guard in the
    scale). A non-finite norm is returned and the gradients are left alone; the caller decides.
    """
    arrays = [g for g in grads.values() if g is not None]
    if not arrays:
        return 0.0
    backend = get_backend(*arrays)
    if backend.name == "cpu" and all(g.dtype in backend.kernels.FLOAT_DTYPES for g in arrays):
        # one compiled pass per array, summed in float64 (np.vdot sums float32 in float32, on the
        # OpenBLAS threads the GEMMs keep off the cores)
        total = math.sqrt(sum(backend.kernels.sum_of_squares(g.reshape(-1)) for g in arrays))
    else:
        xp = backend.xp
        # per-array partial sums stay on the device; one float() at the end is the only sync
        total = math.sqrt(float(sum(xp.vdot(g.ravel(), g.ravel()).astype(xp.float64) for g in arrays)))
    coef = max_norm / (total + 1e-6)
    if math.isfinite(total) and coef < 1.0:
        for g in arrays:
            g *= coef
    return total


def clip_grad_value(grads: dict, clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value], in place."""
    for g in grads.values():
        if g is not None:
            get_array_module(g).clip(g, -clip_value, clip_value, out=g)


# -- learning-rate schedules --------------------------------------------------------------------------
# Schedules hold no state: ``lr_at(step)`` is the rate for the update after ``step`` earlier updates
# (the same numbering as torch's schedulers after ``step`` calls), so a checkpoint only needs the step.
# Use: ``opt.lr = schedule.lr_at(opt.steps)`` before each ``opt.step``.


@dataclass(frozen=True)
class Constant:
    """``base_lr`` at every step: what a plain optimizer does, as a schedule :class:`Warmup` can ramp up to."""

    base_lr: float

    def lr_at(self, step: int) -> float:
        return self.base_lr


@dataclass(frozen=True)
class StepDecay:
    """``base_lr * gamma ** (step // step_size)``, as torch.optim.lr_scheduler.StepLR."""

    base_lr: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self):
        if self.step_size < 1:
            raise ValueError(f"StepDecay needs step_size >= 1, got {self.step_size}")
        if not self.gamma > 0:
            raise ValueError(f"StepDecay needs gamma > 0, got {self.gamma}")

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


@dataclass(frozen=True)
class ExponentialDecay:
    """``base_lr * gamma ** step``, as torch.optim.lr_scheduler.ExponentialLR."""

    base_lr: float
    gamma: float

    def __post_init__(self):
        if not self.gamma > 0:
            raise ValueError(f"ExponentialDecay needs gamma > 0, got {self.gamma}")

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma**step


@dataclass(frozen=True)
class CosineWarmup:
    """Linear warm-up, then cosine decay to ``min_lr``:

    - ``step < warmup_steps``: ``base_lr * (step + 1) / warmup_steps`` (the first update is not wasted at 0);
    - then, with ``t = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to 1:
      ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2``.
    """

    base_lr: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0

    def __post_init__(self):
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(
                f"CosineWarmup needs 0 <= warmup_steps < total_steps, got {self.warmup_steps} and {self.total_steps}"
            )

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class Warmup:
    """Linear warm-up to ``schedule``'s first rate, then ``schedule`` with its steps counted from the end
    of the warm-up:

    - ``step < warmup_steps``: ``schedule.lr_at(0) * (step + 1) / warmup_steps``, as :class:`CosineWarmup`'s;
    - then ``schedule.lr_at(step - warmup_steps)``.

    torch's equivalent is ``SequentialLR([LinearLR(start_factor=1/warmup_steps, total_iters=warmup_steps - 1),
    <schedule>], milestones=[warmup_steps])``.
    """

    schedule: object
    warmup_steps: int

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ValueError(f"Warmup needs warmup_steps >= 0, got {self.warmup_steps}")

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.schedule.lr_at(0) * (step + 1) / self.warmup_steps
        return self.schedule.lr_at(step - self.warmup_steps)
