"""Optimizers against torch.optim on the same gradients (float64), state-dict resume, clipping, schedules."""
import copy
import json
import math

import numpy as np
import pytest

from rnnfast import optim

STEPS = 8
RESUME_AT = 3  # the state dict is saved after this many steps
LR_CHANGE_AT = 5  # the learning rate is halved before this step, as a schedule would

CASES = [
    (optim.SGD, {"lr": 0.1}),
    (optim.SGD, {"lr": 0.05, "weight_decay": 0.1}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.1}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    (optim.Adam, {"lr": 0.01}),
    (optim.Adam, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    (optim.AdamW, {"lr": 0.01}),
    (optim.AdamW, {"lr": 0.01, "betas": (0.85, 0.995), "weight_decay": 0.1}),
    (optim.AdamW, {"lr": 0.01, "eps": 1e-4, "weight_decay": 0.0}),
    (optim.RMSprop, {"lr": 0.01}),
    (optim.RMSprop, {"lr": 0.01, "momentum": 0.5}),
    (optim.RMSprop, {"lr": 0.01, "weight_decay": 0.1}),
    (optim.RMSprop, {"lr": 0.01, "alpha": 0.9, "momentum": 0.9, "weight_decay": 0.05}),
    (optim.Adagrad, {"lr": 0.1}),
    (optim.Adagrad, {"lr": 0.1, "weight_decay": 0.1}),
    (optim.Adagrad, {"lr": 0.1, "eps": 1e-8, "weight_decay": 0.1, "initial_accumulator_value": 0.5}),
]
IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for cls, kw in CASES]


def problem(seed=0, dtype=np.float64, order="C"):
    """Initial parameters (a dotted name, as a model's) and a fixed sequence of gradients.
    ``order="F"`` makes the weight Fortran-ordered, which the compiled passes do not take: it
    goes through the array formulas while the bias still takes the compiled pass."""
    rng = np.random.default_rng(seed)
    params = {"rnn.weight": rng.standard_normal((3, 4)), "bias": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(STEPS)]
    params = {k: np.asarray(v, dtype, order=order) for k, v in params.items()}
    grads = [{k: v.astype(dtype) for k, v in g.items()} for g in grads]
    return params, grads


def torch_trajectory(torch, cls, kwargs, params, grads):
    """Parameters after each torch.optim step on the given gradients."""
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = getattr(torch.optim, cls.__name__)(list(tensors.values()), **kwargs)
    out = []
    for i, g in enumerate(grads):
        if i == LR_CHANGE_AT:
            opt.param_groups[0]["lr"] = kwargs["lr"] / 2
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k])
        opt.step()
        out.append({k: t.detach().numpy().copy() for k, t in tensors.items()})
    return out


def run(opt, params, grads, start=0):
    """Our parameters after each step from ``start`` on (params are updated in place)."""
    out = []
    for i in range(start, len(grads)):
        if i == LR_CHANGE_AT:
            opt.lr = opt.lr / 2
        opt.step(params, grads[i])
        out.append({k: v.copy() for k, v in params.items()})
    return out


def assert_same(ours, theirs, atol):
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for k in b:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol, err_msg=f"{k} after step {step + 1}")


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("cls, kwargs", CASES, ids=IDS)
def test_optimizer_matches_torch(cls, kwargs, order):
    """float64, over steps with a change of rate: the compiled passes ("C") and the array formulas
    (the "F" weight) alike."""
    torch = pytest.importorskip("torch")
    params, grads = problem(order=order)
    assert (optim._compiled(params["rnn.weight"], grads[0]["rnn.weight"]) is None) == (order == "F")
    expected = torch_trajectory(torch, cls, kwargs, params, grads)
    ours = {k: v.copy(order="K") for k, v in params.items()}
    assert_same(run(cls(**kwargs), ours, grads), expected, atol=1e-10)


@pytest.mark.parametrize("cls, kwargs", CASES, ids=IDS)
def test_compiled_float32_update_matches_torch_and_keeps_dtype(cls, kwargs):
    """float32 through the compiled pass against torch.optim's float32 update, to float32 rounding."""
    torch = pytest.importorskip("torch")
    params, grads = problem(dtype=np.float32)
    expected = torch_trajectory(torch, cls, kwargs, params, grads)
    ours = {k: v.copy() for k, v in params.items()}
    opt = cls(**kwargs)
    assert_same(run(opt, ours, grads), expected, atol=2e-6)
    assert all(v.dtype == np.float32 for v in ours.values())
    assert all(a.dtype == np.float32 for slots in opt.state.values() for a in slots.values())


