"""report.html: self-contained (no URLs, every image a data: URI), escaped, tolerant of missing sections, written
atomically; and a real report (a real bundle, real bench JSON, real validation figures) rendered by headless
Chromium into a non-blank screenshot."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_digits_bundle

from edge_resnet.cli.app import cli
from edge_resnet.report import html as report_html
from edge_resnet.report import plots, render_report, write_report

CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script>"

# ------------------------------------------------------------------------------------------- page checks


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


URL = re.compile(r"https?://[^\s\"'<>&]+")


def check_self_contained(text: str, manifest: dict[str, Any] | None = None) -> list[bytes]:
    """Assert no scripts, no external resources, no URL but the manifest's own (as escaped text, never in an
    attribute); return the decoded images."""
    page = _Page()
    page.feed(text)
    names = [t for t, _ in page.tags]
    assert not {"script", "link", "iframe", "object", "embed", "base"} & set(names)
    for _, attrs in page.tags:
        for key, value in attrs.items():
            assert not re.match(r"\s*(https?:|//|javascript:)", value or "", re.I), (key, value)
            assert not key.startswith("on"), key  # no event handlers
    allowed = set(URL.findall(json.dumps(manifest or {})))
    assert set(URL.findall(text)) <= allowed
    assert "url(" not in text  # no CSS fetches either
    images = []
    for tag, attrs in page.tags:
        if tag == "img":
            src = attrs.get("src") or ""
            assert src.startswith("data:image/png;base64,"), src[:60]
            data = base64.b64decode(src.split(",", 1)[1], validate=True)
            assert data.startswith(PNG_MAGIC)
            images.append(data)
    return images


# ------------------------------------------------------------------------------------- fixture dicts


def manifest_dict() -> dict[str, Any]:
    return {
        "created": "2026-01-01T00:00:00+00:00",
        "model": {"name": "resnet18", "variant": "v1.5", "num_classes": 3, "output": "logits",
                  "weights": f"/models/{EVIL}.pth"},
        "precision": "int8",
        "target": {"name": "cpu", "description": "docs at https://docs.openvino.ai " + EVIL, "device": "CPU"},
        "artifact": {"backend": "openvino", "precision": "int8",
                     "info": {"device": "CPU", "inference_precision": "f32", "int8_convs": 20, "convs": 20}},
        "calibration": {"source": "digits:train", "count": 128, "method": "percentile", "random": False},
        "quantization": {"kept_float": ["layer4.1.conv2", EVIL]},
    }


def validation_dict() -> dict[str, Any]:
    labels = ["cat", "dog", EVIL]
    return {
        "bundle": "/b", "target": "cpu", "backend": "openvino", "precision": "int8", "device": "CPU",
        "data": {"source": "images/", "count": 30, "labelled": True},
        "reference": {"runtime": "onnxruntime", "precision": "fp32"},
        "metrics": {"agreement_top1": 0.9, "cosine_mean": 0.99, "cosine_min": 0.9, "sqnr_db": 25.0,
                    "float_top1": 0.9, "int8_top1": 0.8667, "float_top5": None, "int8_top5": None,
                    "top1_drop_points": 3.33, "top5_drop_points": None},
        "per_class": [{"class": c, "support": 10, "float_acc": 0.9, "int8_acc": 0.8 + 0.05 * i}
                      for i, c in enumerate(labels)],
        "confusion": {"labels": labels, "float": [[9, 1, 0], [0, 9, 1], [1, 0, 9]],
                      "int8": [[8, 2, 0], [0, 9, 1], [1, 1, 8]]},
        "per_layer": [{"layer": f"layer{i}.conv" if i else EVIL, "op": "Conv", "sqnr_db": 20.0 + i} for i in range(30)],
        "budget": {"max_drop": 1.0, "metric": "top1", "drop": 3.33, "passed": False},
        "kept_float": [EVIL],
    }


def bench_dict() -> dict[str, Any]:
    rng = np.random.default_rng(0)

    def results(scale: float) -> list[dict[str, Any]]:
        out = []
        for b in (1, 8):
            s = np.sort(rng.gamma(4.0, scale * b / 4, 200))
            out.append({"batch": b, "iterations": 200, "throughput_ips": b * 1000 / float(s.mean()), "load_s": 0.3,
                        "latency_ms": {"min": float(s[0]), "mean": float(s.mean()),
                                       **{f"p{q}": float(np.percentile(s, q)) for q in (50, 90, 99)},
                                       "max": float(s[-1])},
                        "samples_ms": rng.permutation(s).tolist()})
        return out

    return {"artifact": EVIL, "backend": "openvino", "precision": "int8", "device": "CPU", "threads": None,
            "mode": "latency",
            "environment": {"cpu": EVIL, "hint": "latency", "threads": 2, "inference_precision": "int8",
                            "versions": {"edge-resnet": "0.1.0"}, "loadavg": [1.0, 2.0, 3.0]},
            "results": results(0.5),
            "compare": {"label": "fp32", "backend": "openvino", "device": "CPU", "note": "fp32 build",
                        "runtime": {"inference_precision": "f32", "config": {"INFERENCE_PRECISION_HINT": "f32"}},
                        "results": results(1.2), "speedup": {"1": 2.4, "8": 2.6}},
            "pipeline": {"stages_ms": {"decode": 0.01, "preprocess": 0.1, "infer": 0.9, "postprocess": 0.05},
                         "fps": 940.0, "frames": 200, "source": "digits:test", "decoded": False, "top1": 0.97,
                         "frame_ms": {"mean": 1.06}}}


# ------------------------------------------------------------------------------------------- pure tests


def test_page_is_self_contained_and_escaped(tmp_path: Path) -> None:
    text = write_report(tmp_path / "r.html", manifest_dict(), validation_dict(), bench_dict()).read_text()
    images = check_self_contained(text, manifest_dict())
    assert len(images) == 4  # confusion, histogram, percentiles, per-layer SQNR
    assert "<script" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "https://docs.openvino.ai" in text  # manifest text, escaped: not a link, nothing fetched
    assert 'href="http' not in text and 'src="http' not in text
    assert "INFERENCE_PRECISION_HINT=f32" in text  # the note on the float baseline
    assert "FAILED" in text and "2.40×" in text and "940.0 FPS" in text


def test_missing_sections_are_stated(tmp_path: Path) -> None:
    text = render_report(manifest_dict(), None, None)
    check_self_contained(text, manifest_dict())
    assert "no validation results" in text and "no benchmark results" in text and "<img" not in text
    v = validation_dict()
    v.update(confusion=None, per_layer=[], per_class=[], budget=None, kept_float=None,
             metrics={"agreement_top1": None, "cosine_mean": 0.99, "cosine_min": 0.9, "sqnr_db": 30.0})
    b = bench_dict()
    b.update(compare=None, pipeline=None)
    text = render_report({"model": {"name": "m"}}, v, b)
    check_self_contained(text)
    assert "no confusion matrix" in text and "no per-layer SQNR" in text and "no pipeline timing" in text
    assert "INFERENCE_PRECISION_HINT" not in text


def test_without_matplotlib_the_tables_remain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "available", lambda: False)
    text = render_report(manifest_dict(), validation_dict(), bench_dict())
    assert "<img" not in text and "pip install &#x27;edge-resnet[report]&#x27;" in text
    assert "Per-class accuracy" in text


def test_worst_layers_are_the_lowest() -> None:
    rows = [{"layer": f"l{i}", "op": "Conv", "sqnr_db": float(s)} for i, s in enumerate([30, 5, float("nan"), 12, 40])]
    assert [r["layer"] for r in plots.worst_layers(rows, 3)] == ["l1", "l3", "l0"]


def test_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report.html"
    out.write_text("old")

    def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(report_html, "render_report", broken)
    with pytest.raises(RuntimeError):
        report_html.write_report(out, manifest_dict())
    assert out.read_text() == "old"
    monkeypatch.undo()
    write_report(out, manifest_dict())
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


# ------------------------------------------------------------------------------- real bundle, real numbers


@pytest.fixture(scope="module")
def cpu_bundle(digits_r18, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digits_bundle(tmp_path_factory.getbasetemp() / "digits-bundles", digits_r18.checkpoint, "cpu")


@pytest.fixture(scope="module")
def real_bench(cpu_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = CliRunner().invoke(cli, ["-q", "bench", str(cpu_bundle), "--batch", "1,8", "--iters", "40", "--warmup",
                                      "5", "--compare", "fp32", "--pipeline", "--frame-count", "50", "--json", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _session(model: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _with_outputs(path: Path, names: list[str]) -> Any:
    import onnx

    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    return model


def _sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    noise = max(float(np.sum((ref.astype(np.float64) - x) ** 2)), 1e-30)
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / noise))


def numpy_validation(bundle_dir: Path) -> dict[str, Any]:
    """The validation schema computed directly: ORT fp32 on model.float.onnx vs the bundle's artifact on
    digits:test; per-layer SQNR of every Conv/Gemm output, Q/DQ graph vs float graph, both in ORT."""
    import onnx

    from edge_resnet.bundle import load_bundle
    from edge_resnet.data import open_dataset

    b = load_bundle(bundle_dir)
    xs, ys = zip(*[(t.x, t.y) for t in open_dataset("digits:test", b.spec).batches(128)], strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    graph = onnx.load(str(b.float_model()), load_external_data=False).graph
    layers = [(n.name, n.op_type, n.output[0]) for n in graph.node if n.op_type in ("Conv", "Gemm")]
    fs = _session(_with_outputs(b.float_model(), [o for *_, o in layers]))
    qs = _session(_with_outputs(b.file(b.manifest["graphs"]["int8"]), [o for *_, o in layers]))
    inp = fs.get_inputs()[0].name
    f_out = dict(zip([o.name for o in fs.get_outputs()], fs.run(None, {inp: x[:64]}), strict=True))
    q_out = dict(zip([o.name for o in qs.get_outputs()], qs.run(None, {inp: x[:64]}), strict=True))
    ref = np.concatenate([fs.run([fs.get_outputs()[0].name], {inp: x[i:i + 128]})[0] for i in range(0, len(x), 128)])
    with b.load_runner() as runner:
        q = np.concatenate([runner.infer(x[i:i + 128]) for i in range(0, len(x), 128)])
    labels, k = b.labels, ref.shape[1]
    cos = (ref * q).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(q, axis=1))
    fp, qp = ref.argmax(1), q.argmax(1)

    def confusion(pred: np.ndarray) -> list[list[int]]:
        c = np.zeros((k, k), np.int64)
        np.add.at(c, (y, pred), 1)
        return c.tolist()

    def top5(out: np.ndarray) -> float:
        return float((np.argsort(-out, 1)[:, :5] == y[:, None]).any(1).mean())

    f1, q1 = float((fp == y).mean()), float((qp == y).mean())
    drop = 100 * (f1 - q1)
    return {"bundle": str(b.path), "target": b.profile.name, "backend": b.artifact.backend.value,
            "precision": b.artifact.precision.value, "device": b.profile.device,
            "data": {"source": "digits:test", "count": int(len(y)), "labelled": True},
            "reference": {"runtime": "onnxruntime", "precision": "fp32"},
            "metrics": {"agreement_top1": float((fp == qp).mean()), "cosine_mean": float(cos.mean()),
                        "cosine_min": float(cos.min()), "sqnr_db": _sqnr(ref, q), "float_top1": f1, "int8_top1": q1,
                        "float_top5": top5(ref), "int8_top5": top5(q), "top1_drop_points": drop,
                        "top5_drop_points": 100 * (top5(ref) - top5(q))},
            "per_class": [{"class": labels[c], "support": int((y == c).sum()), "float_acc": float((fp[y == c] == c).mean()),
                           "int8_acc": float((qp[y == c] == c).mean())} for c in range(k)],
            "confusion": {"labels": labels, "float": confusion(fp), "int8": confusion(qp)},
            "per_layer": [{"layer": n, "op": op, "sqnr_db": _sqnr(f_out[o], q_out[o])} for n, op, o in layers],
            "budget": {"max_drop": 1.0, "metric": "top1", "drop": drop, "passed": drop <= 1.0},
            "kept_float": b.manifest.get("quantization", {}).get("kept_float", [])}


def validate_module_validation(bundle_dir: Path) -> dict[str, Any]:
    """The real ``edge_resnet.validate`` output, when that module is installed."""
    validate = pytest.importorskip("edge_resnet.validate")
    from edge_resnet.bundle import load_bundle
    from edge_resnet.data import open_dataset

    bundle = load_bundle(bundle_dir)
    return validate.validate_bundle(bundle, open_dataset("digits:test", bundle.spec), max_drop=1.0,
                                    progress=False).to_json()


VALIDATIONS = {"numpy": numpy_validation, "validate": validate_module_validation}


def screenshot(report: Path, png: Path) -> Path:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium chromium-driver (the CI script does)")
    png.parent.mkdir(parents=True, exist_ok=True)
    profile = png.parent / f"chromium-profile-{png.stem}"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,2400", report.absolute().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    return png


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(VALIDATIONS))
def test_real_report_renders_in_chromium(source: str, cpu_bundle: Path, real_bench: Path,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    from PIL import Image

    validation = VALIDATIONS[source](cpu_bundle)
    assert validation["confusion"] and validation["per_layer"] and validation["metrics"]["int8_top1"] > 0.85
    out_dir = tmp_path_factory.getbasetemp() / "report"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"validation-{source}.json").write_text(json.dumps(validation))
    result = CliRunner().invoke(cli, ["-q", "report", str(cpu_bundle), "--validation",
                                      str(out_dir / f"validation-{source}.json"), "--bench", str(real_bench),
                                      "-o", str(out_dir / f"report-{source}.html")])
    assert result.exit_code == 0, result.output
    text = (out_dir / f"report-{source}.html").read_text()
    assert len(check_self_contained(text, json.loads((cpu_bundle / "manifest.json").read_text()))) == 4
    bench = json.loads(real_bench.read_text())
    assert f"{bench['compare']['speedup']['8']:.2f}×" in text and "INFERENCE_PRECISION_HINT=f32" in text
    assert "layer4" in text  # per-layer names from the real graph

    png = screenshot(out_dir / f"report-{source}.html", out_dir / f"report-{source}.png")
    print(f"\nreport screenshot: {png}")
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2400)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200  # text, tables and plots, not a blank page
    most = max(count for count, _ in colors)
    assert most < 0.9 * image.size[0] * image.size[1]
    top = image.crop((0, 0, 1280, 600)).convert("L")
    assert np.asarray(top).std() > 10  # the summary at the top is drawn
