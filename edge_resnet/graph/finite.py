"""A float graph with NaN or infinite weights, or one that outputs them, is refused before anything is
built from it: a NaN model quantizes to garbage and an FP32 bundle of it returns NaN scores."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edge_resnet.errors import GraphError

PROBE_BATCH = 2
PROBE_SEED = 0
_SHOW = 5


def nonfinite_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of the float initializers and Constant values that hold NaN or +-inf."""
    bad = []
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                               onnx.TensorProto.BFLOAT16):
            continue
        values = numpy_helper.to_array(t)
        if not np.isfinite(values.astype(np.float32, copy=False)).all():
            bad.append(t.name or "(unnamed)")
    return bad


def check_finite(model: onnx.ModelProto, what: str, input_size: int = 224) -> None:
    """GraphError when ``model`` has non-finite weights, or non-finite outputs on seeded random inputs."""
    bad = nonfinite_tensors(model)
    if bad:
        more = f" (+{len(bad) - _SHOW} more)" if len(bad) > _SHOW else ""
        raise GraphError(f"{what} has NaN or infinite weights in {len(bad)} tensor(s): {', '.join(bad[:_SHOW])}{more}",
                         "fix the checkpoint (a diverged training run, or BatchNorm statistics saved as NaN) or "
                         "export the model again from good weights")
    from edge_resnet.graph.load import describe_input
    from edge_resnet.quant.ptq import run_onnx

    info = describe_input(model)
    h, w = info.height or input_size, info.width or input_size
    x = np.random.default_rng(PROBE_SEED).standard_normal((info.batch or PROBE_BATCH, info.channels, h, w))
    try:
        out = np.asarray(run_onnx(model, x.astype(np.float32)))
    except Exception as exc:  # ONNX Runtime's own types: the graph is checked elsewhere
        raise GraphError(f"{what} cannot run in ONNX Runtime: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                         "check the model with onnx.checker, or export it again") from exc
    if not np.isfinite(out).all():
        n = int((~np.isfinite(out)).sum())
        raise GraphError(f"{what} outputs NaN or infinity ({n} of {out.size} values) on a probe input (seeded "
                         f"random {h}x{w} images), although its weights are finite",
                         "check the weights for values that overflow float32 (e.g. huge BatchNorm scales) and "
                         "export the model again from good weights")
