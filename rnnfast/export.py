"""ONNX export: a model as one ONNX graph that onnxruntime (or any ONNX runtime) runs with no rnnfast,
Numba or PyTorch installed.

The graph is time-major, T and B are dynamic, ``L`` layers, ``D`` directions, ``H`` hidden units:

- :class:`~rnnfast.models.CharRNN`: ``ids`` (T, B) int64, ``h0`` (L*D, B, H) (and ``c0`` for an LSTM)
  -> ``logits`` (T, B, V), ``hn`` (and ``cn``), the state to feed back for the next piece of text.
- :class:`~rnnfast.models.SeqRegressor`: ``x`` (T, B, F), ``h0`` (, ``c0``) -> ``prediction`` (B, out),
  or (T, B, out) many-to-many, in the model's (standardised) units; ``hn`` (, ``cn``). A forecaster
  of ``rnnfast train --features`` has F = 1 + its features: the target first, then each feature.
- :class:`~rnnfast.models.SeqClassifier`: ``ids`` (T, B) int64 or ``x`` (T, B, F), ``h0`` (, ``c0``),
  ``lengths`` -> ``logits`` (B, C), ``label`` (B,) int64 (what ``predict`` gives), ``hn`` (, ``cn``).

``lengths`` (B,) int64 in 1..T is an input of a classifier of token ids, which is trained on padded
texts, and of any sequence model exported with ``lengths=True``. It becomes the operators'
``sequence_lens``, which mean what rnnfast's lengths mean: outputs past a length are zero, the final
state is the one at each sequence's last step, the reverse direction runs inside each length.

The recurrent part is ONNX's own operators, one ``LSTM``/``GRU``/``RNN`` node per layer with
``direction="bidirectional"`` when the model is. Their weights are the model's in ONNX's gate
order (LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h with ``linear_before_reset=1``, which is
rnnfast's and PyTorch's GRU; RNN ``Tanh`` or ``Relu``) and ``B = concat(b_ih, b_hh)``. Dropout is
left out: it is the identity in eval mode, which is how a model is used. The graph is float32
whatever the model's dtype: onnxruntime has no float64 kernel for the RNN operator.

    >>> import numpy as np, tempfile, os, onnxruntime as ort, rnnfast as rf
    >>> model = rf.models.CharRNN(vocab_size=5, hidden_size=8, num_layers=1, seed=0)
    >>> path = rf.export.to_onnx(model, os.path.join(tempfile.mkdtemp(), "char.onnx"))
    >>> ids, h0 = np.array([[0, 1], [2, 3]]), np.zeros((1, 2, 8), np.float32)
    >>> logits, hn, cn = ort.InferenceSession(str(path)).run(None, {"ids": ids, "h0": h0, "c0": h0})
    >>> logits.shape, hn.shape
    ((2, 2, 5), (1, 2, 8))
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rnnfast.backend import to_numpy
from rnnfast.errors import ExportError
from rnnfast.models import CharRNN, SeqClassifier, SeqRegressor
from rnnfast.rundir import write_atomically

# 17 (2022) runs on every onnxruntime since 1.12; later opsets add element types (bfloat16, float8,
# int4) to the operators used here, which a float32 graph does not use.
OPSET = 17
ONNX_INSTALL_HINT = "pip install 'rnnfast[onnx]'"
PROTOBUF_LIMIT = 2**31  # bytes: one ONNX file is one protobuf message, which cannot be larger

# ONNX's gate order for each cell kind, in the cell table's gate names: ONNX calls the LSTM's g
# "c" and the GRU's n "h"; the rows of W, R and B go in this order.
ONNX_GATES = {"rnn": ("h",), "lstm": ("i", "o", "f", "g"), "gru": ("z", "r", "n")}
ONNX_OPS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError(f"ONNX export needs the onnx package; {ONNX_INSTALL_HINT}") from None
    return onnx


class _Graph:
    """The nodes, initializers, inputs and outputs of one graph, and fresh names for the values between."""

    def __init__(self, onnx):
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes, self.inputs, self.outputs = [], [], []
        self.initializers: dict[str, object] = {}
        self._count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        """An initializer (integer arrays as int64, the type of ONNX's shapes and indices); a name asked
        for again is the same constant (the layers share their shapes)."""
        if name not in self.initializers:
            array = array.astype(np.int64) if array.dtype.kind == "i" else array
            self.initializers[name] = self.onnx.numpy_helper.from_array(array, name)
        return name

    def op(self, op_type: str, inputs, outputs: int | list = 1, **attrs):
        """Add one node; returns its output name, or the list of names when it has several."""
        if isinstance(outputs, int):
            self._count += 1
            outputs = [f"{op_type.lower()}_{self._count}" + (f"_{k}" if outputs > 1 else "") for k in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outputs, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def input(self, name: str, elem_type, shape) -> str:
        self.inputs.append(self.helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type, shape) -> None:
        self.outputs.append(self.helper.make_tensor_value_info(name, elem_type, shape))


def _onnx_gate_rows(a: np.ndarray, cell, hidden_size: int) -> np.ndarray:
    """a: (G*H, ...) in the cell table's gate order -> the same rows in ONNX's gate order."""
    order = [cell.gates.index(gate) for gate in ONNX_GATES[cell.kind]]
    return a.reshape(cell.num_gates, hidden_size, *a.shape[1:])[order].reshape(a.shape)


def _layer_weights(rnn, layer: int):
    """ONNX's W (D, G*H, I), R (D, G*H, H) and B (D, 2*G*H) of one layer of ``rnn``, float32."""
    W, R, B = [], [], []
    for d in range(rnn.num_directions):
        w_ih, w_hh, b_ih, b_hh = (np.asarray(to_numpy(a), np.float32) for a in rnn.direction_weights(layer, d))
        W.append(_onnx_gate_rows(w_ih, rnn.spec, rnn.hidden_size))
        R.append(_onnx_gate_rows(w_hh, rnn.spec, rnn.hidden_size))
        B.append(np.concatenate([_onnx_gate_rows(b, rnn.spec, rnn.hidden_size) for b in (b_ih, b_hh)]))
    return np.stack(W), np.stack(R), np.stack(B)


def _side_by_side(g: _Graph, y: str) -> str:
    """An operator's Y (T, D, B, H) as rnnfast's layers give it: (T, B, D*H), the directions side by side."""
    return g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.const("shape_TB_", np.array([0, 0, -1]))])


