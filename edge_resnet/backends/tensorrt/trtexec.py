"""``build_engine.sh``: the device builds its own engine with trtexec, for whatever TensorRT it has.

The bundle is usually prepared on a host without TensorRT, so the script cannot know the device's TensorRT in
advance. It reads it from trtexec's banner ("&&&& RUNNING TensorRT.trtexec [TensorRT v8602]", the
NV_TENSORRT_VERSION that samples/common/logging.h reportTestStart prints; decoded as in :mod:`.versions`) and
picks the argument set written for that generation from the same plan as the Python build (:mod:`.plan`).

trtexec flags per version (samples/common/sampleOptions.cpp, BuildOptions::parse and help):

* ``--memPoolSize=workspace:<N>`` with *no suffix*: 8.x parses the value with ``std::stod`` as MiB
  (release/8.6, "poolfmt ::= pool:sizeInMiB"); later 10.x appends a default ``M`` when no suffix is given and
  converts to MiB ("If none of suffixes is appended, the defualt unit is in MiB"); 10.0.x multiplied a suffixed
  value by its unit and then read it as MiB again, so ``1024M`` became ~1 PiB. No suffix means MiB on every one.
* ``--stronglyTyped`` exists from 10.0 ("--best and --stronglyTyped cannot be both set", release/10.x) and not in
  8.6 (trtexec.cpp prints "Unknown option: --stronglyTyped" and fails); 11.x is always strongly typed and has no
  ``--int8``/``--fp16``/``--calib``.
* DLA: ``--useDLACore=N`` and ``--allowGPUFallback``; static shapes.
* Implicit INT8 (8.x/10.x): ``--int8 --calib=<cache>``; the cache gets this TensorRT's header first (TensorRT
  skips a cache it deems incompatible, NVIDIA/TensorRT#1378, and 10.3 then failed with "bound to nullptr",
  NVIDIA/Deep-Learning-Accelerator-SW#26).
* ``--timingCacheFile``: trtexec fails with "TimingCache creation failed" when ``createTimingCache`` returns null
  (samples/common/sampleEngines.cpp, 8.6 and 10.x), and what it returns for another TensorRT's cache is not
  documented, so the script drops a timing cache whose record names another TensorRT before building.

After the build the script records the engine (:mod:`.engine`): TensorRT version, the device trtexec reports
("Selected Device", "Compute Capability", "SMs", "Device Global Memory", samples/common/sampleDevice.cpp), the
engine's sha256, the ONNX and manifest it was built from, the trtexec command and its "=== Performance summary ==="
(samples/common/sampleReporting.cpp printEpilog), which it also prints.
"""

from __future__ import annotations

import logging
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_resnet.backends.onnx_facts import OnnxFacts
from edge_resnet.backends.tensorrt.files import BUILD_SCRIPT, DeviceBuild
from edge_resnet.backends.tensorrt.plan import (
    BuildPlan,
    check_onnx_for_plan,
    plan_build,
)
from edge_resnet.backends.tensorrt.versions import MIN_VERSION, TrtGeneration, version_bounds
from edge_resnet.errors import BackendError
from edge_resnet.targets import TargetProfile, TensorRTOptions
from edge_resnet.types import Precision

log = logging.getLogger(__name__)

JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
PARTIAL = ".partial"

# Representative releases per generation, to make each generation's argument set (flags do not change within a
# generation; the version-dependent refusals are also checked by the script for the device's actual version).
_CANDIDATES: dict[TrtGeneration, tuple[str, ...]] = {
    TrtGeneration.TRT8: ("8.5.2", "8.6.1"),
    TrtGeneration.TRT10: ("10.0.1", "10.3.0", "10.7.0", "10.8.0", "10.16.0"),
    TrtGeneration.TRT11: ("11.0.0", "11.4.1", "11.5.0"),
}

