"""The numba.cuda kernels' logic under the CUDA simulator, so CI (no GPU, no CuPy) checks it.

The simulator must be switched on before numba.cuda is imported, so the kernels run in a child
process with ``NUMBA_ENABLE_CUDASIM=1``, NumPy arrays standing in for CuPy; the rest of the test
session is unaffected. The simulator runs one block of the persistent kernels (its grid barrier is
then exact); tiny shapes with ``KC`` and ``ROWS`` shrunk walk every loop: several staged k chunks,
several batch chunks, k split across threads, padded thread tiles.
"""
import json
import os
import subprocess
import sys

import pytest

CASES = [
    ("rnn", "tanh", "float64", False), ("rnn", "relu", "float64", True), ("rnn", "tanh", "float32", True),
    ("gru", "tanh", "float64", False), ("gru", "tanh", "float64", True), ("gru", "tanh", "float32", True),
    ("lstm", "tanh", "float64", False), ("lstm", "tanh", "float64", True), ("lstm", "tanh", "float32", True),
]

CHILD = """
import json, sys
import numpy as np
from rnnfast.kernels.cuda import common
common.KC, common.ROWS = 3, 2
from rnnfast.kernels import cuda
from rnnfast.bench.gpu_check import parity
out = {}
for cell, nl, dtype, lengths in json.loads(sys.argv[1]):
    err, worst = parity(cuda, np.asarray, np.asarray, cell, np.dtype(dtype).type, lengths, (3, 3, 2, 5), nl)
    out[f"{cell}-{nl}-{dtype}-{lengths}"] = [err, worst]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cell,nonlinearity,dtype,lengths", CASES)
def test_kernel_logic_under_simulator(results, cell, nonlinearity, dtype, lengths):
    err, worst = results[f"{cell}-{nonlinearity}-{dtype}-{lengths}"]
    assert err <= (1e-12 if dtype == "float64" else 1e-5), f"{worst}: relative error {err:.2e}"