def _recurrent(g: _Graph, rnn, x: str, sequence_lens: str) -> tuple[str, str, list[str]]:
    """The layers of ``rnn`` on x (T, B, I), one ONNX node each, from the graph inputs h0 (and c0).
    Returns the last layer's Y (T, D, B, H) and Y_h (D, B, H), and the names of the final states
    (hn, and cn for an LSTM), every layer's stacked as (L*D, B, H)."""
    spec, D, H = rnn.spec, rnn.num_directions, rnn.hidden_size
    attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
    if spec.kind == "gru":
        attrs["linear_before_reset"] = 1
    if spec.kind == "rnn":
        attrs["activations"] = [spec.activation.capitalize()] * D  # "Tanh" or "Relu"
    axes = g.const("axis0", np.array([0]))
    finals = [[] for _ in spec.state]
    for layer in range(rnn.num_layers):
        if layer > 0:
            x = _side_by_side(g, x)
        starts = g.const(f"state_start_l{layer}", np.array([layer * D]))
        ends = g.const(f"state_end_l{layer}", np.array([(layer + 1) * D]))
        initial = [g.op("Slice", [f"{part}0", starts, ends, axes]) for part in spec.state]
        weights = [g.const(f"{name}_l{layer}", a) for name, a in zip("WRB", _layer_weights(rnn, layer))]
        x, *layer_finals = g.op(ONNX_OPS[spec.kind], [x, *weights, sequence_lens, *initial], 1 + len(spec.state),
                                **attrs)
        for acc, final in zip(finals, layer_finals):
            acc.append(final)
    stacked = [g.op("Concat", parts, [f"{part}n"], axis=0) for part, parts in zip(spec.state, finals)]
    return x, finals[0][-1], stacked


def _linear(g: _Graph, head, x: str, rank: int, name: str) -> str:
    """head (a Linear) on x of ``rank`` 2 (one Gemm) or 3 (MatMul, then the bias), as the output ``name``."""
    weight = np.asarray(to_numpy(head.params["weight"]), np.float32)
    bias = head.params.get("bias")
    bias = None if bias is None else g.const("head.bias", np.asarray(to_numpy(bias), np.float32))
    if rank == 2:
        return g.op("Gemm", [x, g.const("head.weight", weight), *([] if bias is None else [bias])], [name], transB=1)
    y = g.op("MatMul", [x, g.const("head.weight_T", np.ascontiguousarray(weight.T))], [name] if bias is None else 1)
    return y if bias is None else g.op("Add", [y, bias], [name])


def _last_step_features(g: _Graph, last_h: str) -> str:
    """(B, D*H) from the last layer's Y_h (D, B, H): the forward direction's state at each sequence's
    last step and the backward direction's at step 0, where it has read the whole sequence; which
    are the outputs that the models' many-to-one head reads."""
    return g.op("Reshape", [g.op("Transpose", [last_h], perm=[1, 0, 2]), g.const("shape_B_", np.array([0, -1]))])