_BUILDER_FLAGS: dict[str, str] = {"INT8": "--int8", "FP16": "--fp16", "GPU_FALLBACK": "--allowGPUFallback"}
# network flags that need a switch: EXPLICIT_BATCH needs none (trtexec parses ONNX explicit-batch on 8.x) and
# STRONGLY_TYPED none on 11 (always on)
_NETWORK_FLAGS: dict[tuple[TrtGeneration, str], str] = {(TrtGeneration.TRT10, "STRONGLY_TYPED"): "--stronglyTyped"}


def _shape_arg(input_name: str, shape: Sequence[int]) -> str:
    return f"{input_name}:{'x'.join(str(d) for d in shape)}"


def plan_argv(plan: BuildPlan, onnx_name: str, engine_name: str, input_name: str,
              timing_cache_name: str, calib_cache_name: str | None = None) -> list[str]:
    """trtexec's arguments (without the program) for ``plan``."""
    args = [
        f"--onnx={onnx_name}",
        f"--saveEngine={engine_name}",
        f"--minShapes={_shape_arg(input_name, plan.min_shape)}",
        f"--optShapes={_shape_arg(input_name, plan.opt_shape)}",
        f"--maxShapes={_shape_arg(input_name, plan.max_shape)}",
        f"--memPoolSize=workspace:{plan.workspace_bytes >> 20}",  # MiB, no suffix (see the module docstring)
        f"--timingCacheFile={timing_cache_name}",
    ]
    args += [_NETWORK_FLAGS[(plan.generation, f)] for f in plan.network_flags if (plan.generation, f) in _NETWORK_FLAGS]
    args += [_BUILDER_FLAGS[f] for f in plan.builder_flags]
    if plan.dla_core is not None:
        args.append(f"--useDLACore={plan.dla_core}")
    if plan.calibration_cache is not None:
        if not calib_cache_name:
            raise BackendError("an implicit INT8 build needs a calibration cache", "pass calib_cache_name")
        args.append(f"--calib={calib_cache_name}")
    return args


def trtexec_command(profile: TargetProfile, onnx_name: str, engine_name: str, precision: Precision,
                    trt_version: str, calib_cache_name: str | None = None, input_name: str = "input",
                    input_shape: tuple[int, int, int] = (3, 224, 224), timing_cache_name: str = "timing.cache",
                    trtexec: str = "trtexec") -> list[str]:
    """The trtexec argv that builds ``engine_name`` for ``profile`` with TensorRT ``trt_version``."""
    plan = plan_build(trt_version, profile, precision, input_shape)
    return [trtexec, *plan_argv(plan, onnx_name, engine_name, input_name, timing_cache_name,
                                calib_cache_name if plan.calibration_cache else None)]


# ------------------------------------------------------------------------------------------------- script


@dataclass(frozen=True)
class BundleGraph:
    name: str
    sha256: str
    summary: OnnxFacts


@dataclass(frozen=True)
class ScriptSpec:
    """What the script needs to know about the bundle."""

    profile: TargetProfile
    precision: Precision
    graphs: dict[str, BundleGraph]  # "float", "int8" (explicit INT8), "deepstream", "frames" (see .frames)
    device_build: DeviceBuild
    calibration_cache: tuple[str, str] | None = None  # (name, sha256) of the bundle's cache, for implicit builds
    deepstream_role: str | None = None  # which graph the DeepStream graph was made from ("int8" or "float")
    dla_reason: str = ""
    frames_role: str | None = None  # which graph the frame graph was made from ("int8" or "float")


@dataclass
class _GenerationBlock:
    generation: TrtGeneration
    plan: BuildPlan | None = None
    onnx: str = ""
    argv: list[str] = field(default_factory=list)
    deepstream_argv: list[str] = field(default_factory=list)
    frames_argv: list[str] = field(default_factory=list)
    refusal: str = ""


