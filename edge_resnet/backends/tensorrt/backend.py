"""The TensorRT :class:`Backend`: build here when this machine is the target, else prepare the device build;
load either kind of engine after checking it against this device.

A bundle for TensorRT always carries what the device needs to build and run it itself (``build_engine.sh``, the
calibration cache, DeepStream files). The engine is built at compile time only when TensorRT and a GPU of the
target's compute capability are here; otherwise the manifest declares the files the device will write
(``artifact.device_build``) and :meth:`TensorRTBackend.load` finds them, checks the record against the engine and
the device, and runs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from edge_resnet.backends.base import (
    ANY_OBJECT,
    Artifact,
    Backend,
    BundleContext,
    FrameInput,
    FramesDeclaration,
    Runner,
)
from edge_resnet.backends.tensorrt.build import build_engine, import_tensorrt
from edge_resnet.backends.tensorrt.calibration_cache import write_calibration_cache
from edge_resnet.backends.tensorrt.cuda import DeviceInfo, device_index, load_cuda
from edge_resnet.backends.tensorrt.deepstream import (
    PROBABILITIES,
    DeepStreamFiles,
    nvinfer_config,
    softmax_graph,
    write_labels,
)
from edge_resnet.backends.tensorrt.dla import activation_tensors, implicit_scales
from edge_resnet.backends.tensorrt.engine import (
    check_engine_portability,
    read_record,
    sha256_path,
    verify_record,
)
from edge_resnet.backends.tensorrt.files import (
    BUILD_SCRIPT,
    CALIBRATION_CACHE,
    DEEPSTREAM_CONFIG,
    DEEPSTREAM_LABELS,
    DEEPSTREAM_ONNX,
    FRAMES_ENGINE,
    FRAMES_ONNX,
    DeviceBuild,
)
from edge_resnet.backends.tensorrt.frames import FRAMES_ORDER, frames_graph
from edge_resnet.backends.tensorrt.plan import (
    ENGINE_FILE,
    IO_API,
    check_onnx_for_plan,
    effective_quant_mode,
    is_dla,
    plan_build,
    summarize_onnx,
)
from edge_resnet.backends.tensorrt.runner import TensorRTRunner
from edge_resnet.backends.tensorrt.trtexec import BundleGraph, ScriptSpec, write_build_script
from edge_resnet.backends.tensorrt.versions import generation_of, generation_unchecked
from edge_resnet.errors import BackendError, BackendUnavailable, BundleError
from edge_resnet.quant.qdq import activation_scale
from edge_resnet.targets import TargetProfile, TensorRTOptions
from edge_resnet.types import BackendName, Precision, QuantMode

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    name = BackendName.TENSORRT
    library = "tensorrt"
    load_options = {"trt": ANY_OBJECT, "cuda": ANY_OBJECT, "device_index": (int, type(None)),
                    "allow_device_mismatch": (bool,), "allow_gpu_name_mismatch": (bool,),
                    "frame_input": (FrameInput, type(None))}

    # ---- the frame engine (see .frames): a bundle has one when its route allows it and it has been built

    def frames_declaration(self, artifact: Artifact | None) -> FramesDeclaration | None:
        if artifact is None or "frames_onnx" not in artifact.files:
            return None
        return FramesDeclaration(
            f"{FRAMES_ORDER.value} (fixed in the engine; rgb frames are reversed as they are copied to the GPU)",
            f"{FRAMES_ONNX}: its engine is built with the main one at compile time on the target, or by "
            "./build_engine.sh --frames on the device")

    def frame_input_problem(self, bundle: Any) -> BundleError | None:
        artifact = bundle.artifact
        if "frames_onnx" not in artifact.files:
            return BundleError(f"the TensorRT bundle {bundle.path} {_NO_FRAME_GRAPH}",
                               "load with normalize_in_engine=False (the host normalises)")
        if "frames_engine" in artifact.files:
            return None
        record_name = artifact.device_build.get("record")
        if record_name:
            from edge_resnet.bundle import confined

            record_path = confined(bundle.path, record_name, "engine record")
            try:
                if record_path.is_file() and _recorded_frames_engine(artifact, read_record(record_path)):
                    return None
            except BundleError as exc:
                return exc
        return _frames_not_built(bundle.path)

    # ---- calibration: every activation (implicit builds, the DLA route and the calibration cache read them all)

    def calibration_tensors(self, model: onnx.ModelProto, profile: TargetProfile, config: Any) -> list[str]:
        return activation_tensors(model)

    def reusable_tensors(self, model: onnx.ModelProto, profile: TargetProfile) -> list[str]:
        return activation_tensors(model)

    # ---- build here

    def compile(self, onnx_path: Path, profile: TargetProfile, out_dir: Path, precision: Precision, *,
                trt: ModuleType | None = None, device: DeviceInfo | None = None, cuda: Any = None,
                engine_name: str = ENGINE_FILE) -> Artifact:
        """Build the engine on this machine with the Python API (the plan's graph must be ``onnx_path``)."""
        trt = trt or import_tensorrt()
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        summary = summarize_onnx(onnx_path)
        plan = plan_build(trt.__version__, profile, precision, summary.input_shape)
        check_onnx_for_plan(summary, plan, onnx_path)
        index = device_index(profile.device)
        if device is None:
            cuda = cuda or load_cuda()
            device = cuda.device_info(index)
        build_engine(onnx_path, plan, out_dir, trt, cuda=cuda, device=index, engine_name=engine_name)
        files = {"engine": engine_name, "timing_cache": plan.timing_cache}
        if plan.calibration_cache:
            files["calibration_cache"] = plan.calibration_cache
        info = {
            "runnable": True,
            "tensorrt_version": trt.__version__,
            "gpu_name": device.name,
            "compute_capability": device.compute_capability,
            "sm_count": device.sm_count,
            "memory_mib": device.memory_mib,
            "device_index": index,
            "dla_core": plan.dla_core,
            "input_name": summary.input_name,
            "plan": plan.to_dict(),
        }
        return Artifact(self.name, precision, files, info)

    # ---- the bundle (compile's hook)

    def prepare_bundle(self, context: BundleContext, *, trt: ModuleType | None = None, cuda: Any = None) -> Artifact:
        return prepare_tensorrt_bundle(self, context, trt=trt, cuda=cuda)

    # ---- load

    def load(self, bundle_dir: Path, artifact: Artifact, **options: Any) -> Runner:
        """Options: trt, cuda (injectable), bundle (the Bundle, for its path resolver), device_index (default: the
        profile's), allow_device_mismatch (same compute capability, another GPU model; default False),
        frame_input (load the frame engine: uint8 frames in, see .frames)."""
        from edge_resnet.bundle import confined, load_bundle

        bundle = options.get("bundle")
        frame_input: FrameInput | None = options.get("frame_input")

        def path(name: str, what: str) -> Path:  # every path stays inside the bundle; listed when we have its manifest
            return bundle.file(name, what) if bundle is not None else confined(Path(bundle_dir), name, what)

        trt = options.get("trt") or import_tensorrt()
        cuda = options.get("cuda") or load_cuda()
        index = int(options.get("device_index", artifact.info.get("device_index", 0)))
        allow = bool(options.get("allow_device_mismatch", options.get("allow_gpu_name_mismatch", False)))
        here = cuda.device_info(index)
        if frame_input is not None and "frames_onnx" not in artifact.files:
            raise BundleError(f"the TensorRT bundle in {bundle_dir} {_NO_FRAME_GRAPH}",
                              "load it without frame_input and pass float32 NCHW batches")
        if "engine" in artifact.files:  # built at compile time, covered by the manifest's hashes
            check_engine_portability(artifact.info, trt.__version__, here, allow)
            role = "frames_engine" if frame_input is not None else "engine"
            if role not in artifact.files:
                raise BundleError(f"the TensorRT bundle in {bundle_dir} was built without its frame engine",
                                  "compile it again, or load it without frame_input")
            engine_path = path(artifact.files[role], "TensorRT engine")
            dla_core = artifact.info.get("dla_core")
            if not engine_path.is_file():
                raise BundleError(f"the bundle has no engine file {engine_path}", "re-run compile for this target")
        elif artifact.device_build.get("engine") and artifact.device_build.get("record"):
            # written on the device after the manifest: declared in it (device_build), not hashed by it, so
            # confined here and checked through the record (engine sha256, manifest sha256, device)
            bundle = bundle or load_bundle(bundle_dir)
            engine_path = confined(bundle.path, artifact.device_build["engine"], "device-built engine")
            record = read_record(confined(bundle.path, artifact.device_build["record"], "engine record"))
            if record.engine != artifact.device_build["engine"]:
                raise BundleError(f"the engine record describes {record.engine!r}, not this bundle's "
                                  f"{artifact.device_build['engine']!r}", "build the engine again with ./build_engine.sh")
            verify_record(record, engine_path, trt.__version__, here, manifest_sha256=_manifest_sha(bundle),
                          onnx_sha256=_listed_sha(bundle, record.onnx), allow_device_mismatch=allow)
            if frame_input is not None:
                engine_path = _device_frames_engine(bundle, artifact, record)
            dla_core = record.dla_core
        else:
            raise BundleError(f"the TensorRT artifact in {bundle_dir} names no engine",
                              "compile the bundle again for a TensorRT target")
        cuda.set_device(index)
        with cuda.activate():
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            if dla_core is not None:
                runtime.DLA_core = int(dla_core)
            engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise BundleError(
                f"TensorRT {trt.__version__} could not deserialize {engine_path} (truncated, modified, or built "
                "by another TensorRT/GPU)",
                "rebuild the engine on this device (the bundle's ./build_engine.sh, or edge-resnet compile)",
            )
        io_api = IO_API[generation_unchecked(trt.__version__)]
        reverse = frame_input is not None and frame_input.order is not FRAMES_ORDER
        return TensorRTRunner(trt, engine, cuda, io_api, artifact.info.get("output_name"), reverse_channels=reverse)


_NO_FRAME_GRAPH = "has no frame graph (implicit INT8 and DLA builds normalise on the host)"


def _frames_not_built(path: Path) -> BundleError:
    return BundleError(f"the frame engine of {path} has not been built on this device",
                       f"run ./build_engine.sh --frames in {path} (or load with normalize_in_engine=False)")


def _recorded_frames_engine(artifact: Artifact, record: Any) -> dict[str, Any] | None:
    """The record's entry for the frame engine the manifest declares; None when the device did not build it."""
    name = artifact.device_build.get("frames_engine")
    built = record.extra.get("frames_engine")
    return built if name and isinstance(built, dict) and built.get("file") == name else None


def _device_frames_engine(bundle: Any, artifact: Artifact, record: Any) -> Path:
    """The device-built frame engine, checked through the record the main build wrote (same TensorRT, device and
    manifest, already verified): its name is the manifest's, its sha256 and plan header the record's."""
    from edge_resnet.backends.tensorrt.engine import plan_version
    from edge_resnet.backends.tensorrt.versions import format_version, parse_version
    from edge_resnet.bundle import confined

    built = _recorded_frames_engine(artifact, record)
    if built is None:
        raise _frames_not_built(bundle.path)
    name = built["file"]
    engine_path = confined(bundle.path, name, "frame engine")
    if not engine_path.is_file() or sha256_path(engine_path) != built.get("sha256"):
        raise BundleError(f"{name} is missing or is not the frame engine the record describes (sha256 differs)",
                          "build the engines again with ./build_engine.sh --frames")
    if plan_version(engine_path) != parse_version(record.tensorrt_version):
        raise BundleError(f"{name} was serialized by TensorRT {format_version(plan_version(engine_path))}, not the "
                          f"{record.tensorrt_version} of the main engine", "build the engines again with "
                          "./build_engine.sh --frames")
    return engine_path


def _manifest_sha(bundle: Any) -> str | None:
    from edge_resnet.bundle import MANIFEST, confined

    path = confined(bundle.path, MANIFEST, "manifest")  # not in its own file list
    return sha256_path(path) if path.is_file() else None


def _listed_sha(bundle: Any, name: str | None) -> str | None:
    files = (bundle.manifest or {}).get("files") or {}
    return files.get(name) if name else None


# ------------------------------------------------------------------------------------------ the bundle


def _local_target_device(profile: TargetProfile, trt: ModuleType | None, cuda: Any) -> tuple[Any, Any, str | None]:
    """(trt, cuda) when this machine can build the target's engine now, else the reason it cannot."""
    if trt is None:
        if not TensorRTBackend().available():
            return None, None, "TensorRT is not installed on the host that prepared it"
        try:
            trt = import_tensorrt()
        except BackendUnavailable as exc:
            return None, None, exc.problem
    try:
        cuda = cuda or load_cuda()
        here = cuda.device_info(device_index(profile.device))
    except Exception as exc:  # no cuda-python/pycuda, no driver, no GPU
        return None, None, f"no usable CUDA GPU on the host that prepared it ({exc})"
    sm = (profile.tensorrt or TensorRTOptions()).sm
    if sm and here.compute_capability != sm:
        return None, None, (f"the host's GPU ({here.name}, compute capability {here.compute_capability}) is not the "
                            f"target's (compute capability {sm})")
    return trt, cuda, None


def _cache_scales(context: BundleContext) -> dict[str, float]:
    """Scale per tensor of the float graph: the Q/DQ graph's, propagated as NVIDIA's Q/DQ Translator does, then the
    calibration's for the rest (see :mod:`.dla`)."""
    amax = context.stats.amax(context.calibration.method, **context.calibration.params())
    calibrated = {t: activation_scale(a) for t, a in amax.items()}
    float_model = onnx.load(str(context.graphs["float"]), load_external_data=False)
    result = implicit_scales(float_model, context.quantizers, calibrated)
    log.info("calibration cache scales: %s", result.counts())
    if result.missing:
        log.warning("%d tensors have no scale (their consumers run FP16): %s", len(result.missing), result.missing[:5])
    return result.scales


def _graph(path: Path) -> BundleGraph:
    return BundleGraph(path.name, sha256_path(path), summarize_onnx(path))


@dataclass(frozen=True)
class _Route:
    """How the profile's default TensorRT builds this bundle, and what the device will write."""

    mode: QuantMode
    graph_role: str  # "int8" (Q/DQ graph) or "float"
    classifier: bool
    device_build: DeviceBuild
    # the DeepStream graph takes raw pixels and normalises them (exact); not for implicit (DLA) builds, whose
    # calibration cache has no scales for the normalisation ops; the frame graph (.frames) likewise
    pixel_input: bool = False

    @property
    def deepstream_graph(self) -> bool:
        """DeepStream gets a graph (and engine) of its own: a classifier's Softmax, or a raw-pixel input."""
        return self.classifier or self.pixel_input


def _route(context: BundleContext) -> _Route:
    profile, precision = context.profile, context.precision
    opts = profile.tensorrt or TensorRTOptions()
    mode = effective_quant_mode(generation_of(opts.default_version, profile.platform), profile, precision)
    graph_role = "int8" if precision is Precision.INT8 and mode is QuantMode.EXPLICIT else "float"
    if graph_role == "int8" and "int8" not in context.graphs:
        raise BackendError(f"target {profile.name} builds INT8 from the Q/DQ graph, and compile made none",
                           "compile with --int8 for an explicit profile")
    classifier = context.output_name == "logits" and bool(context.labels)
    implicit_anywhere = precision is Precision.INT8 and (profile.quant_mode is QuantMode.IMPLICIT or is_dla(profile))
    pixel_input = not implicit_anywhere and not (precision is Precision.INT8 and mode is QuantMode.IMPLICIT)
    return _Route(mode, graph_role, classifier, DeviceBuild.make(implicit=implicit_anywhere,
                                                                 deepstream=classifier or pixel_input,
                                                                 frames=pixel_input), pixel_input)


def _deepstream(context: BundleContext, route: _Route) -> dict[str, str]:
    """DeepStream files: config; a graph of its own (a classifier's Softmax, raw-pixel input where the build
    allows it); for classifiers nvinfer's labels file."""
    out, precision, profile = context.out_dir, context.precision, context.profile
    mode, device_build, graph_role, classifier = route.mode, route.device_build, route.graph_role, route.classifier
    int8 = precision is Precision.INT8
    implicit = int8 and mode is QuantMode.IMPLICIT
    calib = (device_build.calibration_cache if implicit else CALIBRATION_CACHE) if int8 else None
    files: dict[str, str] = {}
    if route.deepstream_graph:
        from edge_resnet.graph.input_normalization import with_pixel_input
        from edge_resnet.graph.load import save_onnx

        model = onnx.load(str(context.graphs[graph_role]))
        if classifier:
            model = softmax_graph(model, context.output_name)
        save_onnx(with_pixel_input(model, context.spec) if route.pixel_input else model, out / DEEPSTREAM_ONNX)
        files["deepstream_onnx"] = DEEPSTREAM_ONNX
        if classifier:
            write_labels(out / DEEPSTREAM_LABELS, context.labels)
            files["deepstream_labels"] = DEEPSTREAM_LABELS
        ds = DeepStreamFiles(DEEPSTREAM_ONNX, device_build.deepstream_engine or "model.deepstream.plan", calib,
                             DEEPSTREAM_LABELS if classifier else None, PROBABILITIES if classifier else context.output_name)
    else:
        ds = DeepStreamFiles(context.graphs[graph_role].name, device_build.engine, calib, None, context.output_name)
    text = nvinfer_config(profile, context.spec.to_dict(), ds, len(context.labels) if classifier else None,
                          precision.value, normalized_in_graph=route.pixel_input, own_engine=route.deepstream_graph)
    (out / DEEPSTREAM_CONFIG).write_text(text, encoding="utf-8", newline="\n")
    files["deepstream_config"] = DEEPSTREAM_CONFIG
    return files


def _frames(context: BundleContext, route: _Route) -> dict[str, str]:
    """The frame graph (see .frames), from the graph the engine is built from."""
    if not route.pixel_input:
        return {}
    from edge_resnet.graph.load import save_onnx

    save_onnx(frames_graph(onnx.load(str(context.graphs[route.graph_role])), context.spec),
              context.out_dir / FRAMES_ONNX)
    return {"frames_onnx": FRAMES_ONNX}


def _build_here(backend: TensorRTBackend, context: BundleContext, route: _Route, files: dict[str, str],
                trt: ModuleType, cuda: Any) -> Artifact:
    """The engine (and DeepStream's, and the frame engine) built now: this machine is the target."""
    profile, precision, out = context.profile, context.precision, context.out_dir
    built = backend.compile(context.graphs[route.graph_role], profile, out, precision, trt=trt, cuda=cuda)
    if route.deepstream_graph:
        name = route.device_build.deepstream_engine or "model.deepstream.plan"
        backend.compile(out / DEEPSTREAM_ONNX, profile, out, precision, trt=trt, cuda=cuda, engine_name=name)
        files["deepstream_engine"] = name
    if "frames_onnx" in files:
        backend.compile(out / FRAMES_ONNX, profile, out, precision, trt=trt, cuda=cuda, engine_name=FRAMES_ENGINE)
        files["frames_engine"] = FRAMES_ENGINE
    built.files.update(files)
    return built


def _build_on_device(context: BundleContext, route: _Route, files: dict[str, str]) -> dict[str, str]:
    """``build_engine.sh``, with the sha256 of every graph it may read; returns the device-built file names."""
    profile, precision, out = context.profile, context.precision, context.out_dir
    graphs = {role: _graph(path) for role, path in context.graphs.items()}
    if route.deepstream_graph:
        graphs["deepstream"] = _graph(out / DEEPSTREAM_ONNX)
    if "frames_onnx" in files:
        graphs["frames"] = _graph(out / FRAMES_ONNX)
    cache = (CALIBRATION_CACHE, sha256_path(out / CALIBRATION_CACHE)) if "calibration_cache" in files else None
    dla_reason = ("DLA takes INT8 only from implicit quantization (NVIDIA/TensorRT#2222): on TensorRT 8.x/10.x this\n"
                  "script builds the float graph with the Q/DQ graph's scales in a calibration cache.") \
        if is_dla(profile) and precision is Precision.INT8 else ""
    write_build_script(out, ScriptSpec(profile, precision, graphs, route.device_build, cache,
                                       route.graph_role if route.deepstream_graph else None, dla_reason,
                                       route.graph_role if "frames_onnx" in files else None))
    files["build_script"] = BUILD_SCRIPT
    return route.device_build.to_dict()


def prepare_tensorrt_bundle(backend: TensorRTBackend, context: BundleContext, *, trt: ModuleType | None = None,
                            cuda: Any = None) -> Artifact:
    profile, precision, out = context.profile, context.precision, context.out_dir
    opts = profile.tensorrt or TensorRTOptions()
    route = _route(context)
    files: dict[str, str] = {"onnx": context.graphs[route.graph_role].name}
    if precision is Precision.INT8:
        # every generation's build may read it (implicit, the DLA route; DeepStream's int8-calib-file): the
        # header is the profile's default TensorRT, and the device writes its own (build_engine.sh)
        write_calibration_cache(out / CALIBRATION_CACHE, _cache_scales(context), trt_version=opts.default_version)
        files["calibration_cache"] = CALIBRATION_CACHE
    files.update(_deepstream(context, route))
    files.update(_frames(context, route))
    info: dict[str, Any] = {"output_name": context.output_name, "device_index": device_index(profile.device),
                            "dla_core": opts.dla_core, "assumed_tensorrt_version": opts.default_version,
                            "quant_mode": route.mode.value}
    trt, cuda, reason = _local_target_device(profile, trt, cuda)
    if reason is None:
        built = _build_here(backend, context, route, files, trt, cuda)
        built.info.update({k: v for k, v in info.items() if built.info.get(k) is None})
        return built
    device_build = _build_on_device(context, route, files)
    log.warning("%s: prepared the %s bundle; build the engine on the device with ./%s", reason, profile.name,
                BUILD_SCRIPT)
    info.update(runnable=False, engine_built=False, reason=reason,
                how_to_build=f"copy the bundle to the {profile.name} device and run ./{BUILD_SCRIPT} there (it reads "
                             f"the device's TensorRT version; JetPack {opts.jetpack or '-'})")
    return Artifact(BackendName.TENSORRT, precision, files, info, device_build)