def test_compiled_pass_is_chosen_only_for_arrays_it_takes():
    f32, f64 = np.zeros((2, 3), np.float32), np.zeros((2, 3))
    kernels, views = optim._compiled(f32, f32.copy(), None)
    assert all(v.ndim == 1 and v.dtype == np.float32 for v in views) and views[2].size == 0
    assert np.shares_memory(views[0], f32)  # a view, so the update lands in the parameter
    assert optim._compiled(f64, f64.copy()) is not None
    assert optim._compiled(f32, f64) is None  # mixed dtypes
    assert optim._compiled(f32.astype(np.float16), f32.astype(np.float16)) is None
    assert optim._compiled(f32.T, f32.T.copy()) is None  # not C-contiguous


@pytest.mark.parametrize("cls, kwargs", CASES, ids=IDS)
def test_state_dict_resume_continues_identically(cls, kwargs):
    params, grads = problem(1)
    straight = {k: v.copy() for k, v in params.items()}
    uninterrupted = run(cls(**kwargs), straight, grads)

    first = cls(**kwargs)
    resumed = {k: v.copy() for k, v in params.items()}
    run(first, resumed, grads[:RESUME_AT])
    saved = first.state_dict()
    # a checkpoint stores the arrays as tensors and everything else as JSON
    arrays = saved.pop("state")
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    restored = json.loads(json.dumps(saved)) | {"state": copy.deepcopy(arrays)}
    second = cls(**{**kwargs, "lr": 123.0})  # hyper-parameters come back from the state dict
    second.load_state_dict(restored)
    assert second.lr == kwargs["lr"] and second.steps == RESUME_AT
    continued = run(second, resumed, grads, start=RESUME_AT)
    for a, b in zip(continued, uninterrupted[RESUME_AT:], strict=True):
        for k in b:
            np.testing.assert_array_equal(a[k], b[k])


def test_state_dict_layout_and_isolation():
    params, grads = problem()
    opt = optim.Adam(lr=0.01)
    opt.step(params, grads[0])
    saved = opt.state_dict()
    assert saved["type"] == "Adam" and saved["step"] == 1
    assert saved["hyper"] == {"lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    assert sorted(saved["state"]) == ["exp_avg.bias", "exp_avg.rnn.weight", "exp_avg_sq.bias", "exp_avg_sq.rnn.weight"]
    other = optim.Adam()
    other.load_state_dict(saved)
    assert other.betas == (0.9, 0.999)
    other.step(params, grads[1])
    np.testing.assert_array_equal(saved["state"]["exp_avg.bias"], opt.state["bias"]["exp_avg"])  # not aliased


def test_missing_gradient_leaves_parameter_and_state_alone():
    params, grads = problem()
    frozen = params["bias"].copy()
    opt = optim.Adam(lr=0.1)
    opt.step(params, {"rnn.weight": grads[0]["rnn.weight"], "bias": None})
    opt.step(params, {"rnn.weight": grads[1]["rnn.weight"]})
    np.testing.assert_array_equal(params["bias"], frozen)
    assert "bias" not in opt.state and opt.param_steps == {"rnn.weight": 2} and opt.steps == 2


def test_optimizer_errors_are_clear():
    params, grads = problem()
    with pytest.raises(ValueError, match=r"gradient for 'bias' has shape \(3,\), parameter has \(4,\)"):
        optim.SGD(lr=0.1).step(params, {"bias": np.zeros(3)})
    with pytest.raises(ValueError, match="optimizer state is for 'SGD', this optimizer is Adam"):
        optim.Adam().load_state_dict(optim.SGD(lr=0.1).state_dict())
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        optim.SGD(lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate must be >= 0"):
        optim.Adam(lr=-1.0)


# -- clipping ------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(max_norm, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    grads = {k: rng.standard_normal(s).astype(dtype) for k, s in [("a", (3, 4)), ("b", (5,)), ("c", (2, 2, 2))]}
    tensors = [torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.from_numpy(g.copy())
    expected_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm).item()
    norm = optim.clip_grad_norm(grads, max_norm)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert isinstance(norm, float) and norm == pytest.approx(expected_norm, rel=tol)
    for t, g in zip(tensors, grads.values()):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=tol, atol=tol)
    if max_norm < expected_norm:
        assert math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values())) == pytest.approx(
            max_norm, rel=1e-5
        )


