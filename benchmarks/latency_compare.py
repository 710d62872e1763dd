"""Latency of edge-resnet's INT8 artifacts against the peers' artifacts of the same model, in one run:

- OpenVINO CPU: our `cpu` bundle (IR from the U8S8 Q/DQ graph) vs NNCF's native OpenVINO flow
  (openvino.convert_model -> nncf.quantize -> compile), and the FP32 IR (f32 precision hint).
  NNCF's overflow fix matches our weight range on this host: `OverflowFix.ENABLE` (7-bit weights
  in every layer) where our `cpu` target resolves to reduced weights (x86 without VNNI),
  `OverflowFix.DISABLE` where it resolves to full range;
- ONNX Runtime CPU: our `onnxruntime` bundle (U8S8 Q/DQ) vs ONNX Runtime's own quantize_static
  (QDQ, per-channel, U8S8), and the float graph.

Batch 1 and 8, 2 threads, latency hint, warm-up excluded. Contenders run in interleaved blocks
(round robin) so noise from the shared machine lands on all of them; the table gives the median
over blocks of each block's median latency, and the ratio to each peer.

    python benchmarks/latency_compare.py --model resnet50 --input-size 224 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

Infer = Callable[[np.ndarray], object]


def _ort_session(path: str, threads: int) -> Infer:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _ov_compiled(model, threads: int, f32: bool = False) -> Infer:
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def nncf_overflow_fix():
    """NNCF's OverflowFix equivalent to the weight range our `cpu` target uses on this host."""
    from nncf.quantization.advanced_parameters import OverflowFix

    from edge_resnet.targets import get_target, resolve_weight_range
    from edge_resnet.types import WeightRange

    reduced = resolve_weight_range(get_target("cpu")) is WeightRange.REDUCED
    return OverflowFix.ENABLE if reduced else OverflowFix.DISABLE


def nncf_quantize(ov_float, calib: np.ndarray):
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    return nncf.quantize(ov_float, nncf.Dataset([calib[i: i + 1] for i in range(len(calib))]), subset_size=len(calib),
                         advanced_parameters=AdvancedQuantizationParameters(overflow_fix=nncf_overflow_fix()))


def build_bundles(model_name: str, input_size: int, calib_count: int, work: Path, targets: tuple[str, ...]):
    """Our bundles of a digits-trained model, and the calibration images they used."""
    from edge_resnet.compile import CompileOptions, ModelSource, compile_bundle
    from edge_resnet.data import PreprocessSpec, open_dataset
    from edge_resnet.train import DigitsRecipe, train_digits

    trained = train_digits(DigitsRecipe(model=model_name))
    source = ModelSource(model_name, weights=str(trained.checkpoint), num_classes=10)
    spec = PreprocessSpec(input_size=input_size, resize=input_size)
    bundles = {}
    for target in targets:
        opts = CompileOptions(target=target, calib="digits:train", calib_count=calib_count, spec=spec, force=True, progress=False)
        bundles[target] = compile_bundle(source, opts, work / target, input_size=input_size).bundle
    calib = np.concatenate([b.x for b in open_dataset("digits:train", spec, count=calib_count).batches(32)])
    return bundles, calib


def build_openvino_pair(model_name: str, input_size: int, calib_count: int, work: Path) -> tuple[Path, Path]:
    """(our `cpu` bundle's IR, NNCF's IR saved as work/nncf.xml), for per-layer comparison."""
    import openvino as ov

    bundles, calib = build_bundles(model_name, input_size, calib_count, work, ("cpu",))
    bundle = bundles["cpu"]
    ov.save_model(nncf_quantize(ov.convert_model(str(bundle.float_model())), calib), str(work / "nncf.xml"),
                  compress_to_fp16=False)
    return bundle.path / bundle.artifact.files["xml"], work / "nncf.xml"


