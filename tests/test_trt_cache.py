"""TensorRT legacy calibration cache: header version code, hex encoding of scales, round trip."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from edge_resnet.backends.tensorrt.calibration_cache import (
    format_calibration_cache,
    read_calibration_cache,
    scale_to_hex,
    tensorrt_version_code,
    with_header,
    write_calibration_cache,
)
from edge_resnet.errors import QuantizationError


def test_known_value() -> None:
    assert scale_to_hex(1.0) == "3f800000"
    assert scale_to_hex(2.0) == "40000000"


@pytest.mark.parametrize("scale", [1.0, 1 / 127, 0.0123, 6.0 / 127, 3.4e-5, 1234.5])
def test_hex_is_big_endian_float32(scale: float) -> None:
    text = scale_to_hex(scale)
    assert text == struct.pack(">f", scale).hex() and len(text) == 8 and text == text.lower()


@pytest.mark.parametrize(
    ("version", "code"),
    [("8.5.2", 8502), ("8.6.1", 8601), ("8.6.2.3", 8602), ("10.3.0", 100300), ("10.13.2", 101302)],
)
def test_header_version_code(version: str, code: int) -> None:
    assert tensorrt_version_code(version) == code
    assert format_calibration_cache({"x": 1.0}, version).startswith(f"TRT-{code}-EntropyCalibration2\n")


def test_default_header_is_jetpack5_tensorrt() -> None:
    assert format_calibration_cache({"input": 1.0}).splitlines() == ["TRT-8502-EntropyCalibration2", "input: 3f800000"]


def test_round_trip(tmp_path: Path) -> None:
    scales = {"input": 2.64 / 127, "/layer1/conv/Conv_output_0": 0.05, "logits": 1.0}
    path = write_calibration_cache(tmp_path / "sub" / "calibration.cache", scales, "8.6.1")
    header, back = read_calibration_cache(path)
    assert header == "TRT-8601-EntropyCalibration2"
    assert list(back) == list(scales)
    for name, scale in scales.items():
        assert back[name] == float(np.float32(scale))
    assert path.read_text().endswith("\n") and not list(path.parent.glob(".*.tmp"))


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_refused(tmp_path: Path, scale: float) -> None:
    with pytest.raises(QuantizationError, match="finite positive scale"):
        write_calibration_cache(tmp_path / "c.cache", {"t": scale})
    assert not (tmp_path / "c.cache").exists()


@pytest.mark.parametrize("name", ["", "a\nb", "a: b"])
def test_unwritable_tensor_name_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(QuantizationError, match="cannot be written"):
        write_calibration_cache(tmp_path / "c.cache", {name: 1.0})


def test_empty_scales_refused(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="no tensor scales"):
        write_calibration_cache(tmp_path / "c.cache", {})


@pytest.mark.parametrize("text", ["not a cache\n", "", "TRT-8502-EntropyCalibration2\ninput 3f800000\n",
                                  "TRT-8502-EntropyCalibration2\ninput: 3f8000\n"])
def test_reader_refuses_bad_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.cache"
    path.write_text(text)
    with pytest.raises(QuantizationError):
        read_calibration_cache(path)


@pytest.mark.parametrize(("version", "header"), [("8.6.2", "TRT-8602-EntropyCalibration2"),
                                                 ("10.3.0", "TRT-100300-EntropyCalibration2")])
def test_with_header_rewrites_only_the_header(version: str, header: str) -> None:
    """The device writes its own TensorRT's header over the bundle's scales (row 6 of issue 12)."""
    text = format_calibration_cache({"input": 0.02, "conv": 0.5}, "8.5.2")
    out = with_header(text, version)
    assert out.splitlines() == [header, *text.splitlines()[1:]]


def test_with_header_refuses_a_non_cache() -> None:
    with pytest.raises(QuantizationError, match="not a TensorRT calibration cache"):
        with_header("input: 3f800000\n", "10.3.0")
