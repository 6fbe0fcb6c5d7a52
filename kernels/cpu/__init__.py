"""CPU kernels (Numba @njit), one module per cell, the kernel contract of kernels/README.md."""
from functools import partial

from rnnfast.kernels.cells import ACTIVATIONS

import numpy as np

from rnnfast.kernels.cpu.attention import additive_scores, additive_scores_backward
from rnnfast.kernels.cpu.cross_entropy import cross_entropy_rows
from rnnfast.kernels.cpu.embedding import embedding_backward
from rnnfast.kernels.cpu.gemm import matmul, reuse_packing
from rnnfast.kernels.cpu.generate import COMPILE_PAYS_AT as GENERATE_COMPILE_PAYS_AT
from rnnfast.kernels.cpu.generate import compile_in_background as compile_generate_in_background
from rnnfast.kernels.cpu.generate import compiled_for as generate_compiled_for
from rnnfast.kernels.cpu.generate import generate
from rnnfast.kernels.cpu.gru import gru_backward, gru_forward
from rnnfast.kernels.cpu.lstm import lstm_backward, lstm_forward
from rnnfast.kernels.cpu.optim import adam_step, sgd_step, square_avg_step, sum_of_squares
from rnnfast.kernels.cpu.rnn import rnn_backward, rnn_forward

# cell name (kernels/cells.py) -> (forward, backward), as the contract has them
KERNELS = {
    "rnn_tanh": (rnn_forward, rnn_backward),
    "rnn_relu": (partial(rnn_forward, act=ACTIVATIONS.index("relu")), rnn_backward),
    "lstm": (lstm_forward, lstm_backward),
    "gru": (gru_forward, gru_backward),
}

# dtypes the compiled optimizer, loss and embedding passes take; the library runs its array formulas for others
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

__all__ = ["KERNELS", "matmul", "reuse_packing", "generate", "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward"]
__all__ += ["FLOAT_DTYPES", "additive_scores", "additive_scores_backward", "cross_entropy_rows", "embedding_backward", "sgd_step", "adam_step", "square_avg_step",
            "sum_of_squares", "GENERATE_COMPILE_PAYS_AT", "compile_generate_in_background", "generate_compiled_for"]
