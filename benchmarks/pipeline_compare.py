"""The camera path, decoded frame -> top-1, at batch 1: edge-resnet's runtime against the bare inference call
and against the pipeline a careful OpenVINO user writes, in one interleaved run.

Contenders, per model (ResNet-18 / ResNet-50 at 224, random ImageNet weights: speed does not depend on them),
on the same in-memory 640x480 BGR frames (crops of scikit-learn's sample photos; decoding is outside all of them):

- ``bare``: the bundle's artifact alone, ``runner.infer`` on a ready float32 NCHW tensor (the ceiling);
- ``host-normalised``: ``runtime.load(normalize_in_engine=False)``, PIL resize + numpy normalisation on the host
  (the path before issue 13);
- ``ours``: ``runtime.load`` as shipped, the engine normalises uint8 frames; with the bundle's ``pil`` and with
  its ``opencv`` resampler;
- ``peer`` (OpenVINO only): NNCF's INT8 model of the same float graph + OpenVINO PrePostProcessor (u8 NHWC BGR
  in, mean/scale inside) + cv2.resize of the same centre crop + argmax, LATENCY hint.

Also: the host's per-frame preprocessing alone, and ``stream()`` against a sequential ``classify`` loop.
``--accuracy``: what the resampler changes, on digits:test with the digits-trained ResNet-18 (INT8 ``cpu``
bundles, 32x32, one per resampler), frames at their own 8x8 and scaled up to 64x64.

    python benchmarks/pipeline_compare.py --models resnet18,resnet50 --rounds 7 --json out.json
    python benchmarks/pipeline_compare.py --models none --accuracy
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("pipeline_compare")
TARGETS = ("cpu", "onnxruntime")
SIZE, RESIZE = 224, 256
FRAME_HW = (480, 640)


def photo_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct 640x480 BGR frames: random crops of scikit-learn's two sample photos (427x640)."""
    import cv2
    from sklearn.datasets import load_sample_images

    photos = [np.ascontiguousarray(p[..., ::-1]) for p in load_sample_images().images]  # RGB -> BGR
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        frames.append(cv2.resize(p[y:y + ch, x:x + cw], FRAME_HW[::-1], interpolation=cv2.INTER_AREA))
    return frames


def compile_bundle(out: Path, target: str, model: str, resampler: str, calib: Path) -> Path:
    if (out / "manifest.json").is_file():
        return out
    cmd = [sys.executable, "-c", "from edge_resnet.cli import main; main()", "-q", "compile", "--model", model,
           "--num-classes", "1000", "--input-size", str(SIZE), "--resize", str(RESIZE), "--resampler", resampler,
           "--target", target, "--calib", str(calib), "--calib-count", "64", "-o", str(out)]
    log.info("compiling %s", out)
    subprocess.run(cmd, check=True)
    return out


