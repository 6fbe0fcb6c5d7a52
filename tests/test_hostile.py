"""Hostile but fair input: crafted checkpoints and corpora are refused with one line, before they
cost memory. Memory is bounded by a child process's own peak RSS (its VmHWM, see run_measured),
never by timing."""
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from rnnfast.checkpoint import load_checkpoint, load_model, load_weights, save_checkpoint
from rnnfast.data import Vocab, read_text
from rnnfast.data import text as text_module
from rnnfast.errors import CheckpointError, DataError
from rnnfast.models import CharRNN, SeqClassifier, SeqRegressor
from rnnfast.tasks import check_same_data, read_charlm

GiB = 1 << 30
# A child that imports rnnfast and refuses a file peaks near 150 MB; what these files used to cost
# was 2 to 4 GB (and a MemoryError at 10**9), so 400 MB tells the two apart with room to spare.
PEAK_LIMIT_MB = 400


# The child writes its own peak (VmHWM) when it exits. Not wait4's ru_maxrss: a child's maxrss starts
# from its parent's high-water mark at fork and exec, so under a large pytest process every child
# read the same 755 MB in CI. VmHWM belongs to the address space exec gives the child.
PEAK_PRELUDE = """
import atexit, os
def _record_peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["RNNFAST_TEST_PEAK_FILE"], "w") as out:
        out.write(kib)
atexit.register(_record_peak)
"""


def run_measured(code: str, *args) -> tuple[int, str, float]:
    """Run ``python -c code args`` and return its exit code, its stderr and its peak RSS in MB."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        proc = subprocess.run([sys.executable, "-c", PEAK_PRELUDE + code, *map(str, args)], capture_output=True,
                              text=True, env={**os.environ, "RNNFAST_TEST_PEAK_FILE": str(peak_file)})
        return proc.returncode, proc.stderr, int(peak_file.read_text()) / 1024


def test_the_peak_measurement_sees_what_the_child_allocates():
    # so that the bounds below can fail: a child touching 600 MB reads above the limit
    rc, _, peak = run_measured("import numpy as np; np.ones(600 << 20, np.uint8)")
    assert rc == 0 and 600 < peak < 600 + PEAK_LIMIT_MB


CLI = "from rnnfast.cli import main; main()"
LOAD_MODEL = "import sys; from rnnfast.checkpoint import load_model; load_model(sys.argv[1])"


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


def char_checkpoint(path, dtype=np.float32, **config_changes):
    """A small CharRNN's checkpoint, its config in the metadata changed by ``config_changes``."""
    vocab = Vocab.from_text("hello world")
    model = CharRNN(len(vocab), hidden_size=8, num_layers=1, seed=0)
    config = {**model.config(), **config_changes}
    tensors = {k: v.astype(dtype) for k, v in model.state_dict().items()}
    save_checkpoint(path, tensors, {"model": config, "vocab": vocab.to_dict()})
    return path


# -- checkpoints --------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, said", [("hidden_size", 10**9, "claims a hidden size of 1,000,000,000"),
                                              ("vocab_size", 10**12, "claims a vocab size of 1,000,000,000,000"),
                                              ("num_layers", -3, "claims a number of layers of -3")])
def test_sizes_past_the_limits_are_refused_in_one_line(tmp_path, key, value, said):
    path = char_checkpoint(tmp_path / "c.safetensors", **{key: value})
    with pytest.raises(CheckpointError, match=said):
        load_model(path)


def test_generate_refuses_a_huge_hidden_size_in_one_line_and_little_memory(tmp_path):
    path = char_checkpoint(tmp_path / "c.safetensors", hidden_size=10**9)
    rc, err, peak = run_measured(CLI, "generate", path, "--length", "5")
    assert rc == 1 and "claims a hidden size of 1,000,000,000" in one_line_error(err)
    assert peak < PEAK_LIMIT_MB


def test_config_is_checked_against_the_header_shapes_before_building(tmp_path):
    # hidden size 8000 builds a 3 GB model; the file's tensors are of hidden size 8
    path = char_checkpoint(tmp_path / "c.safetensors", hidden_size=8000)
    rc, err, peak = run_measured(LOAD_MODEL, path)
    assert "does not fit this CharRNN, the one its metadata describes: it has rnn.weight_ih_l0 of shape (32, 8), not (32000, 8)" in err
    assert rc == 1 and peak < PEAK_LIMIT_MB


def test_a_large_file_rnnfast_did_not_write_is_refused_from_its_header(tmp_path):
    path = tmp_path / "foreign.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [GiB // 2], "data_offsets": [0, 2 * GiB]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    os.truncate(path, 8 + len(header) + 2 * GiB)  # sparse: 2 GiB that cost no disk
    for code in ("import sys; from rnnfast.checkpoint import load_checkpoint; load_checkpoint(sys.argv[1])",
                 LOAD_MODEL):
        rc, err, peak = run_measured(code, path)
        assert rc == 1 and "a safetensors file that rnnfast did not write" in err
        assert peak < PEAK_LIMIT_MB


