"""Peak memory of one training step: forward + backward of a recurrent layer (``memory``
scenarios), or the whole step of a character model, embedding to optimizer (``train-step`` and
``sweep`` scenarios, the step of ``bench/train_step.py``).

Method: each framework runs in its own fresh process. It builds the layer or model and the inputs,
runs one step on the same shape (compiling or loading kernels, building oneDNN primitives, touching
the BLAS's work buffers once, creating the optimizer's moments) and one on a single time step (so
that what the layer keeps of its last call is small again), then reads its resident set size,
resets the kernel's peak counter (``/proc/self/clear_refs`` = 5), runs one training step on the
real shape and reads the peak (``VmHWM``). The result is peak minus
baseline: the memory the step itself needs (saved activations, gradients, temporaries), without
the interpreter, the libraries, the weights, the optimizer's state or the inputs.

glibc keeps small freed blocks for reuse and hands large ones back only past a moving threshold,
so the children run with ``MALLOC_MMAP_THRESHOLD_=65536``: every array of 64 KiB or more is its own
mapping, counted while it lives and returned when it is freed, for NumPy, Numba and PyTorch alike.
Linux only (the method needs /proc).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from rnnfast.bench.scenarios import Scenario

METHOD = "VmHWM - VmRSS around a 2nd step, fresh process, MALLOC_MMAP_THRESHOLD_=65536"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _layer_step(s: Scenario, framework: str):
    """A layer's training step ``step(x, dy)``, and its arguments at the full shape and at T=1."""
    from dataclasses import replace

    from rnnfast.bench.harness import _build_layers

    ours, ref, x, dy = _build_layers(s)
    _, _, x_short, dy_short = _build_layers(replace(s, T=1))
    if framework == "torch":
        import torch

        def step(x, dy):
            xt = torch.from_numpy(x).requires_grad_(True)
            ref.zero_grad(set_to_none=False)
            yt, _ = ref(xt)
            yt.backward(torch.from_numpy(dy))
    else:
        def step(x, dy):
            ours(x)
            ours.backward(dy)
    return step, (x, dy), (x_short, dy_short)


def _model_step(s: Scenario, framework: str):
    """A character model's training step ``step(batcher)`` (one update on the batcher's next
    batch), and batchers of the full shape and of T=1."""
    import rnnfast as rf
    from rnnfast.bench.train_step import build_pair, one_update, random_stream

    trainer, reference = build_pair(s, random_stream(s), with_torch=framework == "torch")
    short = rf.StreamBatcher(random_stream(s, seq_len=1), s.B, 1)
    runner = trainer if reference is None else reference

    def step(batcher):
        runner.train_data = batcher
        return one_update(trainer) if reference is None else reference.one_step()

    return step, (runner.train_data,), (short,)


def _child(scenario: dict, framework: str) -> None:
    """Runs in the child: print the step's peak extra memory in bytes."""
    s = Scenario(**scenario)
    step, full, short = (_layer_step if s.kind == "memory" else _model_step)(s, framework)
    step(*full)
    step(*short)
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step(*full)
    print(json.dumps({"peak_bytes": (_status_kib("VmHWM") - base) * 1024}))


def peak_step_bytes(s: Scenario, framework: str) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = f"from rnnfast.bench.memory import _child; _child({s.as_dict()!r}, {framework!r})"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory child for {framework} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def bench_memory(s: Scenario, with_torch: bool) -> dict:
    """Peak extra MiB of one training step, rnnfast and (if present) PyTorch; ratio = torch / rnnfast."""
    result = {"method": METHOD, "peak_mib": peak_step_bytes(s, "rnnfast") / 2**20}
    if with_torch:
        result["torch_peak_mib"] = peak_step_bytes(s, "torch") / 2**20
        result["ratio"] = result["torch_peak_mib"] / result["peak_mib"]
    return result
