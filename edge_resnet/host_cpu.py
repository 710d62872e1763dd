"""What the CPU of this host can do for INT8: does it have a VNNI-class dot product?

x86 CPUs without VNNI (AVX2, and AVX-512 without the VNNI extension) multiply u8 x s8 with
``vpmaddubsw``, which adds two adjacent products into a *saturating int16*: 255 x 127 x 2 = 64770
does not fit, so large activations times large weights are clamped. oneDNN (OpenVINO's CPU plugin)
and ONNX Runtime's MLAS both use that instruction there. ONNX Runtime's answer is ``reduce_range``
(7-bit weights, its quantization docs), NNCF's is ``OverflowFix`` (half the weight range): with
|w| <= 63 the pair sum is at most 255 x 63 x 2 = 32130, which always fits. VNNI (``vpdpbusd``),
AVX-VNNI and AMX accumulate in int32 and need no such care; neither do ARM (``sdot``) or GPUs.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

# /proc/cpuinfo flags of an int32-accumulating u8 x s8 dot product
INT32_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The ``flags`` of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def saturates_int8(machine: str, flags: frozenset[str] | None) -> bool:
    """True when u8 x s8 products may saturate on this CPU (x86 without a VNNI-class instruction).

    ``flags`` None means unknown (no /proc/cpuinfo): an x86 host is then assumed to saturate, which
    costs one bit of weight precision at most, where the opposite guess costs accuracy.
    """
    if machine.lower() not in X86_MACHINES:
        return False
    return flags is None or not (flags & INT32_DOT_FLAGS)


@cache
def host_saturates_int8() -> bool:
    """:func:`saturates_int8` for the CPU this process runs on."""
    try:
        flags: frozenset[str] | None = cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        flags = None
    return saturates_int8(platform.machine(), flags or None)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
