"""A fake Jetson for tests: bundles prepared on this host, ``build_engine.sh`` run against a fake trtexec, and the
fake ``tensorrt``/``pycuda`` modules a subprocess (``edge-resnet validate``, ``runtime.load``) imports on "the device".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fakes import fake_trtexec

TESTS = Path(__file__).resolve().parents[1]
ORIN_NANO = {"name": "Orin", "compute_capability": "8.7", "sm_count": 8, "memory_mib": 7620}
AGX_ORIN = {"name": "Orin", "compute_capability": "8.7", "sm_count": 16, "memory_mib": 28826}


def run_script(bundle: Path, bin_dir: Path, *args: str, env: dict[str, str] | None = None,
               check: bool = False) -> subprocess.CompletedProcess[str]:
    """``bundle/build_engine.sh ARGS`` with ``bin_dir`` (the fake trtexec) first on PATH."""
    full = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})}
    full.pop("TRTEXEC", None)
    return subprocess.run(["bash", str(bundle / "build_engine.sh"), *args], env=full, capture_output=True, text=True,
                          check=check, timeout=300)


def install_trtexec(bin_dir: Path, version: str, device: dict | None = None, **kw) -> Path:
    return fake_trtexec.install(bin_dir, version, device=device or ORIN_NANO, **kw)


_TENSORRT = '''"""Fake tensorrt for subprocess tests (tests/fakes/device.py)."""
import os, sys
sys.path.insert(0, {tests!r})
from fakes.fake_tensorrt import FakeTensorRT

_fake = FakeTensorRT(os.environ.get("FAKE_TRT_VERSION", "10.3.0"), dla_cores=int(os.environ.get("FAKE_DLA_CORES", "2")))
__version__ = _fake.__version__


def __getattr__(name):
    return getattr(_fake, name)
'''

_PYCUDA_DRIVER = '''"""Fake pycuda.driver for subprocess tests (tests/fakes/device.py)."""
import json, os, sys
sys.path.insert(0, {tests!r})
import tensorrt
from fakes.fake_tensorrt import FakePyCudaDriver
from edge_resnet.backends.tensorrt.cuda import DeviceInfo

_drv = FakePyCudaDriver(tensorrt._fake, DeviceInfo(**json.loads(os.environ["FAKE_DEVICE"])))


def __getattr__(name):
    return getattr(_drv, name)
'''


def fake_site(root: Path) -> Path:
    """A directory to put on PYTHONPATH: ``tensorrt`` and ``pycuda.driver`` backed by the fakes."""
    (root / "tensorrt").mkdir(parents=True, exist_ok=True)
    (root / "tensorrt" / "__init__.py").write_text(_TENSORRT.format(tests=str(TESTS)))
    (root / "pycuda").mkdir(exist_ok=True)
    (root / "pycuda" / "__init__.py").write_text("")
    (root / "pycuda" / "driver.py").write_text(_PYCUDA_DRIVER.format(tests=str(TESTS)))
    return root


def device_env(site: Path, bin_dir: Path, version: str, device: dict | None = None) -> dict[str, str]:
    """The environment of a process on the fake device: fake modules importable, fake trtexec on PATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "FAKE_TRT_VERSION": version, "FAKE_DEVICE": json.dumps(device or ORIN_NANO)}
    env.pop("TRTEXEC", None)
    return env