def _model_graph(g: _Graph, model, lengths: bool) -> None:
    """Inputs, nodes and outputs of ``model`` in ``g``, with a ``lengths`` input when asked."""
    f32, i64 = g.onnx.TensorProto.FLOAT, g.onnx.TensorProto.INT64
    rnn = model.rnn
    if "embed.weight" in model.params:
        embed = g.const("embed.weight", np.asarray(to_numpy(model.params["embed.weight"]), np.float32))
        x = g.op("Gather", [embed, g.input("ids", i64, ["T", "B"])])
    else:
        x = g.input("x", f32, ["T", "B", rnn.input_size])
    state_shape = [rnn.num_layers * rnn.num_directions, "B", rnn.hidden_size]
    for part in rnn.spec.state:
        g.input(f"{part}0", f32, state_shape)
    sequence_lens = ""  # no input: every sequence runs all T steps
    if lengths:
        sequence_lens = g.op("Cast", [g.input("lengths", i64, ["B"])], to=g.onnx.TensorProto.INT32)
    y, last_h, finals = _recurrent(g, rnn, x, sequence_lens)
    if isinstance(model, CharRNN):
        _linear(g, model.head, _side_by_side(g, y), 3, "logits")
        g.output("logits", f32, ["T", "B", model.head.out_features])
    elif isinstance(model, SeqRegressor):
        if model.many_to_many:
            _linear(g, model.head, _side_by_side(g, y), 3, "prediction")
            g.output("prediction", f32, ["T", "B", model.output_size])
        else:
            _linear(g, model.head, _last_step_features(g, last_h), 2, "prediction")
            g.output("prediction", f32, ["B", model.output_size])
    else:
        logits = _linear(g, model.head, _last_step_features(g, last_h), 2, "logits")
        g.output("logits", f32, ["B", model.num_classes])
        g.op("ArgMax", [logits], ["label"], axis=1, keepdims=0)
        g.output("label", i64, ["B"])
    for name in finals:
        g.output(name, f32, state_shape)


def _check_exportable(model, lengths: bool) -> None:
    if not isinstance(model, (CharRNN, SeqRegressor, SeqClassifier)):
        raise ExportError(f"ONNX export takes a CharRNN, SeqRegressor or SeqClassifier, got {type(model).__name__}")
    if lengths and isinstance(model, CharRNN):
        raise ExportError("a CharRNN reads every step of its text; export it without lengths")
    if any(model.rnn.zoneout):  # weight drop and recurrent dropout act in training only: nothing to export
        raise ExportError(f"the model was trained with zoneout={model.rnn.zoneout}, whose eval-mode mixing of old and "
                          "new states ONNX's recurrent operators cannot express; export a model trained without "
                          "--zoneout")
    if model.rnn.layer_norm:
        raise ExportError("the model was trained with --layer-norm, whose normalised pre-activations ONNX's "
                          "LSTM/GRU/RNN operators have no place for; export a model trained without --layer-norm")
    if model.num_params() * 4 >= PROTOBUF_LIMIT:
        raise ExportError(f"the model's {model.num_params():,} float32 weights do not fit in one ONNX file (at most "
                          "2 GiB); export a smaller model")


def onnx_model(model, lengths: bool | None = None, metadata: dict | None = None):
    """``model`` (a :class:`~rnnfast.models.CharRNN`, :class:`~rnnfast.models.SeqRegressor` or
    :class:`~rnnfast.models.SeqClassifier`, on either device) as a checked ``onnx.ModelProto``.
    ``lengths``: whether the graph takes a ``lengths`` input; by default a classifier of token ids
    does (it is trained on padded texts) and every other model does not. ``metadata`` (str ->
    JSON-able) goes into the file's ``metadata_props``, strings as they are, anything else as JSON."""
    onnx = _onnx()
    if lengths is None:
        lengths = isinstance(model, SeqClassifier) and "embed.weight" in model.params
    _check_exportable(model, lengths)
    g = _Graph(onnx)
    _model_graph(g, model, lengths)
    graph = onnx.helper.make_graph(g.nodes, type(model).__name__, g.inputs, g.outputs, list(g.initializers.values()))
    proto = onnx.helper.make_model_gen_version(graph, producer_name="rnnfast",
                                              opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_onnx(proto, path) -> Path:
    """Write ``proto`` (from :func:`onnx_model`) to ``path`` atomically: a failed write leaves whatever
    was at ``path`` as it was. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory; pass a file name such as {path / 'model.onnx'}")
    if not path.parent.is_dir():
        problem = "is not a directory" if path.parent.exists() else "does not exist"
        raise ExportError(f"cannot write {path}: {path.parent} {problem}; create the directory or choose another path")
    write_atomically(path, proto.SerializeToString(), ExportError, "choose a writable path for the .onnx file")
    return path


def to_onnx(model, path, lengths: bool | None = None, metadata: dict | None = None) -> Path:
    """Write ``model`` as an ONNX file at ``path``: :func:`onnx_model`'s graph (see the module's
    docstring for its inputs and outputs), written by :func:`save_onnx`. Returns the path."""
    return save_onnx(onnx_model(model, lengths, metadata), path)
