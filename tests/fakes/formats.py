"""The file formats the TensorRT fakes share (stdlib only, so the fake trtexec starts fast): plans with the real
header (``ftrt`` magic, bytes 24/25/26 = major/minor/patch of the writer, NVIDIA/TensorRT#3073), calibration-cache
headers (NV_TENSORRT_VERSION: 8.x MAJOR*1000+MINOR*100+PATCH, 10.x+ MAJOR*10000+MINOR*100+PATCH, NvInferRuntimeBase.h
10.x) and timing caches."""

from __future__ import annotations

import json
import re
from typing import Any

PLAN_MAGIC = b"ftrt"
_META_MARK = b"FAKEPLAN"
TIMING_MAGIC = b"FAKETIMING"


def version_tuple(version: str) -> tuple[int, int, int]:
    nums = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0]
    return nums[0], nums[1], nums[2]


def nv_version_code(version: str) -> int:
    major, minor, patch = version_tuple(version)
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def cache_header(version: str) -> str:
    return f"TRT-{nv_version_code(version)}-EntropyCalibration2"


# ------------------------------------------------------------------------------------------ plan format


def plan_bytes(version: str, meta: dict[str, Any]) -> bytes:
    """A plan as the real header has it (magic, version at bytes 24-26), then our own payload."""
    major, minor, patch = version_tuple(version)
    header = bytearray(32)
    header[:4] = PLAN_MAGIC
    header[24:27] = bytes([major, minor, patch])
    return bytes(header) + _META_MARK + json.dumps({**meta, "version": version}).encode()


def read_plan(data: bytes) -> tuple[tuple[int, int, int], dict[str, Any]] | None:
    if not data.startswith(PLAN_MAGIC) or data[32:40] != _META_MARK:
        return None
    return (data[24], data[25], data[26]), json.loads(data[40:])


_ONNX_UINT8, _ONNX_FLOAT, _ONNX_FLOAT16 = 2, 1, 10  # TensorProto.DataType values


def engine_meta(model: Any, shapes: tuple[tuple[int, ...], ...]) -> dict[str, Any]:
    """What the fake engine needs from the ONNX graph it was built from."""
    inp, out = model.graph.input[0], model.graph.output[0]
    out_dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    uint8 = inp.type.tensor_type.elem_type == _ONNX_UINT8
    return {"input": inp.name, "output": out.name, "classes": out_dims[1] if len(out_dims) > 1 else 1,
            "shapes": [list(s) for s in shapes], "input_dtype": "uint8" if uint8 else "float32"}


def uint8_input_problem(model: Any) -> str | None:
    """The builder's rule for a UINT8 network input: "All UINT8 inputs must directly feed into a cast layer in
    TensorRT. No other layers support UINT8 inputs, even just data-movement ops like reshape / transpose"
    (NVIDIA/TensorRT#3985), to FP32/FP16 only ("kUINT8 conversions are only supported for {kFLOAT, kHALF}",
    DataType::kUINT8, NvInferRuntimeBase.h 8.6/10.x)."""
    for inp in model.graph.input:
        if inp.type.tensor_type.elem_type != _ONNX_UINT8:
            continue
        for node in model.graph.node:
            if inp.name not in node.input:
                continue
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if node.op_type != "Cast" or to not in (_ONNX_FLOAT, _ONNX_FLOAT16):
                return (f"UINT8 network input {inp.name} feeds a {node.op_type} layer ({node.name}); UINT8 inputs must "
                        "feed a cast to FP32/FP16")
    return None


def timing_cache_bytes(version: str, device_tag: bytes) -> bytes:
    return TIMING_MAGIC + version.encode() + b"/" + device_tag