def _block(spec: ScriptSpec, generation: TrtGeneration) -> _GenerationBlock:
    first_error: BackendError | None = None
    files = spec.device_build
    for version in _CANDIDATES[generation]:
        try:
            graph = spec.graphs["float"]
            plan = plan_build(version, spec.profile, spec.precision, graph.summary.input_shape)
            graph = spec.graphs[plan.onnx_role]
            check_onnx_for_plan(graph.summary, plan, Path(graph.name))
        except (BackendError, KeyError) as exc:
            if isinstance(exc, KeyError):
                exc = BackendError(f"the bundle has no {exc.args[0]} graph for TensorRT {generation.value}.x")
            first_error = first_error or exc
            continue
        calib = files.calibration_cache if plan.calibration_cache else None
        block = _GenerationBlock(generation, plan, graph.name)
        block.argv = plan_argv(plan, graph.name, files.engine + PARTIAL, graph.summary.input_name, files.timing_cache,
                               calib)
        ds = spec.graphs.get("deepstream")
        if ds is not None and files.deepstream_engine and spec.deepstream_role == plan.onnx_role:
            block.deepstream_argv = plan_argv(plan, ds.name, files.deepstream_engine + PARTIAL,
                                              ds.summary.input_name, files.timing_cache, calib)
        frames = spec.graphs.get("frames")
        if frames is not None and files.frames_engine and spec.frames_role == plan.onnx_role:
            # the same plan: its batch range, for the frame graph's own input (N x S x S x 3)
            frames_plan = plan_build(version, spec.profile, spec.precision, frames.summary.input_shape)
            block.frames_argv = plan_argv(frames_plan, frames.name, files.frames_engine + PARTIAL,
                                          frames.summary.input_name, files.timing_cache, calib)
        return block
    assert first_error is not None
    return _GenerationBlock(generation, refusal=first_error.problem + (f" ({first_error.fix})" if first_error.fix else ""))


def _version_int(v: tuple[int, int, int]) -> int:
    return v[0] * 10000 + v[1] * 100 + v[2]


def _version_checks(profile: TargetProfile) -> list[str]:
    """Bash that refuses the device's TensorRT when the Python plan would (V = major*10000 + minor*100 + patch)."""
    opts = profile.tensorrt or TensorRTOptions()
    floor = MIN_VERSION.get(profile.platform, MIN_VERSION["desktop"])
    lines = [f'(( V >= {_version_int((*floor, 0))} )) || die "TensorRT $TRT_VERSION is too old for a {profile.platform} '
             f'target (need {floor[0]}.{floor[1]} or newer; JetPack 5.1 ships 8.5.2, JetPack 6.x 8.6/10.3)"']
    for op, low, high in version_bounds(opts.versions):
        if op in ("==", "!="):
            assert high is not None
            cond = f"V >= {_version_int(low)} && V < {_version_int(high)}"
            cond = cond if op == "==" else f"!({cond})"
        else:
            cond = f"V {op} {_version_int(low)}"
        lines.append(f'(( {cond} )) || die "TensorRT $TRT_VERSION is outside the versions target {profile.name} '
                     f'accepts ({opts.versions})"')
    if opts.dla_core is not None:
        lines.append(f'if (( V >= 100800 && V < 110401 )); then die "TensorRT $TRT_VERSION has no DLA on Jetson (10.7 '
                     f'was the last 10.x release with DLA; 11.4.1 restores it on AGX Orin with JetPack 7.2.2+), and '
                     f'target {profile.name} runs on DLA core {opts.dla_core}"; fi')
    return lines


def _bash_array(name: str, argv: Sequence[str]) -> str:
    return f"{name}=(" + " ".join(shlex.quote(a) for a in argv) + ")"


def _case_blocks(spec: ScriptSpec) -> str:
    files = spec.device_build
    out = []
    for generation in TrtGeneration:
        block = _block(spec, generation)
        g = int(generation)
        if block.plan is None:
            out.append(f'  {g}) die {shlex.quote(f"TensorRT $TRT_VERSION cannot build this bundle: {block.refusal}")} ;;')
            continue
        calib = files.calibration_cache if block.plan.calibration_cache else ""
        body = [f"ONNX={shlex.quote(block.onnx)}", f"CALIB={shlex.quote(calib or '')}",
                _bash_array("ARGS", block.argv), _bash_array("DS_ARGS", block.deepstream_argv),
                _bash_array("FR_ARGS", block.frames_argv)]
        out.append(f"  {g})\n    " + "\n    ".join(body) + "\n    ;;")
    return "\n".join(out)