def test_clip_grad_norm_accumulates_float32_in_float64():
    """A million float32 squares summed in float32 drift by ~1e-7 relative; the float64 sum is exact
    to ~1e-15. None gradients are skipped; a clipped norm lands on max_norm."""
    rng = np.random.default_rng(7)
    big = (rng.standard_normal(1_000_003) * 3).astype(np.float32)
    small = rng.standard_normal((7, 5)).astype(np.float32)
    exact = math.sqrt(math.fsum(float(v) ** 2 for v in np.concatenate([big, small.reshape(-1)]).astype(np.float64)))
    grads = {"big": big.copy(), "none": None, "small": small.copy()}
    assert optim.clip_grad_norm(grads, math.inf) == pytest.approx(exact, rel=1e-13)
    np.testing.assert_array_equal(grads["big"], big)  # an infinite max_norm leaves gradients alone
    assert optim.clip_grad_norm(grads, 1.0) == pytest.approx(exact, rel=1e-13)
    assert optim.clip_grad_norm(grads, 1.0) == pytest.approx(1.0, rel=1e-6)
    assert optim.clip_grad_norm({"g": None}, 1.0) == 0.0


def test_clip_grad_value_matches_torch():
    torch = pytest.importorskip("torch")
    grads = {"a": np.random.default_rng(3).standard_normal((4, 5)) * 3, "b": None}
    t = torch.zeros(4, 5, dtype=torch.float64, requires_grad=True)
    t.grad = torch.from_numpy(grads["a"].copy())
    torch.nn.utils.clip_grad_value_([t], 1.5)
    optim.clip_grad_value(grads, 1.5)
    np.testing.assert_array_equal(grads["a"], t.grad.numpy())


# -- learning-rate schedules -----------------------------------------------------------------------
def torch_lrs(torch, make_scheduler, base_lr, n):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_step_and_exponential_decay_match_torch():
    torch = pytest.importorskip("torch")
    lr_sched = torch.optim.lr_scheduler
    step = optim.StepDecay(0.5, step_size=4, gamma=0.3)
    expected = torch_lrs(torch, lambda o: lr_sched.StepLR(o, step_size=4, gamma=0.3), 0.5, 30)
    assert [step.lr_at(i) for i in range(30)] == pytest.approx(expected, rel=1e-12)
    exp = optim.ExponentialDecay(0.5, gamma=0.9)
    expected = torch_lrs(torch, lambda o: lr_sched.ExponentialLR(o, gamma=0.9), 0.5, 30)
    assert [exp.lr_at(i) for i in range(30)] == pytest.approx(expected, rel=1e-12)


def test_cosine_warmup_follows_its_closed_form():
    base, low, warmup, total = 1e-2, 1e-4, 10, 110
    sched = optim.CosineWarmup(base, warmup, total, min_lr=low)
    for step in range(total + 20):
        if step < warmup:
            expected = base * (step + 1) / warmup
        else:
            t = min(1.0, (step - warmup) / (total - warmup))
            expected = low + (base - low) * 0.5 * (1 + math.cos(math.pi * t))
        assert sched.lr_at(step) == pytest.approx(expected, rel=1e-12)
    assert sched.lr_at(0) == pytest.approx(base / warmup)
    assert sched.lr_at(warmup) == pytest.approx(base)
    assert sched.lr_at(warmup + (total - warmup) // 2) == pytest.approx((base + low) / 2)
    assert sched.lr_at(total) == sched.lr_at(total + 50) == pytest.approx(low)
    decay = [sched.lr_at(s) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert optim.CosineWarmup(1.0, 0, 4).lr_at(0) == 1.0  # no warm-up starts at the base rate
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        optim.CosineWarmup(1.0, 10, 10)


# -- GPU -------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_optimizer_on_gpu_matches_cpu_and_state_moves_between_devices():
    import cupy as cp

    params, grads = problem()
    on_cpu = {k: v.copy() for k, v in params.items()}
    on_gpu = {k: cp.asarray(v) for k, v in params.items()}
    cpu_opt, gpu_opt = optim.AdamW(lr=0.01), optim.AdamW(lr=0.01)
    for i, g in enumerate(grads):
        if i == RESUME_AT:  # reload on the GPU from a NumPy state dict: state follows the params
            saved = gpu_opt.state_dict()
            assert all(isinstance(a, np.ndarray) for a in saved["state"].values())
            gpu_opt = optim.AdamW()
            gpu_opt.load_state_dict(saved)
        cpu_opt.step(on_cpu, g)
        gpu_opt.step(on_gpu, {k: cp.asarray(v) for k, v in g.items()})
    assert isinstance(gpu_opt.state["bias"]["exp_avg"], cp.ndarray)
    for k in params:
        np.testing.assert_allclose(cp.asnumpy(on_gpu[k]), on_cpu[k], rtol=1e-12, atol=1e-14)
    gpu_grads = {k: cp.asarray(v) * 10 for k, v in grads[0].items()}
    cpu_grads = {k: v * 10 for k, v in grads[0].items()}
    assert optim.clip_grad_norm(gpu_grads, 1.0) == pytest.approx(optim.clip_grad_norm(cpu_grads, 1.0), rel=1e-12)
    gpu_opt.to("cpu")
    assert isinstance(gpu_opt.state["bias"]["exp_avg"], np.ndarray)
