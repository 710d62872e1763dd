"""ONNX graph handling: load and check, describe the input, save, and rewrite passes."""

from edge_resnet.graph.fold_bn import FoldSummary, fold_batchnorm
from edge_resnet.graph.load import InputInfo, describe_input, load_onnx, save_onnx

__all__ = [
    "FoldSummary",
    "InputInfo",
    "describe_input",
    "fold_batchnorm",
    "load_onnx",
    "save_onnx",
]