def _file_checks(spec: ScriptSpec) -> str:
    lines = []
    for role, graph in spec.graphs.items():
        lines.append(f"EXPECTED_SHA[{shlex.quote(graph.name)}]={graph.sha256}  # {role} graph")
    if spec.calibration_cache:
        name, sha = spec.calibration_cache
        lines.append(f"EXPECTED_SHA[{shlex.quote(name)}]={sha}")
    return "\n".join(lines)


_SCRIPT = r'''#!/usr/bin/env bash
# Made by edge-resnet for target @@TARGET@@ (@@PLATFORM@@@@JETPACK@@), @@PRECISION@@.
# TensorRT engines only run on the GPU and TensorRT version that built them: run this on the device.
#
#   ./build_engine.sh                  build @@ENGINE@@ with this device's trtexec and record it in @@RECORD@@
#   ./build_engine.sh --deepstream     also build @@DS_ENGINE@@ for deepstream_nvinfer.txt
#   ./build_engine.sh --frames         also build @@FR_ENGINE@@: uint8 camera frames in (edge_resnet.runtime)
#   ./build_engine.sh --validate SRC   then run `edge-resnet validate` on SRC (when edge-resnet is installed)
#
# It reads the device's TensorRT version from trtexec, picks the arguments edge-resnet wrote for that TensorRT
# generation, checks that the bundle's files are the ones its manifest lists, and never changes manifest.json.
@@DLA_REASON@@set -euo pipefail
cd "$(dirname "$0")"

die() { echo "error: $*" >&2; exit 1; }
usage() { sed -n '5,8s/^# \{0,1\}//p' "$0"; }

DEEPSTREAM=0
FRAMES=0
VALIDATE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --deepstream) DEEPSTREAM=1 ;;
    --frames) FRAMES=1 ;;
    --validate) [[ $# -ge 2 ]] || die "--validate needs a data source (e.g. --validate images/)"; VALIDATE="$2"; shift ;;
    --validate=*) VALIDATE="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
  shift
done

command -v python3 >/dev/null 2>&1 || die "python3 is needed (it is part of every JetPack); install python3"
edge_py() { python3 - "$@" <<'PY'
@@PYTHON@@
PY
}

TRTEXEC="${TRTEXEC:-}"
if [[ -z "$TRTEXEC" ]]; then
  if command -v trtexec >/dev/null 2>&1; then
    TRTEXEC="$(command -v trtexec)"
  elif [[ -x @@JETSON_TRTEXEC@@ ]]; then
    TRTEXEC=@@JETSON_TRTEXEC@@
  else
    echo "error: trtexec not found (on Jetson it is @@JETSON_TRTEXEC@@, from the TensorRT packages of JetPack);" >&2
    echo "       install TensorRT or set TRTEXEC=/path/to/trtexec" >&2
    exit 1
  fi
fi

# the bundle's inputs, as its manifest lists them (sha256 at compile time)
[[ -f manifest.json ]] || die "manifest.json is missing: copy the whole bundle directory"
declare -A EXPECTED_SHA
@@FILE_CHECKS@@
check_input() {
  [[ -f "$1" ]] || die "$1 is missing next to this script (copy the whole bundle directory)"
  [[ "$(edge_py sha256 "$1")" == "${EXPECTED_SHA[$1]}" ]] || die "$1 differs from the one the manifest lists: compile the bundle again"
}

# this device's TensorRT, from trtexec's banner "[TensorRT v8602]" / "[TensorRT v100300]" (NV_TENSORRT_VERSION)
CODE="$("$TRTEXEC" --help 2>&1 | grep -m1 -o 'TensorRT v[0-9][0-9]*' | tr -dc '0-9' || true)"
[[ -n "$CODE" ]] || die "could not read the TensorRT version from $TRTEXEC (no '[TensorRT vNNNN]' banner)"
if (( CODE < 10000 )); then MAJ=$((CODE / 1000)); MIN=$(((CODE % 1000) / 100)); PAT=$((CODE % 100))
else MAJ=$((CODE / 10000)); MIN=$(((CODE / 100) % 100)); PAT=$((CODE % 100)); fi
TRT_VERSION="$MAJ.$MIN.$PAT"
V=$((MAJ * 10000 + MIN * 100 + PAT))
@@VERSION_CHECKS@@
case "$MAJ" in
@@CASES@@
  *) die "TensorRT $TRT_VERSION is not supported (known: 8.x, 10.x, 11.x; 9.x was an LLM-only release)" ;;
esac
check_input "$ONNX"
if (( DEEPSTREAM )); then
  [[ ${#DS_ARGS[@]} -gt 0 ]] || die "this bundle has no DeepStream classifier graph for TensorRT $TRT_VERSION"
  check_input @@DS_ONNX@@
fi
if (( FRAMES )); then
  [[ ${#FR_ARGS[@]} -gt 0 ]] || die "this bundle has no frame graph for TensorRT $TRT_VERSION (implicit INT8 and DLA builds normalise on the host)"
  check_input @@FR_ONNX@@
fi

# implicit INT8: the bundle's scales with this TensorRT's cache header (TensorRT skips other versions' caches)
if [[ -n "$CALIB" ]]; then
  check_input @@BUNDLE_CACHE@@
  edge_py calibration-cache @@BUNDLE_CACHE@@ "$CALIB" "$CODE"
fi

# a timing cache from another TensorRT may not load ("TimingCache creation failed"): start a new one
if [[ -f @@TIMING@@ ]]; then
  PREV="$(edge_py record-version @@RECORD@@ 2>/dev/null || true)"
  if [[ "$PREV" != "$TRT_VERSION" ]]; then
    echo "discarding @@TIMING@@ (made by TensorRT ${PREV:-unknown}, this is $TRT_VERSION)"
    rm -f @@TIMING@@
  fi
fi

build() {  # build ENGINE LOG ARGS...
  local engine="$1" logfile="$2"
  shift 2
  rm -f "$engine@@PARTIAL@@"
  echo "building $engine for @@TARGET@@ with TensorRT $TRT_VERSION:"
  echo "  $TRTEXEC $*"
  if ! "$TRTEXEC" "$@" > "$logfile" 2>&1; then
    tail -n 25 "$logfile" >&2 || true
    rm -f "$engine@@PARTIAL@@"
    die "trtexec failed building $engine (the whole output is in $logfile)"
  fi
  [[ -s "$engine@@PARTIAL@@" ]] || die "trtexec reported success but wrote no $engine (see $logfile)"
  mv -f "$engine@@PARTIAL@@" "$engine"
}

build @@ENGINE@@ @@LOG@@ "${ARGS[@]}"
EXTRA_RECORD=()
if (( DEEPSTREAM )); then
  build @@DS_ENGINE@@ @@DS_LOG@@ "${DS_ARGS[@]}"
  EXTRA_RECORD=(--deepstream-engine @@DS_ENGINE@@)
fi
if (( FRAMES )); then
  build @@FR_ENGINE@@ @@FR_LOG@@ "${FR_ARGS[@]}"
  EXTRA_RECORD+=(--frames-engine @@FR_ENGINE@@)
fi
edge_py record --log @@LOG@@ --engine @@ENGINE@@ --record @@RECORD@@ --onnx "$ONNX" \
  --onnx-sha256 "${EXPECTED_SHA[$ONNX]}" --trt-version "$TRT_VERSION" --dla-core @@DLA_CORE@@ \
  --trtexec "$TRTEXEC" ${EXTRA_RECORD[@]+"${EXTRA_RECORD[@]}"} -- "${ARGS[@]}"
edge_py summary @@LOG@@
echo "wrote @@ENGINE@@ and @@RECORD@@ (edge_resnet.runtime.load, edge-resnet validate and bench use them)"

if [[ -n "$VALIDATE" ]]; then
  if command -v edge-resnet >/dev/null 2>&1; then
    edge-resnet validate . --data "$VALIDATE"
  else
    echo "edge-resnet is not installed here, so the engine was not validated: install it on the device, then run"
    echo "  edge-resnet validate $(pwd) --data $VALIDATE"
  fi
fi
'''

