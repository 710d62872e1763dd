"""torch model -> the float ONNX graph every later step starts from.

torch 2.13's exporter (dynamo) would fuse BatchNorm itself when asked to optimize. We export
unoptimized, fold constants only, and run our own verified BN folding pass, so a graph from
torch and a graph from any other exporter go through the same fold; then canonicalize.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from edge_resnet.errors import GraphError
from edge_resnet.graph.load import save_onnx
from edge_resnet.graph.prepare import INPUT_NAME, FloatGraph, prepare_float_graph

log = logging.getLogger(__name__)

OPSET = 18


def output_name_for(model: nn.Module) -> str:
    return "logits" if getattr(model, "include_top", True) else "features"


def export_float_graph(model: nn.Module, input_size: int = 224, opset: int = OPSET, head: str | None = None) -> FloatGraph:
    """Export ``model`` (eval mode) to a canonical, BN-folded ONNX graph with a dynamic batch.

    Our own export is canonical by construction: its passes are not verified on a probe batch again
    (the tests check the export against torch)."""
    if input_size < 32:
        raise GraphError(f"input size {input_size} is too small", "ResNets need an input of at least 32x32")
    out_name = output_name_for(model)
    fg = prepare_float_graph(_torch_export(model.eval(), input_size, opset, out_name), head=head, verify=False)
    log.debug("exported %s: %s", type(model).__name__, fg.fold)
    return fg


def _torch_export(model: nn.Module, input_size: int, opset: int, out_name: str) -> onnx.ModelProto:
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import fold_constants

    x = torch.randn(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # the exporter prints progress and warnings about torchvision ops; keep them out of our output
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed" and similar noise
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model, (x,), None, input_names=[INPUT_NAME], output_names=[out_name],
                dynamic_shapes=({0: batch},), opset_version=opset, optimize=False, verbose=False,
            )
        except Exception as exc:
            raise GraphError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}",
                             "run with --debug for the exporter's traceback") from exc
        finally:
            exporter_log.setLevel(level)
    ir_model = program.model
    fold_constants(ir_model)
    ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.RemoveUnusedNodesPass(),
    )(ir_model)
    return ir.serde.serialize_model(ir_model)


def export_onnx(model: nn.Module, path: str | Path, input_size: int = 224) -> FloatGraph:
    fg = export_float_graph(model, input_size)
    save_onnx(fg.model, path)
    return fg
