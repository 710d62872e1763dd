"""7-bit weights for x86 CPUs without VNNI: the saturation they avoid is real, and the choice is recorded."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edge_resnet.errors import QuantizationError
from edge_resnet.host_cpu import cpu_flags, host_saturates_int8, saturates_int8
from edge_resnet.quant.qdq import QuantConfig, quantize_weights
from edge_resnet.targets import get_target, resolve_weight_range
from edge_resnet.types import ActivationFormat, WeightRange

CPUINFO_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n"
CPUINFO_VNNI = "processor\t: 0\nflags\t\t: fpu avx avx2 avx512f avx512_vnni\n"


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    assert cpu_flags(CPUINFO_AVX2) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags("no flags here") == frozenset()


@pytest.mark.parametrize(("machine", "flags", "expected"), [
    ("x86_64", cpu_flags(CPUINFO_AVX2), True),
    ("x86_64", cpu_flags(CPUINFO_VNNI), False),
    ("x86_64", frozenset({"avx2", "avx_vnni"}), False),  # Alder Lake and later
    ("x86_64", frozenset({"avx512f", "amx_int8"}), False),
    ("x86_64", None, True),  # unknown: assume the worst, it costs one bit at most
    ("aarch64", None, False),  # sdot accumulates in int32
])
def test_which_cpus_saturate(machine: str, flags: frozenset[str] | None, expected: bool) -> None:
    assert saturates_int8(machine, flags) is expected


def test_reduced_weights_stay_within_63_and_keep_per_channel_scales() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    q, scale = quantize_weights(w, 0, 63)
    assert np.abs(q).max() == 63
    err = np.abs(q.astype(np.float64) * scale[:, None, None, None] - w).max(axis=(1, 2, 3))
    assert np.all(err <= scale / 2 + 1e-7)  # rounding error of a 63-level quantizer, per channel


def test_auto_must_be_resolved_before_quantizing() -> None:
    with pytest.raises(QuantizationError, match="resolve"):
        QuantConfig(ActivationFormat.U8S8, weight_range=WeightRange.AUTO)
    assert QuantConfig(ActivationFormat.U8S8, weight_range="reduced").weight_qmax == 63


@pytest.mark.parametrize("target", ["cpu", "onnxruntime"])
def test_x86_cpu_targets_reduce_the_range_only_on_a_saturating_host(target: str) -> None:
    profile = get_target(target)
    assert profile.weight_range is WeightRange.AUTO
    assert resolve_weight_range(profile, host_saturates=True) is WeightRange.REDUCED
    assert resolve_weight_range(profile, host_saturates=False) is WeightRange.FULL


@pytest.mark.parametrize("target", ["gpu", "jetson", "openvino-gpu"])
def test_other_targets_keep_full_range_weights(target: str) -> None:
    assert resolve_weight_range(get_target(target), host_saturates=True) is WeightRange.FULL


def _run(model: onnx.ModelProto, x: np.ndarray, level: str) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _qdq(digits, weight_range: WeightRange) -> onnx.ModelProto:
    from edge_resnet.data import open_dataset
    from edge_resnet.quant.ptq import quantize

    data = open_dataset("digits:train", digits.spec, count=128)
    return quantize(digits.float_graph, data, QuantConfig(ActivationFormat.U8S8, weight_range=weight_range),
                    progress=False).model


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.slow
def test_reduced_range_fused_kernels_compute_the_qdq_graph_on_any_cpu(digits_r18) -> None:
    """ORT's QLinearConv (ORT_ENABLE_ALL) against the unfused DQ -> float Conv -> Q semantics
    (ORT_DISABLE_ALL): with 7-bit weights no int16 pair sum saturates, so they agree on every CPU.
    What is left (min cosine ~0.9998 with mse's finer scales) is the fused kernels' own rounding;
    saturation costs a mean of 0.96-0.98 (test below)."""
    x, _ = digits_r18.arrays("test", 128)
    model = _qdq(digits_r18, WeightRange.REDUCED)
    fused, exact = _run(model, x, "ORT_ENABLE_ALL"), _run(model, x, "ORT_DISABLE_ALL")
    assert _cos(fused, exact).min() > 0.9995
    assert np.array_equal(fused.argmax(1), exact.argmax(1))


@pytest.mark.slow
@pytest.mark.skipif(not host_saturates_int8(), reason="this CPU has VNNI: full-range weights do not saturate here")
def test_full_range_weights_saturate_on_this_cpu(digits_r18) -> None:
    """The reason for the reduced range, shown on this host: the fused kernels drift from the Q/DQ graph."""
    x, _ = digits_r18.arrays("test", 128)
    model = _qdq(digits_r18, WeightRange.FULL)
    fused, exact = _run(model, x, "ORT_ENABLE_ALL"), _run(model, x, "ORT_DISABLE_ALL")
    assert _cos(fused, exact).mean() < 0.999


def test_a_users_cpu_profile_gets_auto_unless_it_says_otherwise(tmp_path) -> None:
    base = 'name = "mine"\ndescription = "x"\nbackend = "openvino"\nactivation_format = "s8s8"\n'
    for device, written, expected in (("CPU", "", WeightRange.AUTO), ("GPU", "", WeightRange.FULL),
                                      ("CPU", 'weight_range = "full"\n', WeightRange.FULL)):
        path = tmp_path / f"{device}{len(written)}.toml"
        path.write_text(base + f'device = "{device}"\n' + written)
        assert get_target(path).weight_range is expected


@pytest.mark.slow
def test_compile_records_the_resolved_range_and_writes_it_into_the_weights(digits_r18, tmp_path) -> None:
    from click.testing import CliRunner
    from onnx import numpy_helper

    from edge_resnet.bundle import load_bundle
    from edge_resnet.cli.app import cli

    out = tmp_path / "b"
    r = CliRunner().invoke(cli, ["compile", "--model", "resnet18", "--num-classes", "10", "--weights",
                                 str(digits_r18.checkpoint), "--input-size", "32", "--target", "onnxruntime",
                                 "--calib", "digits:train", "--calib-count", "32", "-o", str(out)])
    assert r.exit_code == 0, r.output
    bundle = load_bundle(out)
    expected = resolve_weight_range(get_target("onnxruntime"))
    assert bundle.manifest["quantization"]["weight_range"] == expected.value
    assert bundle.manifest["target"]["weight_range"] == "auto"
    model = onnx.load(str(out / bundle.manifest["graphs"]["int8"]))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".weight_quantized")]
    assert len(weights) == 21  # 20 convs and the fc
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == (63 if expected is WeightRange.REDUCED else 127)
