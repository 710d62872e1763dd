"""onnxslim as a graph pass: ``Pad`` + ``Conv`` merged into the conv's pads, and what is left to clean.

onnxslim's ``FusionPadConv`` merges a constant zero ``Pad`` on the spatial axes only into the
following Conv. Its Conv + BatchNormalization/Mul/Add fusions are skipped: BatchNormalization is
folded by our own verified pass (reported per node), Conv + Mul/Add by ONNX Runtime's, which checks
that the constant is per output channel (onnxslim's Conv + Mul accepts any constant whose squeezed
length equals the channel count, e.g. one broadcast over the width).
"""

from __future__ import annotations

import logging

import onnx

from edge_resnet.graph.ort_optimize import describe_change
from edge_resnet.graph.passes import PassOutput, op_counts

SKIPPED_FUSIONS = ["FusionConvBN", "FusionConvMul", "FusionConvAdd", "FusionGelu"]


def slim(model: onnx.ModelProto) -> PassOutput:
    import onnxslim

    # onnxslim logs a summary table at INFO on its own logger; keep it out of our output
    level = logging.getLogger("onnxslim").level
    logging.getLogger("onnxslim").setLevel(logging.WARNING)
    try:
        out = onnxslim.slim(model, skip_fusion_patterns=SKIPPED_FUSIONS)
    finally:
        logging.getLogger("onnxslim").setLevel(level)
    if out is None:  # onnxslim returns None when it could not process the model
        return PassOutput(model)
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    return PassOutput(out, describe_change(op_counts(model), op_counts(out), "onnxslim"))
