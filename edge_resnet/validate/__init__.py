"""Validation of a bundle against its float model (the drift budget of ``compile --max-drop``, which
builds and validates, sits above both: :mod:`edge_resnet.budget`).

    result = validate_bundle(load_bundle("out/"), open_dataset("digits:test", bundle.spec))
    result.to_json()        # the validation JSON (schema in edge_resnet.validate.run)

Per-layer errors are measured on the bundle's Q/DQ graph in ONNX Runtime (the artifacts of
OpenVINO/TensorRT do not expose their layers); end-to-end metrics come from the artifact itself.
"""

from edge_resnet.validate.layers import LayerError, layer_sensitivity, per_layer_errors
from edge_resnet.validate.run import BudgetCheck, DriftMetrics, ValidationResult, validate_bundle

__all__ = [
    "BudgetCheck",
    "DriftMetrics",
    "LayerError",
    "ValidationResult",
    "layer_sensitivity",
    "per_layer_errors",
    "validate_bundle",
]
