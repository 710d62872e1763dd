"""TensorRT versions: parsing, the API generation, the version integer TensorRT writes into its files,
and which features each release has. Pure Python; every rule cites where it was read.

* ``NV_TENSORRT_VERSION`` (the integer in trtexec's banner and in calibration-cache headers): 8.x headers
  define it as ``MAJOR*1000 + MINOR*100 + PATCH`` (8.5.2 -> 8502; trtexec 8.5 prints "[TensorRT v8502]"),
  10.x and later as ``NV_TENSORRT_VERSION_INT(major, minor, patch) = major*10000 + minor*100 + patch``
  (NVIDIA/TensorRT include/NvInferRuntimeBase.h, release/10.x; trtexec 10.3 prints "[TensorRT v100300]").
* Implicit (calibrator) INT8: 8.x; still bound in 10.x but deprecated (Polygraphy's builder-config copy skips
  "deprecated option int8_calibrator", tools/Polygraphy, 10.x); removed in 11.0 (10.x->11.x "Removed Python
  APIs": BuilderFlag.INT8, IBuilderConfig.int8_calibrator, IInt8EntropyCalibrator2).
* DLA: every 8.x/10.x release up to 10.7 ("TensorRT 10.7 was the last 10.x release that supported DLA",
  TensorRT 11.4.1 docs, Working with DLA); none in 11.0-11.3, 11.4.0 only on Windows on ARM; 11.4.1 restores it
  on Jetson AGX Orin with JetPack 7.2.2+ (same page, and the 11.4.1 release notes).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from edge_resnet.errors import BackendError

Version = tuple[int, int, int]


class TrtGeneration(IntEnum):
    """API generations: what our code calls differs between these, not between minor releases."""

    TRT8 = 8
    TRT10 = 10
    TRT11 = 11


# Oldest TensorRT per platform: 8.6 on desktops; 8.5 on Jetson, because JetPack 5.1.x (the last JetPack
# for Xavier) ships TensorRT 8.5.2.
MIN_VERSION: dict[str, tuple[int, int]] = {"desktop": (8, 6), "jetson": (8, 5)}


def parse_version(version: str) -> Version:
    """(major, minor, patch) of "8.6.1", "10.3.0.26", "8.6.1.post1"."""
    parts = re.findall(r"\d+", str(version))
    if not parts:
        raise BackendError(f"cannot read a version number from {version!r}", 'write it as "10.3.0"')
    nums = [int(p) for p in parts[:3]] + [0, 0]
    return nums[0], nums[1], nums[2]


def format_version(version: Version) -> str:
    return ".".join(str(v) for v in version)


def generation_of(version: str, platform: str = "desktop") -> TrtGeneration:
    """The API generation of a TensorRT version; BackendError for versions we do not support."""
    ver = parse_version(version)
    floor = MIN_VERSION.get(platform, MIN_VERSION["desktop"])
    if ver[:2] < floor:
        raise BackendError(
            f"TensorRT {version} is too old for a {platform} target (need {floor[0]}.{floor[1]} or newer)",
            "upgrade TensorRT (JetPack 5.1 ships 8.5.2, JetPack 6.0 8.6.2, JetPack 6.1/6.2 10.3)",
        )
    try:
        return TrtGeneration(ver[0])
    except ValueError:
        raise BackendError(
            f"TensorRT {version} is not supported (known: 8.x, 10.x, 11.x; 9.x was an LLM-only release)",
            "install TensorRT 8.6, 10.x or 11.x",
        ) from None


def generation_unchecked(version: str) -> TrtGeneration:
    """The generation without the per-platform floor (for engines that were already built)."""
    return generation_of(version, "jetson")


# ------------------------------------------------------------------------------------ NV_TENSORRT_VERSION


def version_code(version: str | Version) -> int:
    """NV_TENSORRT_VERSION of a release (see the module docstring): 8.5.2 -> 8502, 10.3.0 -> 100300."""
    major, minor, patch = parse_version(version) if isinstance(version, str) else version
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


def decode_version_code(code: int) -> Version:
    """The inverse of :func:`version_code`: 8502 -> (8, 5, 2), 100300 -> (10, 3, 0)."""
    if code < 10000:  # 8.x encoding
        return code // 1000, (code % 1000) // 100, code % 100
    return code // 10000, (code // 100) % 100, code % 100


# --------------------------------------------------------------------------------------- specifiers

_SPEC_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)?\s*(\d+(?:\.\d+)*)\s*$")
_SPEC_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}


def spec_clauses(spec: str) -> list[tuple[str, tuple[int, ...]]]:
    """The clauses of a profile's ``versions`` specifier, e.g. ">=10,<12" -> [(">=", (10,)), ("<", (12,))]."""
    out = []
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = _SPEC_RE.match(clause)
        if not m:
            raise BackendError(f"cannot read TensorRT version specifier {spec!r}", 'write it as ">=10,<12"')
        out.append((m.group(1) or "==", tuple(int(n) for n in m.group(2).split("."))))
    return out


def version_bounds(spec: str) -> list[tuple[str, Version, Version | None]]:
    """Each clause as (op, low, high) on full versions: "==8.6" matches [8.6.0, 8.7.0), ">=10" is >= 10.0.0.

    ``high`` is only set for ``==``/``!=`` (a prefix match); the others compare with ``low``.
    """
    out: list[tuple[str, Version, Version | None]] = []
    for op, nums in spec_clauses(spec):
        low = (nums + (0, 0, 0))[:3]
        high = None
        if op in ("==", "!="):
            bumped = list(nums[:3])
            bumped[-1] += 1
            high = tuple((bumped + [0, 0, 0])[:3])  # type: ignore[assignment]
        out.append((op, low, high))  # type: ignore[arg-type]
    return out


def tensorrt_versions_ok(version: str, spec: str) -> bool:
    """Whether ``version`` satisfies a profile's ``versions`` specifier, e.g. ">=10,<12" or "==8.6".

    ``==8.6`` / ``!=8.6`` compare only the components given (8.6.x matches); the others pad with zeros.
    """
    ver = parse_version(version)
    for op, low, high in version_bounds(spec):
        if op in ("==", "!="):
            assert high is not None
            inside = low <= ver < high
            if inside != (op == "=="):
                return False
        elif not _SPEC_OPS[op](ver, low):
            return False
    return True


# ------------------------------------------------------------------------------------------- features

_IMPLICIT_REMOVED = (11, 0, 0)
# (first version without DLA, first version with it again) on Jetson; see the module docstring
_DLA_GAP: tuple[Version, Version] = ((10, 8, 0), (11, 4, 1))


def has_implicit_int8(version: str | Version) -> bool:
    """Whether this TensorRT still has calibrator (implicit) INT8: 8.x and 10.x."""
    ver = parse_version(version) if isinstance(version, str) else version
    return ver < _IMPLICIT_REMOVED


def has_dla(version: str | Version) -> bool:
    """Whether this TensorRT supports DLA on Jetson: up to 10.7, and again from 11.4.1 (AGX Orin)."""
    ver = parse_version(version) if isinstance(version, str) else version
    return not (_DLA_GAP[0] <= ver < _DLA_GAP[1])


def dla_gap_message() -> str:
    low, high = _DLA_GAP
    return (f"TensorRT {format_version(low)} to {format_version((11, 4, 0))} have no DLA on Jetson (10.7 was the last "
            f"10.x release with DLA; {format_version(high)} restores it on Jetson AGX Orin with JetPack 7.2.2+)")