_PYTHON = r'''
import hashlib, json, os, re, sys, tempfile

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def write_atomic(path, text):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

def fail(msg):
    sys.stderr.write("error: " + msg + "\n")
    sys.exit(1)

NUM = r"([-+0-9.eE]+)"
STATS = re.compile(r"min = " + NUM + r" ms, max = " + NUM + r" ms, mean = " + NUM + r" ms, median = " + NUM +
                   r" ms, percentile\((\d+(?:\.\d+)?)%\) = " + NUM + r" ms")

def timing(lines):
    out = {}
    for line in lines:
        m = re.search(r"\] Throughput: " + NUM + " qps", line) or re.search(r"^Throughput: " + NUM + " qps", line)
        if m:
            out["throughput_qps"] = float(m.group(1))
        for key, label in (("latency_ms", "Latency: "), ("gpu_compute_ms", "GPU Compute Time: ")):
            i = line.find("] " + label)
            body = line[i + 2 + len(label):] if i >= 0 else (line[len(label):] if line.startswith(label) else None)
            m = STATS.match(body) if body is not None else None
            if m:
                out[key] = {"min": float(m.group(1)), "max": float(m.group(2)), "mean": float(m.group(3)),
                            "median": float(m.group(4)), "p%g" % float(m.group(5)): float(m.group(6))}
    return out

def device(lines):
    found = {}
    pats = {"name": r"Selected Device: (.*?)\s*$", "compute_capability": r"Compute Capability: (\d+\.\d+)",
            "sm_count": r"\] SMs: (\d+)", "memory_mib": r"Device Global Memory: (\d+) MiB"}
    for line in lines:
        for key, pat in pats.items():
            m = re.search(pat, line)
            if m and key not in found:
                found[key] = m.group(1)
    if "name" not in found or "compute_capability" not in found:
        fail("trtexec did not print the device information (=== Device Information ===)")
    return {"name": found["name"], "compute_capability": found["compute_capability"],
            "sm_count": int(found["sm_count"]) if "sm_count" in found else None,
            "memory_mib": int(found["memory_mib"]) if "memory_mib" in found else None}

def plan_version(path):
    with open(path, "rb") as f:
        head = f.read(27)
    if len(head) < 27 or not head.startswith(b"ftrt"):
        fail(path + " is not a TensorRT plan (no 'ftrt' header)")
    return "%d.%d.%d" % (head[24], head[25], head[26])

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "sha256":
    print(sha256(args[0]))
elif cmd == "calibration-cache":
    src, dst, code = args
    lines = open(src, encoding="ascii").read().splitlines()
    if not lines or not re.match(r"^TRT-\d+-\w+$", lines[0].strip()):
        fail(src + " is not a TensorRT calibration cache")
    calibrator = lines[0].strip().split("-", 2)[2]
    write_atomic(dst, "\n".join(["TRT-%s-%s" % (code, calibrator)] + lines[1:]) + "\n")
elif cmd == "record-version":
    print(json.load(open(args[0]))["tensorrt_version"])
elif cmd == "summary":
    lines = open(args[0], errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if "=== Performance summary ===" in l), None)
    if start is None:
        print("(trtexec printed no performance summary)")
    else:
        print("trtexec timing on this device:")
        for line in lines[start + 1:]:
            text = line.split("] ", 2)[-1] if line.startswith("[") else line
            if not text.strip() or text.startswith(("Explanations", "* ", "===")):
                break
            print("  " + text)
elif cmd == "record":
    opts, argv = {}, []
    i = 0
    while i < len(args):
        if args[i] == "--":
            argv = args[i + 1:]
            break
        opts[args[i][2:]] = args[i + 1]
        i += 2
    lines = open(opts["log"], errors="replace").read().splitlines()
    header = plan_version(opts["engine"])
    if header != opts["trt-version"]:
        fail("%s was written by TensorRT %s but trtexec reports %s" % (opts["engine"], header, opts["trt-version"]))
    rec = {"format": 1, "engine": opts["engine"], "engine_sha256": sha256(opts["engine"]),
           "tensorrt_version": header, "device": device(lines), "onnx": opts["onnx"],
           "onnx_sha256": opts["onnx-sha256"], "manifest_sha256": sha256("manifest.json"),
           "dla_core": None if opts["dla-core"] == "none" else int(opts["dla-core"]), "built_by": "build_engine.sh",
           "trtexec": [opts["trtexec"]] + argv, "timing": timing(lines)}
    if "deepstream-engine" in opts:
        rec["deepstream_engine"] = {"file": opts["deepstream-engine"], "sha256": sha256(opts["deepstream-engine"]),
                                    "tensorrt_version": plan_version(opts["deepstream-engine"])}
    if "frames-engine" in opts:
        rec["frames_engine"] = {"file": opts["frames-engine"], "sha256": sha256(opts["frames-engine"]),
                                "tensorrt_version": plan_version(opts["frames-engine"])}
    write_atomic(opts["record"], json.dumps(rec, indent=2) + "\n")
else:
    fail("unknown helper command " + cmd)
'''


