"""Times rnnfast against PyTorch on the same shapes, in the same process, after checking they agree.

Method, for every timed scenario:

1. Build the rnnfast layer and the PyTorch layer with the same weights and inputs and check
   outputs, final states, input gradients and every weight gradient agree (error relative to the
   largest magnitude of PyTorch's result, ``TOLERANCE`` per dtype). A disagreement stops that
   scenario: a fast wrong answer is not a result.
2. Warm up both (Numba compiles or loads its cache; oneDNN builds its primitives), and pick an
   inner loop count so one measurement lasts at least ``MIN_SAMPLE_S``. Before each measurement
   the harness pauses ``SETTLE_S``, so the other library's idle threads have stopped spinning.
3. Time the two alternately (the order flips every round), ``repeats`` rounds, and report medians.

``ratio`` is PyTorch time / rnnfast time (above 1: rnnfast is faster), the median of the ratios
of each round's pair of samples, which were taken moments apart: on a machine shared with other
work this is steadier than a ratio of medians. GFLOP/s counts the GEMM work (forward
``2*T*B*G*H*(I+H)`` per layer and direction, backward twice that); ``sgemm_frac`` sets it against
the faster of two (1024, 1024) SGEMMs timed in the same rounds as the scenario: rnnfast's own GEMM
(``kernels/cpu/gemm.py``, the one its layers use) and NumPy's BLAS. The machine row also has both
SGEMM rates at n=2048 measured at the start of the run, and every row the load average before and
after it, to judge the noise.

PyTorch is optional: without it the rnnfast times are reported alone.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import replace

import numpy as np

import rnnfast as rf
from rnnfast.bench.scenarios import Scenario, select
from rnnfast.kernels.cells import cell_named
from rnnfast.kernels.cpu.gemm import gemm
from rnnfast.testing import rel_err

try:
    import torch
except ImportError:  # rnnfast-only numbers
    torch = None

TOLERANCE = {"float32": 2e-3, "float64": 1e-9}
MIN_SAMPLE_S = 0.02
# BLAS and OpenMP worker threads spin for tens of milliseconds after a call before they sleep;
# on two cores the spinning threads of the library timed last steal a core from the one timed now
# (measured here: PyTorch's LSTM step 86 ms right after rnnfast's, 28 ms after a 0.1 s pause).
SETTLE_S = 0.15
QUICK_REPEATS, FULL_REPEATS = 5, 9


# -- machine ------------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import numba
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "env": {k: v for k, v in sorted(os.environ.items())
                    if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_"))}}
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


SGEMMS = ("rnnfast gemm", "numpy BLAS")


def _sgemm_calls(n):
    """No-argument (n, n) @ (n, n) float32 GEMMs, rnnfast's and NumPy's, and their flop count."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    calls = dict(zip(SGEMMS, (lambda: gemm(a, b, out, False), lambda: np.matmul(a, b, out=out))))
    return calls, 2.0 * n**3


def sgemm_rate(n: int = 2048, repeats: int = 7) -> dict:
    """GFLOP/s of an (n, n) @ (n, n) float32 GEMM: median over ``repeats``, per implementation."""
    calls, _ = _sgemm_calls(n)
    rates = {}
    for name, call in calls.items():
        call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        rates[name] = 2 * n**3 / float(np.median(times)) / 1e9
    return rates


# -- timing -------------------------------------------------------------------------------------
def _seconds_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _sample(fn, inner) -> float:
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def time_alternating(fns: dict, repeats: int, budget_s: float | None = None) -> dict:
    """Seconds per call of each function in ``fns``, timed in alternating rounds: name -> array of
    one sample per round. ``budget_s`` lowers the rounds (to no fewer than 3) so that they take
    about that long."""
    for fn in fns.values():  # warm-up
        fn()
        fn()
    once = {name: _seconds_once(fn) for name, fn in fns.items()}
    inner = {name: max(1, int(np.ceil(MIN_SAMPLE_S / max(t, 1e-7)))) for name, t in once.items()}
    if budget_s is not None:
        round_s = sum(SETTLE_S + inner[name] * t for name, t in once.items())
        repeats = max(3, min(repeats, int(budget_s / round_s)))
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            samples[name].append(_sample(fns[name], inner[name]))
    return {name: np.array(s) for name, s in samples.items()}