def build_openvino_only(model_name: str, input_size: int, calib_count: int, threads: int, work: Path) -> dict[str, Infer]:
    ours_xml, nncf_xml = build_openvino_pair(model_name, input_size, calib_count, work)
    return {"ours-openvino-int8": _ov_compiled(str(ours_xml), threads), "nncf-openvino-int8": _ov_compiled(str(nncf_xml), threads)}


def build(model_name: str, input_size: int, calib_count: int, threads: int, work: Path) -> dict[str, Infer]:
    import openvino as ov
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    bundles, calib = build_bundles(model_name, input_size, calib_count, work, ("cpu", "onnxruntime"))
    float_onnx = str(bundles["cpu"].float_model())

    # NNCF, its native OpenVINO flow
    ov_float = ov.convert_model(float_onnx)
    nncf_model = nncf_quantize(ov_float, calib)

    # ONNX Runtime's quantize_static, U8S8 QDQ per channel
    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib[i: i + 32] for i in range(0, len(calib), 32))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b}

    pre, ort_q = str(work / "pre.onnx"), str(work / "ort_qs.onnx")
    quant_pre_process(float_onnx, pre)
    quantize_static(pre, ort_q, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)

    cpu_runner = bundles["cpu"].load_runner(threads=threads, hint="latency")
    ort_runner = bundles["onnxruntime"].load_runner(threads=threads)
    return {
        "ours-openvino-int8": cpu_runner.infer,
        "nncf-openvino-int8": _ov_compiled(nncf_model, threads),
        "openvino-fp32": _ov_compiled(ov_float, threads, f32=True),
        "ours-ort-int8": ort_runner.infer,
        "ort-quantize_static-int8": _ort_session(ort_q, threads),
        "ort-fp32": _ort_session(float_onnx, threads),
    }


def measure(contenders: dict[str, Infer], batch: int, input_size: int, blocks: int, per_block: int, warmup: int) -> dict[str, dict]:
    x = np.random.default_rng(0).standard_normal((batch, 3, input_size, input_size)).astype(np.float32)
    for fn in contenders.values():
        for _ in range(warmup):
            fn(x)
    medians: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(blocks):
        for name, fn in contenders.items():
            ts = []
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn(x)
                ts.append((time.perf_counter() - t0) * 1e3)
            medians[name].append(statistics.median(ts))
    return {k: {"median_ms": statistics.median(v), "throughput_ips": batch * 1e3 / statistics.median(v), "blocks_ms": v}
            for k, v in medians.items()}


PAIRS = [("ours-openvino-int8", "nncf-openvino-int8"), ("ours-ort-int8", "ort-quantize_static-int8"),
         ("ours-openvino-int8", "openvino-fp32"), ("ours-ort-int8", "ort-fp32")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--calib-count", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--per-block", type=int, default=10)
    ap.add_argument("--json", default=None)
    ap.add_argument("--openvino-only", action="store_true",
                    help="only our OpenVINO IR vs NNCF's (both compiled the same way here; no ORT, no FP32)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="latcompare-"))
    builder = build_openvino_only if args.openvino_only else build
    contenders = builder(args.model, args.input_size, args.calib_count, args.threads, work)
    report = {"model": args.model, "input_size": args.input_size, "threads": args.threads, "batches": {}}
    for batch in (1, 8):
        res = measure(contenders, batch, args.input_size, args.blocks, args.per_block, warmup=5)
        report["batches"][str(batch)] = res
        print(f"\n{args.model} @ {args.input_size}, batch {batch}, {args.threads} threads "
              f"(median of {args.blocks} interleaved blocks x {args.per_block})")
        for name, r in res.items():
            print(f"  {name:<26}{r['median_ms']:9.2f} ms{r['throughput_ips']:9.1f} img/s")
        for ours, peer in (p for p in PAIRS if p[0] in res and p[1] in res):
            ratio = res[ours]["median_ms"] / res[peer]["median_ms"]
            print(f"  {ours} / {peer}: {ratio:.3f}x latency")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
