"""Load, check, describe and save float ResNet ONNX graphs.

Every failure reaches the user as a :class:`~edge_resnet.errors.GraphError` naming the file, what
was found and what is expected, never a protobuf ``DecodeError`` or a checker traceback.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from edge_resnet.errors import GraphError

log = logging.getLogger(__name__)

MIN_OPSET = 11
# A single protobuf message cannot be serialized past 2 GiB; larger models must keep their
# weights in external data, and the checker must be given the path instead of the proto.
MAX_PROTOBUF_BYTES = 2**31 - 1

_EXPORT_EXAMPLE = (
    "torch.onnx.export(model.eval(), (x,), 'model.onnx', opset_version=17, "
    "input_names=['input'], output_names=['logits'])"
)
_EXPORT_FIX = f"export the model again, e.g. {_EXPORT_EXAMPLE}"

# File signatures of things people pass by mistake, for a message better than "not ONNX".
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a zip archive (a PyTorch .pt/.pth checkpoint is one)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x80\x02", "a Python pickle (an old-style PyTorch checkpoint?)"),
    (b"\x80\x04", "a Python pickle (an old-style PyTorch checkpoint?)"),
    (b"\x89HDF", "an HDF5 file (a Keras .h5 model?)"),
    (b"TFL3", "a TensorFlow Lite model"),
)


@dataclass(frozen=True)
class InputInfo:
    """The image input of a graph. ``height``/``width`` are None when dynamic."""

    name: str
    channels: int
    height: int | None
    width: int | None
    dynamic_batch: bool
    batch: int | None  # the fixed batch size, None when dynamic
    dtype: str  # numpy name of the element type, e.g. "float32"
    layout: str = "NCHW"  # "NHWC" for a channels-last input (only from load_onnx, before canonicalisation)

    @property
    def shape(self) -> tuple[int | None, int | None, int | None, int | None]:
        return (self.batch, self.channels, self.height, self.width)


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX ResNet (opset >= 11), with its external weights, checked and shape-inferred.

    Raises GraphError for a missing, non-ONNX, truncated or invalid file, a missing or truncated
    external-data file, a too-old opset, and a graph without exactly one 4-D (N, C, H, W) input.
    """
    p = Path(path)
    size = _check_file(p)
    model = _parse(p, size)
    _check_opset(model, p)

    external = [t for t in _all_tensors(model) if uses_external_data(t)]
    total = size + sum(_external_length(t) for t in external)
    large = total > MAX_PROTOBUF_BYTES
    if external:
        _check_external_files(external, p)

    try:
        # The path form reads external data itself and works past the 2 GiB protobuf limit.
        onnx.checker.check_model(str(p) if external else model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise GraphError(
            f"{p} is not a valid ONNX model: {_one_line(e)}",
            "check that the file was written completely by the exporter; otherwise " + _EXPORT_FIX,
        ) from e

    # fail on a graph that is not an image model before more work; an NHWC input is rewritten later
    describe_input(model, source=p, channels_last_ok=True)
    _check_domains(model, p)

    if external and not large:
        _load_external(model, p)  # load first: shape inference can then read constant shapes
    model = _infer_shapes(model, p)
    if external and large:
        _load_external(model, p)  # too big to serialize for shape inference with the weights in
    log.debug(
        "loaded %s: opset %d, %d nodes, %d initializers%s",
        p,
        _default_opset(model) or 0,
        len(model.graph.node),
        len(model.graph.initializer),
        f", {len(external)} tensors from external data" if external else "",
    )
    return model


def _infer_shapes(model: onnx.ModelProto, p: Path) -> onnx.ModelProto:
    """Strict shape inference; on a conflict, retry without the file's ``value_info`` (stale exporter hints)."""
    errors = (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError)
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except errors as e:
        if not model.graph.value_info:
            raise GraphError(
                f"shape inference failed on {p}: {_one_line(e)}",
                "the graph has inconsistent shapes or types; " + _EXPORT_FIX,
            ) from e
        first = e
    hintless = onnx.ModelProto()
    hintless.CopyFrom(model)
    del hintless.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(hintless, strict_mode=True)
    except errors as e:
        raise GraphError(
            f"shape inference failed on {p}: {_one_line(e)}",
            "the graph has inconsistent shapes or types; " + _EXPORT_FIX,
        ) from e
    log.warning(
        "%s: ignored intermediate shapes stored in the file that disagree with the graph (%s)",
        p,
        _one_line(first, 160),
    )
    return inferred


def describe_input(model: onnx.ModelProto, source: str | os.PathLike[str] | None = None,
                   channels_last_ok: bool = False) -> InputInfo:
    """The image input: the one graph input that is not an initializer, which must be 4-D NCHW
    (or NHWC with ``channels_last_ok``: graphs that :mod:`edge_resnet.graph.layout` rewrites)."""
    where = f" of {source}" if source is not None else ""
    graph = model.graph
    weights = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    inputs = [vi for vi in graph.input if vi.name not in weights]
    if not graph.input:
        raise GraphError(
            f"the graph{where} has no inputs; expected one 4-D image input (N, C, H, W)",
            f"export the model with the image batch x (N, C, H, W) as its input, e.g. {_EXPORT_EXAMPLE}",
        )
    if not inputs:
        raise GraphError(
            f"all {len(graph.input)} inputs of the graph{where} are initializers (weights); "
            "expected one 4-D image input (N, C, H, W)",
            f"export the model with the image batch x (N, C, H, W) as its input, e.g. {_EXPORT_EXAMPLE}",
        )
    if len(inputs) > 1:
        found = ", ".join(f"'{vi.name}' {_format_value_info(vi)}" for vi in inputs)
        raise GraphError(
            f"the graph{where} has {len(inputs)} inputs ({found}); expected exactly one 4-D image input (N, C, H, W)",
            "export a model that takes only the image batch as input",
        )
    vi = inputs[0]
    if not vi.type.HasField("tensor_type"):
        raise GraphError(
            f"input '{vi.name}'{where} is a {vi.type.WhichOneof('value') or 'untyped value'}, not a tensor; "
            "expected a 4-D image tensor (N, C, H, W)",
            _EXPORT_FIX,
        )
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        raise GraphError(
            f"input '{vi.name}'{where} has no shape (unknown rank); expected a 4-D image input (N, C, H, W)",
            "export with a fixed-rank example input, or set the input shape with "
            "onnx.tools.update_model_dims.update_inputs_outputs_dims",
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    shape_text = _format_value_info(vi)
    if len(dims) != 4:
        raise GraphError(
            f"input '{vi.name}'{where} is {len(dims)}-D with shape {shape_text}; "
            "expected a 4-D image input (N, C, H, W)",
            "edge-resnet compiles image classifiers; export the model with a (1, 3, H, W) example input",
        )
    if channels_last_ok:
        from edge_resnet.graph.layout import channels_last

        if channels_last(model):
            batch, height, width, channels = dims
            if channels is None:
                raise GraphError(
                    f"input '{vi.name}'{where} has shape {shape_text} (channels-last) with a dynamic channel "
                    "dimension; expected a fixed number of channels at axis 3 (N, H, W, C)",
                    "export with only the batch (and optionally height/width) marked dynamic")
            return InputInfo(vi.name, channels, height, width, batch is None, batch, _dtype_name(tt), "NHWC")
    batch, channels, height, width = dims
    if channels is None:
        raise GraphError(
            f"input '{vi.name}'{where} has shape {shape_text} with a dynamic channel dimension; "
            "expected a fixed number of channels at axis 1 (N, C, H, W)",
            "export with only the batch (and optionally height/width) marked dynamic",
        )
    if channels not in (1, 3, 4) and width in (1, 3, 4):
        raise GraphError(
            f"input '{vi.name}'{where} has shape {shape_text}, which looks channels-last (N, H, W, C); "
            "expected channels-first (N, C, H, W)",
            "export the model with an NCHW input (tf2onnx: --inputs-as-nchw <input name>)",
        )
    return InputInfo(
        name=vi.name,
        channels=channels,
        height=height,
        width=width,
        dynamic_batch=batch is None,
        batch=batch,
        dtype=_dtype_name(tt),
    )


def _dtype_name(tt: onnx.TypeProto.Tensor) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    except (KeyError, TypeError, ValueError):
        return TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "undefined"


def require_image_input(model: onnx.ModelProto, source: str | os.PathLike[str] | None = None) -> InputInfo:
    """The graph's input, when it takes what edge-resnet feeds: float32 N x 3 x H x W images."""
    info = describe_input(model, source)
    where = f" of {source}" if source is not None else ""
    shape = _format_value_info(next(vi for vi in model.graph.input if vi.name == info.name))
    if info.channels != 3:
        raise GraphError(
            f"input '{info.name}'{where} has {info.channels} channel(s) {shape}; edge-resnet feeds 3-channel "
            "(RGB or BGR) images",
            "export the model with a 3-channel input; a grayscale model can take RGB by repeating conv1's "
            "weights over 3 input channels divided by 3 (conv1.weight.repeat(1, 3, 1, 1) / 3)",
        )
    if info.dtype != "float32":
        raise GraphError(
            f"input '{info.name}'{where} is {info.dtype} {shape}; edge-resnet feeds float32 images (N, 3, H, W)",
            "export the model with a float32 input (the normalization happens in the preprocessing)",
        )
    return info


# operator domains every build can run: the ONNX standard ones (validated by the checker against
# their schemas) and ONNX Runtime's contrib ops (ONNX Runtime is the reference executor)
_RUNNABLE_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def _check_domains(model: onnx.ModelProto, p: Path) -> None:
    custom: dict[str, set[str]] = {}

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            if node.domain not in _RUNNABLE_DOMAINS:
                custom.setdefault(node.domain, set()).add(node.op_type)
            for a in node.attribute:
                if a.HasField("g"):
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(model.graph)
    if custom:
        found = "; ".join(f"{', '.join(sorted(ops))} (domain {domain})" for domain, ops in sorted(custom.items()))
        raise GraphError(
            f"{p} uses custom operators that no edge-resnet backend implements: {found}",
            "export the model with standard ONNX operators only (a ResNet needs nothing else), or replace the "
            "custom ones with standard ONNX before compiling",
        )


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` as one self-contained file (no external data), atomically.

    The bytes go to a temporary file in the destination folder, which then replaces ``path``, so a
    crash never leaves a half-written model where a good one was. Returns the path written.
    """
    p = Path(path)
    external = [t.name for t in _all_tensors(model) if uses_external_data(t)]
    if external:
        raise GraphError(
            f"cannot save to {p}: {len(external)} tensors (e.g. '{external[0]}') still point to external "
            "data that is not loaded into the model",
            "load the model with edge_resnet.graph.load_onnx, which reads external weights into memory",
        )
    size = _byte_size(model)
    if size > MAX_PROTOBUF_BYTES:
        raise GraphError(
            f"cannot save to {p} as one file: the model is {size / 2**30:.2f} GiB and a single ONNX file "
            "is limited to 2 GiB",
            "save it with external data: onnx.save(model, path, save_as_external_data=True)",
        )
    if p.is_dir():
        raise GraphError(
            f"cannot save the model to {p}: it is a directory", "give a file name ending in .onnx"
        )
    data = model.SerializeToString()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        # os.open with 0o666 honours the umask (tempfile.mkstemp would leave the file 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote %s (%d bytes)", p, len(data))
    return p


# --- helpers -------------------------------------------------------------------------------------


def _check_file(p: Path) -> int:
    if not p.exists():
        hint = ""
        if p.parent.is_dir():
            near = sorted(x.name for x in p.parent.glob("*.onnx"))[:5]
            if near:
                hint = f" (.onnx files in {p.parent}: {', '.join(near)})"
        raise GraphError(
            f"ONNX file not found: {p}{hint}",
            "check the path, or export the model first with `edge-resnet export`",
        )
    if p.is_dir():
        raise GraphError(f"{p} is a directory, not an ONNX file", "pass the path of the .onnx file itself")
    size = p.stat().st_size
    if size == 0:
        raise GraphError(
            f"{p} is empty (0 bytes), not an ONNX model",
            "the export or copy did not finish; " + _EXPORT_FIX,
        )
    return size


def _parse(p: Path, size: int) -> onnx.ModelProto:
    try:
        model = onnx.load(str(p), load_external_data=False)
    except OSError as e:
        raise GraphError(f"cannot read {p}: {e.strerror or e}", "check the file's permissions") from e
    except (DecodeError, RuntimeError, ValueError) as e:
        raise GraphError(_unparsable_message(p, size), _EXPORT_FIX) from e
    # Protobuf accepts some non-ONNX byte strings; a real model has an IR version and a graph.
    if model.ir_version <= 0 or not model.HasField("graph"):
        kind = _sniff(p)
        raise GraphError(
            f"{p} is not an ONNX model" + (f": it is {kind}" if kind else " (no IR version or graph in it)"),
            _EXPORT_FIX,
        )
    if not model.graph.node:
        raise GraphError(f"the ONNX graph in {p} has no nodes; expected a ResNet", _EXPORT_FIX)
    return model


def _sniff(p: Path) -> str | None:
    with p.open("rb") as f:
        head = f.read(4096)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"a text file (starting {first!r})" if first else "a text file"
    return None


def _unparsable_message(p: Path, size: int) -> str:
    kind = _sniff(p)
    if kind:
        return f"{p} is not an ONNX model: it is {kind}"
    with p.open("rb") as f:
        first = f.read(1)
    if first == b"\x08":  # field 1 (ir_version, varint): how every serialized ModelProto starts
        return (
            f"{p} looks like an ONNX model but cannot be parsed ({size} bytes): "
            "the file is truncated or corrupted"
        )
    return f"{p} is not an ONNX model: its {size} bytes do not parse as an ONNX ModelProto"


def _default_opset(model: onnx.ModelProto) -> int | None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return None


def _check_opset(model: onnx.ModelProto, p: Path) -> None:
    opset = _default_opset(model)
    if opset is None:
        raise GraphError(
            f"{p} does not import the default ONNX operator set (opset_import has "
            f"{[o.domain or 'ai.onnx' for o in model.opset_import]}); expected opset {MIN_OPSET} or newer",
            _EXPORT_FIX,
        )
    if opset < MIN_OPSET:
        raise GraphError(
            f"{p} uses ONNX opset {opset}; edge-resnet needs opset {MIN_OPSET} or newer",
            "export again with opset_version=17, or convert it: "
            "onnx.save(onnx.version_converter.convert_version(onnx.load(path), 17), new_path)",
        )


def _all_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    """Initializers and tensor attributes (Constant values), subgraphs included."""
    out: list[TensorProto] = []

    def walk(graph: onnx.GraphProto) -> None:
        out.extend(graph.initializer)
        out.extend(s.values for s in graph.sparse_initializer)
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    out.append(a.t)
                out.extend(a.tensors)
                if a.HasField("g"):
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(model.graph)
    return out


def _external_length(t: TensorProto) -> int:
    try:
        info = ExternalDataInfo(t)
    except ValueError:
        return 0
    if info.length is not None:
        return int(info.length)
    n = int(np.prod(t.dims)) if t.dims else 1
    try:
        return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return 0


def _check_external_files(tensors: list[TensorProto], p: Path) -> None:
    """Name a missing or short side file ourselves: onnx's own errors do not say which file."""
    base = p.parent
    sizes: dict[str, int] = {}
    for t in tensors:
        try:
            info = ExternalDataInfo(t)
        except ValueError as e:
            raise GraphError(f"{p}: bad external data entry for tensor '{t.name}': {e}", _EXPORT_FIX) from e
        loc = info.location
        if loc not in sizes:
            side = base / loc
            if not side.is_file():
                raise GraphError(
                    f"{p} keeps its weights in the external data file '{loc}', which is not next to it "
                    f"(looked for {side})",
                    f"copy '{loc}' into {base} together with the .onnx file",
                )
            sizes[loc] = side.stat().st_size
        end = (info.offset or 0) + _external_length(t)
        if end > sizes[loc]:
            raise GraphError(
                f"the external data file '{base / loc}' of {p} is truncated: tensor '{t.name}' needs bytes "
                f"up to {end} but the file has {sizes[loc]}",
                "copy the external data file again (it did not finish), or export the model again",
            )


def _load_external(model: onnx.ModelProto, p: Path) -> None:
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(p.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise GraphError(
            f"cannot read the external weights of {p}: {_one_line(e)}",
            "keep the external data file(s) next to the .onnx file, unmodified",
        ) from e


def _byte_size(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except Exception:  # noqa: BLE001 - some protobuf builds refuse to size > 2 GiB messages
        return sum(len(t.raw_data) for t in _all_tensors(model))


def _one_line(e: BaseException, limit: int = 300) -> str:
    """A library error message on one line (the checker's span several), cut to ``limit`` characters."""
    text = " ".join(str(e).split())
    if not text:
        return type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_value_info(vi: onnx.ValueInfoProto) -> str:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return "(unknown shape)"
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(str(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append("?")
    return "[" + ", ".join(dims) + "]"