def paired_ratio(samples, ref, ours) -> float:
    return float(np.median(samples[ref] / samples[ours]))



# -- recurrent layers ---------------------------------------------------------------------------
def _layer_flops(s: Scenario) -> float:
    G, D = cell_named(s.cell).num_gates, s.directions
    total = 0.0
    for layer in range(s.layers):
        in_size = s.I if layer == 0 else D * s.H
        total += D * 2.0 * s.T * s.B * G * s.H * (in_size + s.H)
    return total


def _build_layers(s: Scenario):
    dtype = np.dtype(s.dtype)
    kind, nonlinearity = (s.cell.split("_") + ["tanh"])[:2]
    cls = {"lstm": rf.LSTM, "gru": rf.GRU, "rnn": rf.RNN}[kind]
    kwargs = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    ours = cls(s.I, s.H, num_layers=s.layers, bidirectional=s.directions == 2, dtype=dtype, seed=0, **kwargs)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((s.T, s.B, s.I)).astype(dtype)
    dy = rng.standard_normal((s.T, s.B, s.directions * s.H)).astype(dtype)
    ref = None
    if torch is not None:
        tcls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
        ref = tcls(s.I, s.H, num_layers=s.layers, bidirectional=s.directions == 2, **kwargs)
        ref = ref.to(torch.float64 if dtype == np.float64 else torch.float32)
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, ref, x, dy


def _check_layers(ours, ref, x, dy, tol) -> float:
    """Largest relative error over y, final state, dx and every weight gradient; raises past tol."""
    ours.zero_grad()
    y, state = ours(x)
    dx, _ = ours.backward(dy)
    xt = torch.from_numpy(x).requires_grad_(True)
    ref.zero_grad()
    yt, state_t = ref(xt)
    yt.backward(torch.from_numpy(dy))
    pairs = {"y": (y, yt), "dx": (dx, xt.grad)}
    state, state_t = (state, state_t) if isinstance(state, tuple) else ((state,), (state_t,))
    pairs.update({f"state{i}": p for i, p in enumerate(zip(state, state_t))})
    named = dict(ref.named_parameters())
    pairs.update({f"d{k}": (g, named[k].grad) for k, g in ours.grads.items()})
    errors = {k: rel_err(a, b.detach().numpy()) for k, (a, b) in pairs.items()}
    worst = max(errors, key=errors.get)
    if errors[worst] > tol:
        raise AssertionError(f"rnnfast and PyTorch disagree on {worst}: relative error {errors[worst]:.2e} > {tol}")
    return errors[worst]