def render_build_script(spec: ScriptSpec) -> str:
    profile, files = spec.profile, spec.device_build
    jetpack = f", JetPack {profile.tensorrt.jetpack}" if profile.tensorrt and profile.tensorrt.jetpack else ""
    dla = profile.tensorrt.dla_core if profile.tensorrt else None
    reason = "".join(f"# {line}\n" for line in spec.dla_reason.splitlines()) if spec.dla_reason else ""
    q = shlex.quote
    replacements = {
        "@@TARGET@@": profile.name, "@@PLATFORM@@": profile.platform, "@@JETPACK@@": jetpack,
        "@@PRECISION@@": spec.precision.value, "@@DLA_REASON@@": reason, "@@PYTHON@@": _PYTHON.strip("\n"),
        "@@JETSON_TRTEXEC@@": JETSON_TRTEXEC, "@@FILE_CHECKS@@": _file_checks(spec),
        "@@VERSION_CHECKS@@": "\n".join(_version_checks(profile)), "@@CASES@@": _case_blocks(spec),
        "@@ENGINE@@": q(files.engine), "@@RECORD@@": q(files.record), "@@LOG@@": q(files.log),
        "@@TIMING@@": q(files.timing_cache), "@@PARTIAL@@": PARTIAL,
        "@@DS_ENGINE@@": q(files.deepstream_engine or "model.deepstream.plan"),
        "@@DS_LOG@@": q(files.deepstream_log or "trtexec.deepstream.log"),
        "@@DS_ONNX@@": q(spec.graphs["deepstream"].name) if "deepstream" in spec.graphs else "''",
        "@@FR_ENGINE@@": q(files.frames_engine or "model.frames.plan"),
        "@@FR_LOG@@": q(files.frames_log or "trtexec.frames.log"),
        "@@FR_ONNX@@": q(spec.graphs["frames"].name) if "frames" in spec.graphs else "''",
        "@@BUNDLE_CACHE@@": q(spec.calibration_cache[0]) if spec.calibration_cache else "''",
        "@@DLA_CORE@@": str(dla) if dla is not None else "none",
    }
    text = _SCRIPT
    for key, value in replacements.items():
        text = text.replace(key, value)
    return text


def write_build_script(directory: Path, spec: ScriptSpec) -> Path:
    """Write ``build_engine.sh`` (bash, executable) into ``directory``."""
    path = Path(directory) / BUILD_SCRIPT
    path.write_text(render_build_script(spec), encoding="utf-8", newline="\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    log.info("wrote %s", path)
    return path
