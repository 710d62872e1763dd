from __future__ import annotations

import time

import click

from edge_resnet.cli.data_options import make_spec, preprocess_options
from edge_resnet.cli.head_option import head_option
from edge_resnet.cli.options import ray_options


@click.command()
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("--calib", required=True, help="Calibration data: image folder, list .txt, .npy/.npz, video, digits:train.")
@click.option("--calib-count", type=click.IntRange(min=1), default=None,
              help="Images to calibrate on (default: the recipe's, else 512).")
@click.option("--seed", type=int, default=None, help="Seed of the calibration sample (default: the recipe's, else 0).")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy", "mse"]), default=None,
              help="Calibrator (default: the best measured in benchmarks/).")
@click.option("--percentile", type=click.FloatRange(50, 100), default=None, help="For --method percentile (default 99.99).")
@click.option("--bias-correction/--no-bias-correction", default=None,
              help="Correct each layer's mean output shift from the calibration set (default: as measured in benchmarks/).")
@click.option("--format", "fmt", type=click.Choice(["s8s8", "u8s8"]), default="s8s8", show_default=True,
              help="s8s8: TensorRT / OpenVINO; u8s8: ONNX Runtime on x86.")
@click.option("--weight-range", type=click.Choice(["full", "reduced", "auto"]), default=None,
              help="full: int8 weights in [-127, 127]; reduced: 7 bits, for x86 CPUs without VNNI, whose 8-bit "
                   "products saturate (OpenVINO, ONNX Runtime); auto: reduced when this host is such a CPU. "
                   "Default: auto for u8s8 (the x86 CPU format), full for s8s8.")
@click.option("--exclude", multiple=True, help="Keep a layer float, by name (conv1, fc, layer4.2.conv3) or op type (Gemm).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--scales", "scales_path", type=click.Path(dir_okay=False), default=None, help="Also write per-tensor scales (JSON).")
@head_option
@preprocess_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True)
@ray_options
def quantize(model_path: str, calib: str, calib_count: int, seed: int, method: str | None, percentile: float | None,
             bias_correction: bool | None, fmt: str, weight_range: str | None, exclude: tuple[str, ...], batch_size: int,
             scales_path: str | None, head: str | None, input_size: int | None, resize: int | None,
             mean: tuple | None, std: tuple | None, channel_order: str | None, resampler: str | None, output: str,
             ray_cluster: str | None = None, ray_actors: int | None = None) -> None:
    """Calibrate a float ONNX ResNet and write its INT8 Q/DQ graph."""
    from edge_resnet.data import open_dataset
    from edge_resnet.data.recipes import calibration_sample
    from edge_resnet.distributed.cluster import check_ray
    from edge_resnet.graph.load import load_onnx, require_image_input, save_onnx
    from edge_resnet.graph.prepare import prepare_float_graph
    from edge_resnet.outputs import atomic_path, check_distinct, check_output, writing
    from edge_resnet.quant.calibrators import CalibrationMethod
    from edge_resnet.quant.exclude import check_exclude
    from edge_resnet.quant.ptq import DEFAULT_BIAS_CORRECTION, DEFAULT_METHOD, CalibrationOptions
    from edge_resnet.quant.ptq import quantize as run
    from edge_resnet.quant.qdq import QuantConfig
    from edge_resnet.targets import resolve_weight_range_choice
    from edge_resnet.types import ActivationFormat, WeightRange

    ray = check_ray(ray_cluster, ray_actors)
    start = time.perf_counter()
    inputs = {"MODEL.onnx": model_path, "--calib": calib}
    check_distinct({"-o": output, "--scales": scales_path})
    check_output(output, "-o", inputs=inputs)
    check_output(scales_path, "--scales", inputs=inputs)
    fg = prepare_float_graph(load_onnx(model_path), head=head)
    info = require_image_input(fg.model, model_path)
    check_exclude(fg.model, exclude)
    spec = make_spec(input_size or info.height, resize, mean, std, channel_order, resampler=resampler)
    sample = calibration_sample(calib, calib_count, seed)
    data = open_dataset(sample.source, spec, count=sample.count, seed=sample.seed, stride=sample.stride)
    options = CalibrationOptions(CalibrationMethod(method) if method else DEFAULT_METHOD, percentile, batch_size,
                                 bias_correction=DEFAULT_BIAS_CORRECTION if bias_correction is None else bias_correction)
    fmt_enum = ActivationFormat(fmt)
    default_range = WeightRange.AUTO if fmt_enum is ActivationFormat.U8S8 else WeightRange.FULL
    wr = resolve_weight_range_choice(WeightRange(weight_range) if weight_range else default_range)
    config = QuantConfig(fmt_enum, tuple(exclude), wr)
    if ray is not None:
        from edge_resnet.distributed.calibrate import collect_statistics_on_ray
        from edge_resnet.quant.ptq import quantize_graph
        from edge_resnet.quant.qdq import required_tensors

        stats = collect_statistics_on_ray(fg.model, required_tensors(fg.model, config), data, batch_size, ray,
                                          bias_correction=options.bias_correction)
        qg = quantize_graph(fg.model, stats, config, options)
    else:
        qg = run(fg.model, data, config, options)
    with writing(output):
        save_onnx(qg.model, output)
    if scales_path:
        with atomic_path(scales_path) as tmp:
            qg.save_scales(tmp)
    q = qg.report.quantized
    click.echo(f"{fg.canon}")
    click.echo(f"{fg.fold}")
    click.echo(f"quantized {q['Conv']} convs, {q['Add']} residual adds, {q['Gemm']} gemm, "
               f"{q['MaxPool'] + q['GlobalAveragePool'] + q['GlobalMaxPool']} pools in {fmt} "
               f"with {options.method.value} on {len(data)} images, {wr.value}-range weights")
    if qg.bias_correction is not None:
        click.echo(f"bias correction: {qg.bias_correction['corrected']} layers corrected")
    if qg.report.kept_float:
        click.echo(f"kept float: {', '.join(qg.report.kept_float)}")
    click.echo(f"time: calibration {qg.timings['calibration_s']:.1f} s, total {time.perf_counter() - start:.1f} s")
    click.echo(f"wrote {output}")