def bench_layer(s: Scenario, repeats: int) -> dict:
    ours, ref, x, dy = _build_layers(s)
    result = {}
    if ref is not None:
        result["max_rel_err"] = _check_layers(ours, ref, x, dy, TOLERANCE[s.dtype])

    def ours_fwd():
        ours(x)

    def ours_step():
        ours(x)
        ours.backward(dy)

    sgemms, sgemm_flops = _sgemm_calls(1024)
    fns = {"rnnfast_fwd": ours_fwd, **sgemms}
    if s.kind == "fwd+bwd":
        fns["rnnfast"] = ours_step
    if ref is not None:
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def torch_fwd():
            with torch.no_grad():
                ref(xt)

        def torch_step():
            ref.zero_grad(set_to_none=True)
            xt.grad = None
            yt, _ = ref(xt)
            yt.backward(dyt)

        fns["torch_fwd"] = torch_fwd
        if s.kind == "fwd+bwd":
            fns["torch"] = torch_step
    samples = time_alternating(fns, repeats)
    times = {name: float(np.median(v)) for name, v in samples.items()}
    flops = _layer_flops(s)
    result["sgemm_gflops"] = sgemm_flops / min(times[name] for name in SGEMMS) / 1e9
    result["fwd_ms"] = times["rnnfast_fwd"] * 1e3
    result["fwd_gflops"] = flops / times["rnnfast_fwd"] / 1e9
    if ref is not None:
        result["torch_fwd_ms"] = times["torch_fwd"] * 1e3
        result["fwd_ratio"] = paired_ratio(samples, "torch_fwd", "rnnfast_fwd")
    if s.kind == "fwd+bwd":
        result["ms"] = times["rnnfast"] * 1e3
        result["gflops"] = 3 * flops / times["rnnfast"] / 1e9
        if ref is not None:
            result["torch_ms"] = times["torch"] * 1e3
            result["ratio"] = paired_ratio(samples, "torch", "rnnfast")
    else:
        result.update(ms=result["fwd_ms"], gflops=result["fwd_gflops"])
        if ref is not None:
            result.update(torch_ms=result["torch_fwd_ms"], ratio=result["fwd_ratio"])
    return result


# -- generation ---------------------------------------------------------------------------------
def bench_generate(s: Scenario, repeats: int) -> dict:
    from rnnfast.bench.generation import rnnfast_sampler, torch_sampler
    from rnnfast.bench.train_step import build_model

    model = build_model(s).eval()
    ours = rnnfast_sampler(model, s.chars)
    result = {}
    fns = {"rnnfast": ours}
    if torch is not None:
        theirs, agreement = torch_sampler(model, s.chars)
        result["id_agreement"] = agreement
        fns["torch"] = theirs
    samples = time_alternating(fns, repeats)
    times = {name: float(np.median(v)) for name, v in samples.items()}
    result["ms"] = times["rnnfast"] * 1e3
    result["us_per_char"] = times["rnnfast"] / s.chars * 1e6
    if torch is not None:
        result["torch_ms"] = times["torch"] * 1e3
        result["torch_us_per_char"] = times["torch"] / s.chars * 1e6
        result["ratio"] = paired_ratio(samples, "torch", "rnnfast")
    return result


# -- the run ------------------------------------------------------------------------------------
def _run_scenario(s: Scenario, repeats: int) -> dict:
    if s.kind in ("fwd", "fwd+bwd"):
        return bench_layer(s, repeats)
    if s.kind == "generate":
        return bench_generate(s, repeats)
    if s.kind == "memory":
        from rnnfast.bench.memory import bench_memory
        return bench_memory(s, torch is not None)
    if s.kind == "train-step":
        from rnnfast.bench.train_step import bench_train_step
        return bench_train_step(s, repeats, torch is not None)
    if s.kind == "sweep":
        from rnnfast.bench.sweep import bench_sweep_point
        return bench_sweep_point(s, repeats, torch is not None)
    if s.kind == "time-to-loss":
        from rnnfast.bench.time_to_loss import bench_time_to_loss
        return bench_time_to_loss(s, torch is not None)
    if s.kind == "cold-start":
        from rnnfast.bench.cold_start import bench_cold_start
        return bench_cold_start(s)
    if s.kind == "option-cost":
        from rnnfast.bench.option_cost import bench_option_cost
        return bench_option_cost(s, repeats)
    raise ValueError(f"unknown scenario kind {s.kind!r}")


