"""The numba.cuda kernels' logic under the CUDA simulator, so CI (no GPU, no CuPy) checks it.

The simulator must be switched on before numba.cuda is imported, so the kernels run in a child
process with ``NUMBA_ENABLE_CUDASIM=1``, NumPy arrays standing in for CuPy (rnnfast.testing's
"sim" device); the rest of the test session is unaffected. The child holds each case to the
reference with the kernel check of tests/test_reference.py. The simulator runs one block of the
persistent kernels (its grid barrier is then exact); tiny shapes with ``KC`` and ``ROWS`` shrunk
walk every loop: several staged k chunks, several batch chunks, k split across threads, padded
thread tiles.
"""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # one child process, a minute of simulated kernels

CASES = [
    ("rnn_tanh", "float64", False, ""), ("rnn_relu", "float64", True, ""), ("rnn_tanh", "float32", True, ""),
    ("gru", "float64", False, ""), ("gru", "float64", True, ""), ("gru", "float32", True, ""),
    ("lstm", "float64", False, ""), ("lstm", "float64", True, ""), ("lstm", "float32", True, ""),
]
# the cell options (recurrent dropout and zoneout, in training and eval form) on every cell
CASES += [(cell, "float64", True, options) for cell in ("rnn_tanh", "rnn_relu", "gru", "lstm")
          for options in ("recurrent_dropout+zoneout", "zoneout_eval")]
CASES += [("lstm", "float32", True, "recurrent_dropout+zoneout"), ("gru", "float64", False, "recurrent_dropout")]
# layer norm (the recurrent side's and the LSTM's c norm are the kernels'; the input side's is array code)
CASES += [(cell, "float64", lengths, options) for cell in ("rnn_tanh", "gru", "lstm")
          for lengths, options in ((True, "layer_norm"), (False, "layer_norm+recurrent_dropout+zoneout"))]
CASES += [("lstm", "float32", True, "layer_norm+zoneout"), ("rnn_relu", "float64", True, "layer_norm+zoneout_eval")]
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}

CHILD = """
import json, sys
from rnnfast.kernels.cuda import common
common.KC, common.ROWS = 3, 2
from rnnfast import testing
sim = testing.device("sim")
out = {}
for cell, dtype, lengths, options in json.loads(sys.argv[1]):
    key = f"{cell}-{dtype}-{lengths}-{options}"
    try:
        out[key] = testing.worst(testing.kernel_errors(sim, testing.make_case(
            cell, (3, 3, 2, 5), dtype, lengths, options=tuple(filter(None, options.split("+"))))))
    except Exception as exc:  # each case reports its own failure
        out[key] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cell,dtype,lengths,options", CASES)
def test_kernel_logic_under_simulator(results, cell, dtype, lengths, options):
    result = results[f"{cell}-{dtype}-{lengths}-{options}"]
    assert not isinstance(result, str), result
    err, worst = result
    assert err <= TOLERANCE[dtype], f"{worst}: relative error {err:.2e}"
