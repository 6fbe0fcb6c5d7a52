"""rnnfast: RNN, LSTM and GRU with hand-written BPTT, on Numba (CPU) and numba.cuda + CuPy (GPU).

    >>> import numpy as np, rnnfast as rf
    >>> lstm = rf.LSTM(8, 16, num_layers=2, seed=0)
    >>> y, (h, c) = lstm(np.zeros((5, 3, 8), np.float32))
    >>> y.shape, h.shape
    ((5, 3, 16), (2, 3, 16))
"""
__version__ = "0.1.0"

from rnnfast.backend import get_array_module, get_backend, gpu_available, to_device, to_numpy
from rnnfast.errors import CheckpointError, DataError, NonFiniteLossError, RnnfastError
from rnnfast.module import Module
from rnnfast.recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

# -- each module's exports below: one block per module ---------------------------------------
from rnnfast import losses, metrics, optim
from rnnfast.layers import Dropout, Embedding, Linear
from rnnfast import checkpoint, data, interop
from rnnfast.checkpoint import load_checkpoint, save_checkpoint
from rnnfast.data import ArrayBatcher, StreamBatcher, Vocab
from rnnfast import models
from rnnfast import callbacks, tasks
from rnnfast.callbacks import Callback, History, JSONLLogger, ProgressBar, TensorBoardLogger
from rnnfast.trainer import Trainer, fit
from rnnfast import export
