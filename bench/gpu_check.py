"""GPU kernels, checked and timed in one run: parity with the CPU kernels for every cell, dtype and
lengths setting, the recurrent layers end to end on CuPy arrays, then forward and forward+backward
against PyTorch/cuDNN (fp32, TF32 off, CUDA events, medians) at the issue's shapes.

    python -m rnnfast.bench.gpu_check [--out DIR] [--reps N]

:func:`parity` is also what ``tests/test_gpu.py`` and ``tests/test_cuda_sim.py`` hold the kernels to.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from rnnfast.bench.harness import rel_err
from rnnfast.errors import RnnfastError

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
TOLERANCE = {np.float64: 1e-9, np.float32: 1e-4}  # relative to the largest reference magnitude
SHAPES = [(100, 32, 128, 256), (100, 64, 512, 512), (100, 256, 1024, 1024), (200, 1, 256, 256)]
PARITY_SHAPES = [(7, 5, 6, 40), (5, 3, 4, 300), (4, 70, 8, 64)]


def make_case(cell, T, B, I, H, dtype, lengths, seed=0):
    """Inputs, weights (PyTorch's init) and upstream gradients for one kernel call, as NumPy."""
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    k = 1 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-k, k, shape).astype(dtype)

    def n(*shape):
        return rng.standard_normal(shape).astype(dtype)

    n_state = 2 if cell == "lstm" else 1
    case = {
        "x": n(T, B, I),
        "state": [0.5 * n(B, H) for _ in range(n_state)],
        "weights": [u(G * H, I), u(G * H, H), u(G * H), u(G * H)],
        "dy": n(T, B, H),
        "dstate": [n(B, H) for _ in range(n_state)],
        "lengths": None,
    }
    if lengths:
        case["lengths"] = rng.integers(1, T + 1, B)
        case["lengths"][0] = T
    return case


def run_kernels(kernels, cell, case, to, nonlinearity="tanh"):
    """Forward then backward through ``kernels``; returns every output and gradient as a dict."""
    x = to(case["x"])
    state = [to(s) for s in case["state"]]
    weights = [to(w) for w in case["weights"]]
    lengths = None if case["lengths"] is None else to(case["lengths"])
    kw = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
    y, *final, cache = getattr(kernels, f"{cell}_forward")(x, *state, *weights, lengths, **kw)
    grads = getattr(kernels, f"{cell}_backward")(to(case["dy"]), *[to(d) for d in case["dstate"]], cache)
    names = ["y", "hT", "cT"][: 1 + len(final)]
    names += ["dx", "dh0", "dc0"][: 1 + len(state)] + ["dw_ih", "dw_hh", "db_ih", "db_hh"]
    return dict(zip(names, [y, *final, *grads]))


def parity(gpu_kernels, to_device, to_host, cell, dtype, lengths, shape, nonlinearity="tanh"):
    """Largest relative error of any output or gradient of ``gpu_kernels`` against the CPU kernels,
    and the name of that array."""
    from rnnfast.kernels import cpu

    case = make_case(cell, *shape, dtype, lengths)
    ref = run_kernels(cpu, cell, case, lambda a: a, nonlinearity)
    got = run_kernels(gpu_kernels, cell, case, to_device, nonlinearity)
    errs = {name: rel_err(to_host(got[name]), ref[name]) for name in ref}
    worst = max(errs, key=errs.get)
    return errs[worst], worst


def _parity_table(kernels, cp):
    rows = []
    for cell in GATES:
        for dtype in (np.float32, np.float64):
            for lengths in (False, True):
                for shape in PARITY_SHAPES:
                    for nl in (("tanh", "relu") if cell == "rnn" else ("tanh",)):
                        err, worst = parity(kernels, cp.asarray, cp.asnumpy, cell, dtype, lengths, shape, nl)
                        ok = err <= TOLERANCE[dtype]
                        rows.append(dict(cell=cell if cell != "rnn" else f"rnn_{nl}", dtype=dtype.__name__,
                                         lengths=lengths, shape=shape, err=err, worst=worst, ok=ok))
                        print(f"parity {rows[-1]['cell']:9s} {dtype.__name__:7s} lengths={lengths!s:5s} "
                              f"{shape!s:18s} max rel err {err:.2e} ({worst}) {'ok' if ok else 'FAIL'}", flush=True)
    return rows