def test_a_header_length_past_the_file_is_a_corrupt_checkpoint(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes((2**60).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_weights_of_another_dtype_are_refused_not_cast(tmp_path, dtype):
    path = char_checkpoint(tmp_path / "c.safetensors", dtype=dtype)
    name = np.dtype(dtype).name
    with pytest.raises(CheckpointError, match=f"holds embed.weight as {name}, not the model's float32.*"
                                              r"\.astype\('float32'\)"):
        load_model(path)
    tensors, _ = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"as {name}, not the model's float32"):
        load_weights(CharRNN(8, hidden_size=8, num_layers=1), tensors)


def test_a_checkpoint_without_its_vocabulary_says_so(tmp_path):
    td = read_charlm(None, batch_size=2, seq_len=16)
    with pytest.raises(CheckpointError, match="c.safetensors has no vocab in its metadata"):
        check_same_data({"model": {}}, td, "c.safetensors")


MODELS = [lambda cell, bi, L: SeqRegressor(3, hidden_size=5, output_size=2, num_layers=L, cell=cell, bidirectional=bi),
          lambda cell, bi, L: SeqClassifier(7, 3, hidden_size=5, num_layers=L, cell=cell, bidirectional=bi,
                                            embedding_dim=4),
          lambda cell, bi, L: SeqClassifier(None, 3, hidden_size=5, num_layers=L, cell=cell, bidirectional=bi,
                                            input_size=6),
          lambda cell, bi, L: CharRNN(9, hidden_size=5, num_layers=L, cell=cell, embedding_dim=None if bi else 3)]


@pytest.mark.parametrize("build, cell, bi, layers", [(b, *c) for b in MODELS
                                                     for c in itertools.product(["rnn", "lstm", "gru"], [False, True],
                                                                                [1, 3])])
def test_param_shapes_from_the_config_are_the_built_models(build, cell, bi, layers):
    model = build(cell, bi, layers)
    config = model.config()
    config.pop("class")
    assert type(model).param_shapes(config) == {k: tuple(v.shape) for k, v in model.params.items()}


# -- corpora ------------------------------------------------------------------------------------

def test_a_sparse_gib_of_nul_bytes_costs_one_chunk(tmp_path):
    path = tmp_path / "zeros.txt"
    path.touch()
    os.truncate(path, GiB)
    rc, err, peak = run_measured("import sys; from rnnfast.data import read_text; read_text(sys.argv[1])", path)
    assert rc == 1 and "looks like a binary file (NUL character at position 0)" in err
    assert peak < PEAK_LIMIT_MB


def test_dev_zero_as_the_corpus_is_one_line_and_little_memory():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    code = "import sys; from rnnfast.tasks import read_charlm; read_charlm(sys.argv[1], batch_size=1, seq_len=8)"
    rc, err, peak = run_measured(code, "/dev/zero")
    assert rc == 1 and "/dev/zero looks like a binary file" in err
    assert peak < PEAK_LIMIT_MB


def test_a_pipe_gives_at_most_the_stream_limit(monkeypatch):
    monkeypatch.setattr(text_module, "MAX_STREAM_BYTES", 3 * text_module.CHUNK_BYTES)
    read_end, write_end = os.pipe()

    def endless_text():
        try:
            while True:
                os.write(write_end, b"to be or not to be\n" * 4096)
        except OSError:  # the reader closed its end
            os.close(write_end)

    writer = threading.Thread(target=endless_text, daemon=True)
    writer.start()
    try:
        with pytest.raises(DataError, match="is not a regular file and gives more than 3,145,728 bytes; save the"):
            read_text(f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
    writer.join(5)


def test_chunks_keep_characters_whole_and_offsets_true(tmp_path, monkeypatch):
    monkeypatch.setattr(text_module, "CHUNK_BYTES", 7)
    path = tmp_path / "t.txt"
    text = "aé月" * 20  # characters of 1, 2 and 3 bytes, cut by every chunk boundary in turn
    path.write_text(text, encoding="utf-8")
    assert read_text(path) == text
    path.write_bytes(text.encode() + b"\xff" + b"a\x00")
    with pytest.raises(DataError, match=f"byte 0xff at offset {len(text.encode())}"):
        read_text(path)
    path.write_bytes(text.encode() + b"a\x00")
    with pytest.raises(DataError, match=f"NUL character at position {len(text) + 1}"):
        read_text(path)


def test_a_corpus_of_one_distinct_character_is_refused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a" * 10_000)
    with pytest.raises(DataError, match=r"holds only one distinct character \('a'\)"):
        read_charlm(path, batch_size=2, seq_len=8)
