"""GPU kernels, checked and timed in one run: every cell, dtype and lengths setting against the
reference (rnnfast.testing's kernel check, the one tests/test_reference.py runs), the recurrent
layers end to end on CuPy arrays, then forward and forward+backward against PyTorch/cuDNN (fp32,
TF32 off, CUDA events, medians) at the issue's shapes.

    python -m rnnfast.bench.gpu_check [--out DIR] [--reps N]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from rnnfast.errors import RnnfastError
from rnnfast.kernels.cells import CELLS, cell_named
from rnnfast.testing import KERNEL_SHAPES, TOLERANCE, device, kernel_errors, make_case, rel_err, torch_recurrent, worst

SHAPES = [(100, 32, 128, 256), (100, 64, 512, 512), (100, 256, 1024, 1024), (200, 1, 256, 256)]


def _parity_table():
    rows = []
    gpu = device("gpu")
    for cell in CELLS:
        for dtype in (np.float32, np.float64):
            for lengths in (False, True):
                for shape in KERNEL_SHAPES:
                    err, name = worst(kernel_errors(gpu, make_case(cell, shape, dtype, lengths)))
                    ok = err <= TOLERANCE[np.dtype(dtype)]
                    rows.append(dict(cell=cell, dtype=dtype.__name__, lengths=lengths, shape=shape, err=err,
                                     worst=name, ok=ok))
                    print(f"parity {cell:9s} {dtype.__name__:7s} lengths={lengths!s:5s} {shape!s:18s} "
                          f"max rel err {err:.2e} ({name}) {'ok' if ok else 'FAIL'}", flush=True)
        # the cell options (recurrent dropout, zoneout in training and eval form) at shapes that walk the tiling
        for options in (("recurrent_dropout", "zoneout"), ("zoneout_eval",)):
            for shape in KERNEL_SHAPES[3:]:
                err, name = worst(kernel_errors(gpu, make_case(cell, shape, np.float64, True, options=options)))
                ok = err <= TOLERANCE[np.dtype(np.float64)]
                rows.append(dict(cell=cell, dtype="float64", lengths=True, shape=shape, options="+".join(options),
                                 err=err, worst=name, ok=ok))
                print(f"parity {cell:9s} float64 {'+'.join(options):26s} {shape!s:18s} max rel err {err:.2e} ({name}) "
                      f"{'ok' if ok else 'FAIL'}", flush=True)
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
    """cells: kinds ("lstm", "gru", "rnn"); an RNN runs as rnn_tanh."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for shape in shapes:
        T, B, I, H = shape
        for kind in cells:
            cell = cell_named(kind).name
            case = make_case(cell, shape, np.float32)
            x = cp.asarray(case.x)
            state = tuple(cp.asarray(s) for s in case.state)
            weights = tuple(cp.asarray(w) for w in case.weights)
            dy = cp.asarray(case.dy)
            fwd, bwd = kernels.KERNELS[cell]

            def ours_fwd():
                return fwd(x, state, weights)

            def ours_fb():
                out = fwd(x, state, weights)
                return bwd(dy, (None,) * len(state), out[-1])

            names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
            module = torch_recurrent(cell, I, H, dict(zip(names, case.weights)), np.float32).cuda()
            tx = torch.from_numpy(case.x).cuda().requires_grad_(True)
            ts = [torch.from_numpy(s).cuda()[None].requires_grad_(True) for s in case.state]
            tstate = tuple(ts) if len(ts) == 2 else ts[0]
            tdy = torch.from_numpy(case.dy).cuda()

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
            _, _, (_, dw_hh, _, _) = ours_fb()
            torch_fb()
            agree = max(rel_err(y_ours, y_ref), rel_err(cp.asnumpy(dw_hh), module.weight_hh_l0.grad.cpu().numpy()))

            row = dict(shape=shape, cell=kind, agree=agree,
                       ours_fwd=_median_ms(ours_fwd, reps, torch), ours_fb=_median_ms(ours_fb, reps, torch),
                       cudnn_fwd=_median_ms(torch_fwd, reps, torch), cudnn_fb=_median_ms(torch_fb, reps, torch))
            row["ratio_fb"] = row["ours_fb"] / row["cudnn_fb"]
            rows.append(row)
            log(f"time {shape!s:22s} {kind:4s} rnnfast fwd {row['ours_fwd']:8.3f} ms  f+b {row['ours_fb']:8.3f} ms | "
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
        flops = 2 * T * B * cell_named(r["cell"]).num_gates * H * (I + H)  # one forward's GEMM work
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
    case = make_case("lstm", (2, 1, 8, 8), np.float32)
    x, state, weights = cp.asarray(case.x), tuple(map(cp.asarray, case.state)), tuple(map(cp.asarray, case.weights))
    forward, backward = kernels.KERNELS["lstm"]
    forward(x, state, weights)
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        out = forward(x, state, weights)
    t1 = time.perf_counter()
    for _ in range(20):
        backward(cp.asarray(case.dy), (None, None), out[-1])
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
        report["parity"] = _parity_table()
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
