"""A fake ``trtexec`` for one TensorRT version: parses and checks its arguments as that version's trtexec does,
writes a plan with the real header (readable by :mod:`fakes.fake_tensorrt`), and prints the log lines a device
build is parsed from. It records every invocation (argv and what it parsed) as one JSON line.

Rules, with their sources (NVIDIA/TensorRT samples/common and samples/trtexec):

* Banner "&&&& RUNNING TensorRT.trtexec [TensorRT v<NV_TENSORRT_VERSION>] # <argv>" before anything, also for
  ``--help`` (trtexec.cpp: reportTestStart, then parseHelp); "&&&& PASSED"/"&&&& FAILED" at the end.
* Unknown options: "Unknown option: <name>" and failure (trtexec.cpp main). The options known per version:
  ``--stronglyTyped`` from 10.0 (sampleOptions.cpp release/10.x; absent in release/8.6); ``--workspace`` until 8.x
  (deprecated in 8.4 for ``--memPoolSize``); ``--int8``/``--fp16``/``--best``/``--calib`` removed in 11.0 (10.x->11.x
  trtexec migration).
* ``--memPoolSize=workspace:<v>``: 8.x ``std::stod(v)`` MiB (a suffix is ignored by stod); 10.0.x
  ``stod(v) * unit(v)`` then read as MiB (a suffix applies twice; the issue's reading of release/10.0); later
  ``addDefaultUnitSuffixIfNotSpecified(v, 'M')`` then ``/ 1.0_MiB`` (sampleOptions.cpp, release/10.x).
* ``--stronglyTyped`` with ``--int8``/``--fp16``/``--best`` fails ("--best and --stronglyTyped cannot be both set").
* Shape names must be network inputs ("Cannot find input tensor with name ... in the network inputs!",
  sampleEngines.cpp setupNetworkAndConfig). DLA (``--useDLACore``) needs a DLA core and static shapes.
* ``--calib``: the cache must carry this version's header, else TensorRT skips it and calibrates without data
  ("Tensor input is bound to nullptr", NVIDIA/Deep-Learning-Accelerator-SW#26; NVIDIA/TensorRT#1378).
* ``--timingCacheFile``: another version's cache makes createTimingCache fail -> "TimingCache creation failed"
  (sampleEngines.cpp; the worst of the undocumented outcomes).
* ``--inputIOFormats`` is not given, so a UINT8 input keeps its type and LINEAR format (sampleEngines.cpp 10.x
  setupNetworkAndConfig: "case DataType::kUINT8: // Leave these as is"); a UINT8 input must feed a Cast
  (``formats.uint8_input_problem``, NVIDIA/TensorRT#3985).
* Log: "=== Device Information ===", "Selected Device:", "Compute Capability:", "SMs:", "Device Global Memory: N
  MiB" (sampleDevice.cpp setCudaDevice), "TensorRT version: X.Y.Z" (trtexec.cpp), "=== Performance summary ==="
  with "Throughput: ... qps", "Latency: min = ... ms, ..." (sampleReporting.cpp printEpilog). Lines prefixed
  "[date] [I] " as sample::gLogInfo does.

Environment: FAKE_TRT_VERSION, FAKE_DEVICE (JSON name/compute_capability/sm_count/memory_mib), FAKE_DLA_CORES,
FAKE_TRTEXEC_CALLS (JSON-lines file to append to).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakes.formats import (  # noqa: E402
    cache_header,
    engine_meta,
    nv_version_code,
    plan_bytes,
    timing_cache_bytes,
    uint8_input_problem,
    version_tuple,
)

_COMMON = {"--onnx", "--saveEngine", "--loadEngine", "--minShapes", "--optShapes", "--maxShapes", "--shapes",
           "--memPoolSize", "--timingCacheFile", "--useDLACore", "--allowGPUFallback", "--skipInference",
           "--verbose", "--duration", "--iterations", "--warmUp", "--device", "--noDataTransfers", "--exportTimes",
           "--layerPrecisions", "--precisionConstraints"}
_WEAK = {"--int8", "--fp16", "--best", "--calib"}


def known_options(version: tuple[int, int, int]) -> set[str]:
    known = set(_COMMON)
    if version[0] < 10:
        known |= {"--workspace"}
    if version[0] >= 10:
        known |= {"--stronglyTyped"}
    if version[0] < 11:
        known |= _WEAK
    return known


_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def workspace_mib(value: str, version: tuple[int, int, int]) -> float:
    num = float(re.match(r"[0-9.]+", value).group(0))  # std::stod reads the leading number
    suffix = value[-1].upper() if not value[-1].isdigit() else ""
    if version[0] < 10:
        return num
    if version[:2] == (10, 0):
        return num * _UNITS.get(suffix, 1)  # the unit, then read as MiB again
    return num * _UNITS[suffix or "M"] / (1 << 20)


def log(line: str = "") -> None:
    print(f"[12/01/2026-10:00:00] [I] {line}")


def fail(banner: str, message: str) -> int:
    print(f"[12/01/2026-10:00:00] [E] {message}")
    print(banner.replace("RUNNING", "FAILED", 1))
    return 1


def parse_shapes(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.rpartition(":")
    return name, tuple(int(d) for d in dims.split("x"))


def main(argv: list[str]) -> int:
    version_text = os.environ.get("FAKE_TRT_VERSION", "10.3.0")
    version = version_tuple(version_text)
    device = json.loads(os.environ.get("FAKE_DEVICE", '{"name": "Orin", "compute_capability": "8.7", '
                                                      '"sm_count": 8, "memory_mib": 7620}'))
    banner = f"&&&& RUNNING TensorRT.trtexec [TensorRT v{nv_version_code(version_text)}] # trtexec {' '.join(argv)}"
    print(banner)
    opts: dict[str, str] = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        opts[key] = value
    calls = os.environ.get("FAKE_TRTEXEC_CALLS")
    record: dict[str, object] = {"argv": argv, "version": version_text}

    def done(rc: int) -> int:
        if calls:
            with open(calls, "a", encoding="utf-8") as f:
                f.write(json.dumps({**record, "rc": rc}) + "\n")
        return rc

    if "--help" in opts or "-h" in opts or not argv:
        print("=== Model Options ===\n  --onnx=<file>  ONNX model")
        return done(0)
    unknown = [k for k in opts if k not in known_options(version)]
    if unknown:
        for k in unknown:
            print(f"[12/01/2026-10:00:00] [E] Unknown option: {k} {opts[k]}")
        return done(fail(banner, "Options parsing failed"))
    weak = [k for k in ("--int8", "--fp16", "--best") if k in opts]
    if "--stronglyTyped" in opts and weak:
        return done(fail(banner, f"Invalid usage, --stronglyTyped cannot be set with {weak}"))
    if "--memPoolSize" in opts:
        for spec in opts["--memPoolSize"].split(","):
            pool, _, value = spec.partition(":")
            if pool == "workspace":
                record["workspace_mib"] = workspace_mib(value, version)
    if "--workspace" in opts:
        record["workspace_mib"] = float(opts["--workspace"])
    log("=== Device Information ===")
    log(f"Selected Device: {device['name']}")
    log(f"Compute Capability: {device['compute_capability']}")
    log(f"SMs: {device['sm_count']}")
    log(f"Device Global Memory: {device['memory_mib']} MiB")
    log()
    log(f"TensorRT version: {'.'.join(map(str, version))}")
    import onnx

    model = onnx.load(opts["--onnx"]) if "--onnx" in opts else None
    if model is None:
        return done(fail(banner, "no model given (--onnx)"))
    inputs = {i.name for i in model.graph.input}
    shapes = {}
    for key in ("--minShapes", "--optShapes", "--maxShapes"):
        if key in opts:
            name, dims = parse_shapes(opts[key])
            if name not in inputs:
                return done(fail(banner, f'Cannot find input tensor with name "{name}" in the network inputs! Please '
                                         "make sure the input tensor names are correct."))
            shapes[key] = dims
    if "--useDLACore" in opts:
        cores = int(os.environ.get("FAKE_DLA_CORES", "2"))
        if int(opts["--useDLACore"]) >= cores:
            return done(fail(banner, f"Cannot create DLA engine, {cores} DLA cores available"))
        if len(set(shapes.values())) > 1:
            return done(fail(banner, "DLA does not support dynamic shapes: min, opt and max must be equal"))
    if "--calib" in opts:
        text = Path(opts["--calib"]).read_text(encoding="ascii") if Path(opts["--calib"]).is_file() else ""
        record["calib_header"] = text.split("\n", 1)[0]
        if not text.startswith(cache_header(version_text) + "\n"):
            return done(fail(banner, 'Error[3]: IExecutionContext::executeV2: Error Code 3: API Usage Error (Parameter '
                                     'check failed, condition: nullPtrAllowed. Tensor "input" is bound to nullptr)'))
    tag = device["name"].encode()
    timing = opts.get("--timingCacheFile")
    if timing and Path(timing).is_file() and Path(timing).read_bytes() != timing_cache_bytes(version_text, tag):
        return done(fail(banner, "TimingCache creation failed"))
    uint8 = uint8_input_problem(model)  # the builder's rule (formats.uint8_input_problem cites it)
    if uint8:
        return done(fail(banner, f"Error Code 4: API Usage Error ({uint8})"))
    if os.environ.get("FAKE_TRTEXEC_FAIL"):
        return done(fail(banner, "Engine could not be created from network"))
    default = tuple(d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim)
    profile = tuple(shapes.get(k, default) for k in ("--minShapes", "--optShapes", "--maxShapes"))
    if "--saveEngine" in opts:
        meta = {**engine_meta(model, profile), "graph_path": str(Path(opts["--onnx"]).resolve())}
        Path(opts["--saveEngine"]).write_bytes(plan_bytes(version_text, meta))
    if timing:
        Path(timing).write_bytes(timing_cache_bytes(version_text, tag))
    log("Engine built in 1.0 sec.")
    if "--skipInference" not in opts:
        log("=== Performance summary ===")
        log("Throughput: 812.5 qps")
        log("Latency: min = 1.1875 ms, max = 1.6875 ms, mean = 1.23 ms, median = 1.22 ms, percentile(90%) = 1.25 ms")
        log("End-to-End Host Latency: min = 1.2 ms, max = 2.1 ms, mean = 1.3 ms, median = 1.29 ms, "
            "percentile(90%) = 1.33 ms")
        log("GPU Compute Time: min = 1.0 ms, max = 1.5 ms, mean = 1.05 ms, median = 1.04 ms, percentile(90%) = 1.07 ms")
        log("Total Host Walltime: 3.0 s")
        log("Explanations of the performance metrics are printed in the verbose logs.")
    print(banner.replace("RUNNING", "PASSED", 1))
    return done(0)


def install(bin_dir: Path, version: str, *, device: dict | None = None, dla_cores: int = 2,
            calls: Path | None = None, fail_build: bool = False) -> Path:
    """Write ``bin_dir/trtexec`` (a shell wrapper running this file with the test's interpreter)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = {"FAKE_TRT_VERSION": version, "FAKE_DLA_CORES": str(dla_cores)}
    if device is not None:
        env["FAKE_DEVICE"] = json.dumps(device)
    if calls is not None:
        env["FAKE_TRTEXEC_CALLS"] = str(calls)
    if fail_build:
        env["FAKE_TRTEXEC_FAIL"] = "1"
    exports = "\n".join(f"export {k}={json.dumps(v)}" for k, v in env.items())
    path = bin_dir / "trtexec"
    path.write_text(f"#!/usr/bin/env bash\n{exports}\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    path.chmod(0o755)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
