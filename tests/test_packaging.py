"""The wheel contains every package and the data folders; importing needs no optional backend."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "edge_resnet").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"


def test_target_profiles_are_found_through_the_package():
    from edge_resnet.targets import shipped_profiles

    assert {"cpu", "onnxruntime", "gpu", "jetson-orin", "jetson-orin-nano", "jetson-agx-orin",
            "jetson-xavier-nx", "openvino-gpu", "openvino-npu"} <= set(shipped_profiles())


@pytest.mark.slow
def test_wheel_ships_data_folders(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("edge_resnet-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "edge_resnet/_targets/cpu.toml" in names and "edge_resnet/_targets/jetson-orin.toml" in names
    assert any(n.startswith("edge_resnet/_calibration/") for n in names)
    assert "edge_resnet/backends/tensorrt/trtexec.py" in names


def test_import_and_help_need_no_optional_backend():
    """`import edge_resnet` and `edge-resnet --help` work with openvino/tensorrt/cv2/torch blocked."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('openvino', 'tensorrt', 'cv2', 'pycuda', 'cuda', 'matplotlib', 'torch'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edge_resnet, edge_resnet.backends.openvino, edge_resnet.backends.tensorrt\n"
        "from edge_resnet.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage: edge-resnet" in out.stdout
