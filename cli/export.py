"""``rnnfast export``: a checkpoint's model as an ONNX file, for onnxruntime or any ONNX runtime."""
from __future__ import annotations

from pathlib import Path

import click

from rnnfast.checkpoint import load_model
from rnnfast.cli.common import Command
from rnnfast.export import onnx_model, save_onnx

# What a program running the file needs besides the graph, from the checkpoint's metadata: the
# characters that ids index, a classifier's label names, a forecaster's scaler and, when it reads
# more columns than its target, those columns and their scaler.
CARRIED_META = ("vocab", "labels", "scaler", "features")


def _describe(values) -> str:
    """``name (dims)`` for each graph input or output, symbolic dims by name."""
    def dims(v):
        return ", ".join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)
    return ", ".join(f"{v.name} ({dims(v)})" for v in values)


@click.command("export", cls=Command)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
def export(checkpoint, out):
    """Write the model in CHECKPOINT to OUT as an ONNX graph (float32, T and B dynamic).

    \b
    The file's metadata_props carry what a program needs to use it: the task, the
    vocabulary (charlm, classify), the label names (classify), the scaler (forecast)
    and the feature columns with their scaler (forecast --features).
    Run it with onnxruntime and NumPy alone; see 'Exporting to ONNX' in the README.
    """
    model, meta = load_model(checkpoint)
    metadata = {key: meta[key] for key in CARRIED_META if key in meta}
    task = meta.get("cli", {}).get("options", {}).get("task")
    if task is not None:
        metadata["task"] = task
    proto = onnx_model(model, metadata=metadata)
    save_onnx(proto, out)
    click.echo(f"wrote {out} ({out.stat().st_size / 1024:,.0f} KiB, {type(model).__name__}, opset "
               f"{proto.opset_import[0].version})")
    click.echo(f"inputs:  {_describe(proto.graph.input)}")
    click.echo(f"outputs: {_describe(proto.graph.output)}")