def run_bench(full: bool = False, device: str = "cpu", cells=None, repeats=None, progress=None,
              data=None, sweep: bool = False) -> list[dict]:
    """Run the quick (or ``full``, or ``sweep``) scenario set and return one dict per scenario.

    The first dict describes the machine (``kind == "machine"``: CPU, library versions, the
    OPENBLAS_* environment and the SGEMM rates measured now); every other one is a scenario's
    fields plus its results (``ms``, ``torch_ms``, ``ratio``, ``gflops``, ``sgemm_frac``, ...) or an
    ``error``. ``data`` is the corpus of the time-to-loss scenarios (default: tinyshakespeare beside
    the checkout). ``progress``, if given, is called with each result as it lands.
    """
    if device == "gpu":
        from rnnfast.bench.gpu_check import run_gpu_bench

        return run_gpu_bench(full=full, cells=cells, repeats=repeats)
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    repeats = repeats or (FULL_REPEATS if full else QUICK_REPEATS)
    scenarios = select(full, cells, sweep_points=sweep)
    if data is not None:
        scenarios = [replace(s, data=str(data)) if s.kind == "time-to-loss" else s for s in scenarios]
    info = {"kind": "machine", **machine_info(), "sgemm_gflops": sgemm_rate()}
    sgemm = max(info["sgemm_gflops"].values())  # for rows that time no SGEMM of their own
    results = [info]
    if progress:
        progress(info)
    for s in scenarios:
        row = {"scenario": s.name, **s.as_dict(), "load_before": os.getloadavg()[0]}
        try:
            row.update(_run_scenario(s, repeats))
        except Exception as exc:  # one failing scenario must not hide the others' numbers
            row["error"] = f"{type(exc).__name__}: {exc}"
        row["load_after"] = os.getloadavg()[0]
        if "gflops" in row:
            row["sgemm_frac"] = row["gflops"] / row.get("sgemm_gflops", sgemm)
        results.append(row)
        if progress:
            progress(row)
    return results


# -- output -------------------------------------------------------------------------------------
def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def _table(columns, rows, cells, notes: int = 0) -> list[str]:
    """Markdown lines: a header of ``columns`` (the first and the last ``notes`` left-aligned, numbers
    right-aligned), one line per row, ``cells(row)`` giving all but the first column (the scenario),
    and a row's error in place of its numbers."""
    numbers = len(columns) - 1 - notes
    out = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * numbers + "---|" * notes]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['scenario']} | error: {r['error']} |" + " |" * (len(columns) - 2))
        else:
            out.append("| " + " | ".join([r["scenario"], *cells(r)]) + " |")
    return out + [""]


def _load(r) -> str:
    return f"{r['load_before']:.1f}-{r['load_after']:.1f}"


def _layer_cells(r):
    step = r["kind"] == "fwd+bwd"
    return [_fmt(r.get("fwd_ms"), ".2f"), _fmt(r.get("torch_fwd_ms"), ".2f"), _fmt(r.get("fwd_ratio"), ".2f"),
            _fmt(r.get("ms") if step else None, ".2f"), _fmt(r.get("torch_ms") if step else None, ".2f"),
            _fmt(r.get("ratio"), ".2f"), _fmt(r.get("gflops"), ".0f"), _fmt(r.get("sgemm_gflops"), ".0f"),
            _fmt(r.get("sgemm_frac"), ".0%"), _load(r)]


def _step_cells(r):
    cells = [_fmt(r.get("ms"), ".2f"), _fmt(r.get("torch_ms"), ".2f"), _fmt(r.get("ratio"), ".2f"),
             _fmt(r.get("tokens_per_s"), ",.0f"), _fmt(r.get("torch_tokens_per_s"), ",.0f")]
    if r["kind"] == "sweep":
        cells += [_fmt(r.get("peak_mib"), ".1f"), _fmt(r.get("torch_peak_mib"), ".1f"), _fmt(r.get("mem_ratio"), ".2f")]
    return cells + [_fmt(r.get("max_rel_err"), ".1e"), _load(r)]


def _time_to_loss_cells(r):
    return [_fmt(r.get("best_val"), ".4f"), _fmt(r.get("torch_best_val"), ".4f"), _fmt(r.get("loss_diff"), "+.4f"),
            str(r["steps"]), _fmt(r.get("torch_steps"), "d"), _fmt(r.get("steps_ratio"), ".2f"),
            f"{r['corpus']} ({r['corpus_chars']:,} chars)"]