def layers_end_to_end(cp):
    """rf.RNN/LSTM/GRU (2 layers, bidirectional, lengths) on CuPy against the same layer on NumPy."""
    import rnnfast as rf

    rows = []
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 4, 6)).astype(np.float64)
    lengths = np.array([9, 3, 7, 1])
    for name in ("RNN", "LSTM", "GRU"):
        cpu = getattr(rf, name)(6, 10, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
        gpu = getattr(rf, name)(6, 10, num_layers=2, bidirectional=True, dtype=np.float64, seed=0).to("gpu")
        y_c, _ = cpu(x, lengths=lengths)
        y_g, _ = gpu(cp.asarray(x), lengths=lengths)
        dy = rng.standard_normal(y_c.shape)
        dx_c, _ = cpu.backward(dy)
        dx_g, _ = gpu.backward(cp.asarray(dy))
        errs = [rel_err(cp.asnumpy(y_g), y_c), rel_err(cp.asnumpy(dx_g), dx_c)]
        errs += [rel_err(cp.asnumpy(gpu.grads[k]), cpu.grads[k]) for k in cpu.grads]
        ok = isinstance(y_g, cp.ndarray) and max(errs) <= 1e-9
        rows.append(dict(layer=name, err=max(errs), ok=ok))
        print(f"layer {name:4s} on CuPy: max rel err {max(errs):.2e} {'ok' if ok else 'FAIL'}", flush=True)
    return rows


def _median_ms(fn, reps, torch):
    """Median GPU time of ``fn`` by CUDA events. torch's and CuPy's default streams are the same
    legacy stream, so torch's events time CuPy and numba.cuda work too."""
    times = []
    for i in range(reps + 2):  # two warm-ups (the first call compiles)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _timing_table(kernels, cp, torch, reps, shapes=SHAPES, cells=("lstm", "gru", "rnn"), log=print):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for shape in shapes:
        T, B, I, H = shape
        for cell in cells:
            case = make_case(cell, T, B, I, H, np.float32, False)
            x = cp.asarray(case["x"])
            state = [cp.asarray(s) for s in case["state"]]
            weights = [cp.asarray(w) for w in case["weights"]]
            dy = cp.asarray(case["dy"])
            fwd = getattr(kernels, f"{cell}_forward")
            bwd = getattr(kernels, f"{cell}_backward")

            def ours_fwd():
                return fwd(x, *state, *weights)

            def ours_fb():
                out = fwd(x, *state, *weights)
                return bwd(dy, *[None] * len(state), out[-1])

            module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](I, H).cuda()
            with torch.no_grad():
                for p, w in zip((module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0),
                                case["weights"]):
                    p.copy_(torch.from_numpy(w))
            tx = torch.from_numpy(case["x"]).cuda().requires_grad_(True)
            ts = [torch.from_numpy(s).cuda()[None].requires_grad_(True) for s in case["state"]]
            tstate = tuple(ts) if cell == "lstm" else ts[0]
            tdy = torch.from_numpy(case["dy"]).cuda()

            def torch_fwd():
                with torch.no_grad():
                    return module(tx, tstate)

            def torch_fb():
                module.zero_grad(set_to_none=True)
                tx.grad = None
                y, _ = module(tx, tstate)
                y.backward(tdy)

            # Agreement before timing: outputs and one weight gradient against cuDNN.
            y_ours = cp.asnumpy(ours_fwd()[0])
            y_ref = torch_fwd()[0].cpu().numpy()
            grads = ours_fb()
            torch_fb()
            agree = max(rel_err(y_ours, y_ref), rel_err(cp.asnumpy(grads[-3]), module.weight_hh_l0.grad.cpu().numpy()))

            row = dict(shape=shape, cell=cell, agree=agree,
                       ours_fwd=_median_ms(ours_fwd, reps, torch), ours_fb=_median_ms(ours_fb, reps, torch),
                       cudnn_fwd=_median_ms(torch_fwd, reps, torch), cudnn_fb=_median_ms(torch_fb, reps, torch))
            row["ratio_fb"] = row["ours_fb"] / row["cudnn_fb"]
            rows.append(row)
            log(f"time {shape!s:22s} {cell:4s} rnnfast fwd {row['ours_fwd']:8.3f} ms  f+b {row['ours_fb']:8.3f} ms | "
                  f"cuDNN fwd {row['cudnn_fwd']:8.3f} ms  f+b {row['cudnn_fb']:8.3f} ms | f+b ratio "
                  f"{row['ratio_fb']:.2f} | agree {agree:.1e}")
            del module, tx, ts, x, state, weights, dy
            cp.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
    return rows