def nncf_peer(float_onnx: Path, spec: Any, calib_frames: list[np.ndarray], threads: int) -> Callable[[np.ndarray], int]:
    """NNCF's INT8 model + PrePostProcessor + cv2 resize of the centre crop: what a careful OpenVINO user writes."""
    import cv2
    import nncf
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor

    from edge_resnet.host_cpu import host_saturates_int8

    model = ov.convert_model(str(float_onnx))
    data = [spec.apply(f, "bgr")[None] for f in calib_frames]
    # the same weight range as our cpu bundle on this host (7-bit weights where int16 pair sums saturate)
    fix = nncf.OverflowFix.ENABLE if host_saturates_int8() else nncf.OverflowFix.DISABLE
    quantized = nncf.quantize(model, nncf.Dataset(data), subset_size=len(data),
                              advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=fix))
    ppp = PrePostProcessor(quantized)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB) \
        .mean([255 * m for m in spec.mean]).scale([255 * s for s in spec.std])
    compiled = ov.Core().compile_model(ppp.build(), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                             "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    top, left, h, w = spec.crop_box(*FRAME_HW)

    def classify(frame: np.ndarray) -> int:
        crop = cv2.resize(frame[top:top + h, left:left + w], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        return int(np.argmax(request.infer({0: crop[None]})[0]))

    return classify


def per_frame_ms(fn: Callable[[np.ndarray], Any], frames: list[np.ndarray]) -> float:
    t = time.perf_counter()
    for f in frames:
        fn(f)
    return (time.perf_counter() - t) / len(frames) * 1e3


def interleaved(ways: dict[str, Callable[[np.ndarray], Any]], frames: list[np.ndarray], rounds: int) -> dict[str, dict]:
    """Each way over all frames, round robin; per way the median over rounds of the mean ms per frame."""
    for fn in ways.values():
        per_frame_ms(fn, frames[:8])  # warm-up
    samples: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            samples[name].append(per_frame_ms(fn, frames))
    return {k: {"ms": statistics.median(v), "fps": 1e3 / statistics.median(v), "rounds_ms": [round(x, 4) for x in v]}
            for k, v in samples.items()}


def classify_loop(model: Any, frames: list[np.ndarray]) -> int:
    """A sequential loop: one ``classify`` per frame; returns the frames done."""
    for f in frames:
        model.classify(f, top_k=1)
    return len(frames)


def classify_stream(model: Any, frames: list[np.ndarray]) -> int:
    """The same frames through ``stream()``; returns the frames done."""
    with model.stream(frames, top_k=1) as results:
        return sum(1 for _ in results)


def stream_vs_loop(model: Any, frames: list[np.ndarray], rounds: int) -> dict[str, float]:
    def loop() -> int:
        return classify_loop(model, frames)

    def streamed() -> int:
        return classify_stream(model, frames)

    out: dict[str, list[float]] = {"sequential": [], "stream": []}
    streamed()
    for _ in range(rounds):
        for name, fn in (("sequential", loop), ("stream", streamed)):
            t = time.perf_counter()
            n = fn()
            out[name].append(n / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"sequential_fps": med["sequential"], "stream_fps": med["stream"], "ratio": med["stream"] / med["sequential"]}


def run_model(model_name: str, work: Path, frames: list[np.ndarray], rounds: int, threads: int,
              targets: tuple[str, ...] = TARGETS) -> dict[str, Any]:
    import edge_resnet.runtime as rt
    from edge_resnet.bundle import load_bundle

    calib = work / "calib"
    if not calib.is_dir():
        import cv2

        calib.mkdir(parents=True)
        for i, f in enumerate(photo_frames(64, seed=1)):
            cv2.imwrite(str(calib / f"{i:03d}.png"), f)
    bundles = {(t, r): compile_bundle(work / f"{model_name}-{t}-{r}", t, model_name, r, calib)
               for t in TARGETS for r in ("pil", "opencv")}
    report: dict[str, Any] = {}
    for target in targets:
        pil = rt.load(bundles[target, "pil"], threads=threads)
        cv = rt.load(bundles[target, "opencv"], threads=threads)
        host = rt.load(bundles[target, "pil"], threads=threads, normalize_in_engine=False)
        x = pil.preprocess(frames[0])
        bare_runner = pil.runner

        def bare(_frame: np.ndarray, runner: Any = bare_runner, x: np.ndarray = x) -> Any:
            return runner.infer(x)

        ways: dict[str, Callable[[np.ndarray], Any]] = {
            "bare": bare,
            "host-normalised (pil)": lambda f, m=host: m.classify(f, top_k=1),
            "ours (pil)": lambda f, m=pil: m.classify(f, top_k=1),
            "ours (opencv)": lambda f, m=cv: m.classify(f, top_k=1),
        }
        if target == "cpu":
            bundle = load_bundle(bundles[target, "opencv"])
            ways["peer: NNCF + PPP + cv2"] = nncf_peer(bundle.float_model(), bundle.spec,
                                                       photo_frames(64, seed=1), threads)
        res = interleaved(ways, frames, rounds)
        res["host preprocessing only"] = {
            "pil crop": per_frame_ms(lambda f, m=pil: m.prepare_for_engine(f, m.order), frames),
            "opencv crop": per_frame_ms(lambda f, m=cv: m.prepare_for_engine(f, m.order), frames),
            "pil crop + numpy normalisation (before)": per_frame_ms(lambda f, m=host: m.prepare(f, m.order), frames),
        }
        res["stream vs loop (opencv)"] = stream_vs_loop(cv, frames, max(3, rounds // 2))
        report[target] = res
        for m in (pil, cv, host):
            m.close()
    return report


def resampler_accuracy(work: Path) -> dict[str, Any]:
    """digits:test top-1 of INT8 bundles that differ only in their resampler, and their agreement."""
    import edge_resnet.runtime as rt
    from edge_resnet.data import load_digits_split
    from edge_resnet.train import DigitsRecipe, train_digits

    trained = train_digits(DigitsRecipe(model="resnet18"), progress=False)
    x, y = load_digits_split("test")
    out: dict[str, Any] = {"images": len(y)}
    tops: dict[str, dict[str, np.ndarray]] = {}
    for resampler in ("pil", "opencv"):
        bundle = work / f"digits-r18-{resampler}"
        if not (bundle / "manifest.json").is_file():
            subprocess.run([sys.executable, "-c", "from edge_resnet.cli import main; main()", "-q", "compile",
                            "--model", "resnet18", "--num-classes", "10", "--weights", str(trained.checkpoint),
                            "--input-size", "32", "--resize", "32", "--resampler", resampler, "--target", "cpu",
                            "--calib", "digits:train", "--calib-count", "256", "-o", str(bundle)], check=True)
        with rt.load(bundle, order="rgb") as model:
            tops[resampler] = {
                "8x8": np.array([r.index for r in model.classify(list(x), top_k=1)]),
                "64x64": np.array([r.index for r in model.classify([np.repeat(np.repeat(f, 8, 0), 8, 1) for f in x],
                                                                    top_k=1)]),
            }
    for size in ("8x8", "64x64"):
        out[size] = {"top1_pil": float(np.mean(tops["pil"][size] == y)),
                     "top1_opencv": float(np.mean(tops["opencv"][size] == y)),
                     "agreement": float(np.mean(tops["pil"][size] == tops["opencv"][size]))}
    return out


def table(report: dict[str, Any]) -> str:
    lines = []
    for model_name, per_target in report["models"].items():
        for target, res in per_target.items():
            bare = res["bare"]["fps"]
            lines.append(f"\n{model_name} on {target} (batch 1, {SIZE}x{SIZE}, frames {FRAME_HW[1]}x{FRAME_HW[0]})")
            lines.append("| contender | ms/frame | frames/s | x bare | x peer |")
            lines.append("| --- | ---: | ---: | ---: | ---: |")
            peer = res.get("peer: NNCF + PPP + cv2", {}).get("fps")
            for name, r in res.items():
                if "fps" not in r:
                    continue
                vs_peer = f"{r['fps'] / peer:.3f}" if peer else "-"
                lines.append(f"| {name} | {r['ms']:.3f} | {r['fps']:.1f} | {r['fps'] / bare:.3f} | {vs_peer} |")
            pre = res["host preprocessing only"]
            lines.append("host preprocessing ms/frame: " + ", ".join(f"{k} {v:.3f}" for k, v in pre.items()))
            s = res["stream vs loop (opencv)"]
            lines.append(f"stream {s['stream_fps']:.1f} fps vs sequential {s['sequential_fps']:.1f}: {s['ratio']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edge-resnet-pipeline-bench"))
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--accuracy", action="store_true", help="Also measure what the resampler does to digits:test.")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    frames = photo_frames(args.frames)
    report: dict[str, Any] = {"frames": args.frames, "rounds": args.rounds, "threads": args.threads, "models": {}}
    for model_name in [m for m in args.models.split(",") if m != "none"]:
        report["models"][model_name] = run_model(model_name, args.workdir, frames, args.rounds, args.threads,
                                               tuple(args.targets.split(",")))
    print(table(report))
    if args.accuracy:
        report["resampler_accuracy"] = acc = resampler_accuracy(args.workdir)
        for size in ("8x8", "64x64"):
            a = acc[size]
            print(f"digits:test ({acc['images']} images, frames {size}): top-1 pil {a['top1_pil']:.4f}, "
                  f"opencv {a['top1_opencv']:.4f}, agreement {a['agreement']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