def _cold_start_cells(r):
    seconds = ("cold_train_s", "cold_generate_s", "warm_train_s", "warm_generate_s")
    return [f"{r[k]:.2f}" for k in seconds] + [r["method"]]


def _option_cost_cells(r):
    return [_fmt(r.get("plain_ms"), ".2f"), _fmt(r.get("ms"), ".2f"), _fmt(r.get("cost"), ".3f"), _load(r)]


def _other_cells(r):
    if r["kind"] == "generate":
        return [f"{r['us_per_char']:.1f} µs/char", f"{_fmt(r.get('torch_us_per_char'), '.1f')} µs/char",
                _fmt(r.get("ratio"), ".1f"),
                f"ids agree with PyTorch's probabilities: {_fmt(r.get('id_agreement'), '.1%')}"]
    return [f"{r['peak_mib']:.1f} MiB", f"{_fmt(r.get('torch_peak_mib'), '.1f')} MiB", _fmt(r.get("ratio"), ".2f"),
            r["method"]]


_STEP_COLUMNS = ["scenario", "ms/step", "torch ms/step", "ratio", "tokens/s", "torch tokens/s"]
_CHECK_COLUMNS = ["max rel err", "load"]
# (kinds, columns, cells, left-aligned note columns at the end), in the order the tables print
TABLES = (
    (("fwd", "fwd+bwd"), ["scenario", "fwd ms", "torch fwd ms", "fwd ratio", "fwd+bwd ms", "torch fwd+bwd ms", "ratio",
                          "GFLOP/s", "SGEMM GFLOP/s", "of SGEMM", "load"], _layer_cells, 0),
    (("train-step",), _STEP_COLUMNS + _CHECK_COLUMNS, _step_cells, 0),
    (("sweep",), _STEP_COLUMNS + ["peak MiB", "torch peak MiB", "memory ratio"] + _CHECK_COLUMNS, _step_cells, 0),
    (("time-to-loss",), ["scenario", "best val loss", "torch best val loss", "torch - rnnfast", "steps",
                         "torch steps", "steps ratio", "corpus"], _time_to_loss_cells, 1),
    (("option-cost",), ["scenario", "plain ms/step", "with option ms/step", "cost (with / plain)", "load"],
     _option_cost_cells, 0),
    (("cold-start",), ["scenario", "cold train s", "cold generate s", "warm train s", "warm generate s", "method"],
     _cold_start_cells, 1),
    (("generate", "memory"), ["scenario", "rnnfast", "PyTorch", "ratio", "note"], _other_cells, 1),
)


def format_table(results) -> str:
    """Markdown: the machine line, then one table per group of kinds (``TABLES``) that has rows.

    Ratios are PyTorch / rnnfast (time, memory, or for time-to-loss rnnfast's steps / PyTorch's):
    above 1 rnnfast is ahead; ``torch - rnnfast`` of the best validation loss is above 0 when
    rnnfast got lower."""
    machine = next((r for r in results if r.get("kind") == "machine"), None)
    rows = [r for r in results if r.get("kind") != "machine"]
    out = []
    if machine:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in machine["sgemm_gflops"].items())
        env = " ".join(f"{k}={v}" for k, v in machine["env"].items()) or "none"
        out += [f"Machine: {machine['cpu']}, {machine['cores']} cores; SGEMM GFLOP/s: {rates}; "
                f"numba {machine['numba']}, numpy {machine['numpy']}, torch {machine.get('torch', 'absent')}"
                f" ({machine.get('torch_threads', '-')} threads); env: {env}", ""]
    for kinds, columns, cells, notes in TABLES:
        chosen = [r for r in rows if r["kind"] in kinds]
        if chosen:
            out += _table(columns, chosen, cells, notes)
    return "\n".join(out)