def _cublas_sgemm_gflops(cp, torch, n=4096, reps=10):
    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = cp.random.standard_normal((n, n), dtype=cp.float32)
    return 2 * n**3 / (_median_ms(lambda: a @ b, reps, torch) * 1e-3) / 1e9


def run_gpu_bench(full=False, cells=None, repeats=None):
    """``rnnfast bench --device gpu``: the timing table as rows of the CPU harness's format, so
    :func:`rnnfast.bench.harness.format_table` prints it. The ratio is cuDNN's time over rnnfast's,
    as on the CPU (above 1, rnnfast is faster). The quick set is the smallest and the batch-1 shape;
    ``full`` is all four. ``cells`` names from "lstm", "gru", "rnn"/"rnn_tanh"."""
    import cupy as cp

    try:
        import torch
    except ImportError:
        raise RnnfastError("the GPU benchmark times cuDNN through PyTorch alongside rnnfast; "
                           "install torch with CUDA support (pip install torch) and run it again") from None

    from rnnfast.bench.harness import machine_info
    from rnnfast.kernels import cuda as kernels

    wanted = ("lstm", "gru", "rnn") if not cells else tuple(dict.fromkeys(c.split("_")[0] for c in cells))
    shapes = SHAPES if full else [SHAPES[0], SHAPES[-1]]
    gpu = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    sgemm = _cublas_sgemm_gflops(cp, torch)
    host = machine_info()
    results = [{**host, "kind": "machine", "cpu": f"{gpu} (host {host['cpu']})",
                "sgemm_gflops": {"cuBLAS fp32": sgemm}}]
    timed = _timing_table(kernels, cp, torch, repeats or 10, shapes, wanted,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    for r in timed:
        T, B, I, H = r["shape"]
        flops = 2 * T * B * GATES[r["cell"]] * H * (I + H)  # one forward's GEMM work
        results.append({
            "scenario": f"fwd+bwd {r['cell']} {tuple(r['shape'])}", "kind": "fwd+bwd", "cell": r["cell"],
            "T": T, "B": B, "I": I, "H": H, "max_rel_err": r["agree"],
            "fwd_ms": r["ours_fwd"], "torch_fwd_ms": r["cudnn_fwd"], "fwd_ratio": r["cudnn_fwd"] / r["ours_fwd"],
            "ms": r["ours_fb"], "torch_ms": r["cudnn_fb"], "ratio": r["cudnn_fb"] / r["ours_fb"],
            "gflops": 3 * flops / (r["ours_fb"] * 1e-3) / 1e9, "sgemm_gflops": sgemm,
            "sgemm_frac": 3 * flops / (r["ours_fb"] * 1e-3) / 1e9 / sgemm, "load_before": 0.0, "load_after": 0.0})
    return results


def _host_overhead(kernels, cp):
    """Host time of one tiny forward and forward+backward call (what a small shape pays per call)."""
    case = make_case("lstm", 2, 1, 8, 8, np.float32, False)
    args = [cp.asarray(case["x"])] + [cp.asarray(a) for a in case["state"] + case["weights"]]
    kernels.lstm_forward(*args)
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        out = kernels.lstm_forward(*args)
    t1 = time.perf_counter()
    for _ in range(20):
        kernels.lstm_backward(cp.asarray(case["dy"]), None, None, out[-1])
    t2 = time.perf_counter()
    cp.cuda.Device().synchronize()
    res = {"lstm_forward_host_us": (t1 - t0) / 20 * 1e6, "lstm_backward_host_us": (t2 - t1) / 20 * 1e6}
    print("host time per call:", {k: round(v) for k, v in res.items()}, flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--skip", nargs="*", default=[], choices=["parity", "layers", "timing"])
    args = ap.parse_args(argv)

    import cupy as cp
    import torch

    from rnnfast.kernels import cuda as kernels

    report = {"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode()}
    print("device:", report["device"], flush=True)
    if "parity" not in args.skip:
        report["parity"] = _parity_table(kernels, cp)
    if "layers" not in args.skip:
        report["layers"] = layers_end_to_end(cp)
    report["host"] = _host_overhead(kernels, cp)
    if "timing" not in args.skip:
        report["timing"] = _timing_table(kernels, cp, torch, args.reps)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    failed = [r for r in report.get("parity", []) + report.get("layers", []) if not r["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
