from __future__ import annotations

import json
from pathlib import Path

import click

from edge_resnet.cli.data_options import make_spec, preprocess_options
from edge_resnet.cli.head_option import head_option
from edge_resnet.cli.options import WEIGHTS_HELP, finite_points, ray_options


@click.command("compile")
@click.option("--model", "model_name", default=None,
              help="Registered model name; default: read from a Keras --weights file, else resnet50.")
@click.option("--variant", type=click.Choice(["v1", "v1.5", "v2"]), default=None)
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help=WEIGHTS_HELP)
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None, help="Any ResNet as an ONNX file instead of --model.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="Classes of the classifier; default: a Keras file's, else 1000.")
@head_option
@click.option("--no-top", is_flag=True, help="Drop the classifier head (embedding or feature-map engines).")
@click.option("--pooling", type=click.Choice(["avg", "max", "none"]), default=None)
@click.option("--target", default="cpu", show_default=True, help="Target profile name or .toml path (see `edge-resnet targets`).")
@click.option("--int8", "precision", flag_value="int8", default=True, help="INT8 from calibration (default).")
@click.option("--fp16", "precision", flag_value="fp16", help="FP16 build (a baseline).")
@click.option("--fp32", "precision", flag_value="fp32", help="FP32 build (a baseline).")
@click.option("--calib", default=None, help="Calibration data (required for --int8); 'random' for latency-only builds.")
@click.option("--calib-count", type=click.IntRange(min=1), default=None,
              help="Images to calibrate on (default: the recipe's, else 512).")
@click.option("--seed", type=int, default=None, help="Seed of the calibration sample (default: the recipe's, else 0).")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy", "mse"]), default=None)
@click.option("--percentile", type=click.FloatRange(50, 100), default=None)
@click.option("--bias-correction/--no-bias-correction", default=None,
              help="Correct each layer's mean output shift from the calibration set (default: as measured in benchmarks/).")
@click.option("--exclude", multiple=True, help="Keep a layer float (name or op type); repeatable.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Class names, one per line (default: class folders of --calib when they match).")
@preprocess_options
@click.option("--max-drop", type=float, default=None, callback=finite_points,
              help="Drift budget in points (top-1 drop on labelled --val data, else disagreement): validate after "
                   "building and keep the most sensitive layers float until it is met (exit 3 if it cannot be).")
@click.option("--val", "val_source", default=None, help="Validation data for --max-drop (e.g. digits:test).")
@click.option("--val-count", type=click.IntRange(min=1), default=None, help="Validate on a sample of N images.")
@click.option("--max-rebuilds", type=click.IntRange(min=0), default=8, show_default=True,
              help="With --max-drop: rebuilds with more layers kept float before giving up.")
@click.option("--force", is_flag=True,
              help="Replace the output directory if it is an edge-resnet bundle (nothing else is ever replaced).")
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Bundle directory to write (default: MODEL-TARGET here, e.g. resnet50-jetson).")
@ray_options
def compile_(model_name, variant, weights, onnx_path, num_classes, head, no_top, pooling, target, precision, calib,
             calib_count, seed, method, percentile, bias_correction, exclude, labels_file, input_size, resize, mean, std,
             channel_order, resampler, max_drop, val_source, val_count, max_rebuilds, force, output, ray_cluster=None,
             ray_actors=None) -> None:
    """Compile a ResNet into a deployment bundle for a target (INT8 by default)."""
    from edge_resnet.budget import DriftBudget, compile_with_budget
    from edge_resnet.compile import CompileOptions, ModelSource, compile_bundle
    from edge_resnet.quant.calibrators import CalibrationMethod
    from edge_resnet.quant.ptq import DEFAULT_BIAS_CORRECTION, DEFAULT_METHOD, CalibrationOptions
    from edge_resnet.types import Precision

    if (max_drop is None) != (val_source is None):
        raise click.UsageError("--max-drop and --val go together: the budget is checked on the --val data")
    from edge_resnet.distributed.cluster import check_ray

    ray = check_ray(ray_cluster, ray_actors)  # the calibration pass; before any long work

    if onnx_path is None:
        from edge_resnet.models.from_weights import (
            check_head_options,
            checkpoint_preprocessing,
            resolve_model,
        )

        check_head_options(no_top, pooling)
        choice = resolve_model(model_name, variant, weights, num_classes, include_top=not no_top)
        model_name, variant, num_classes = choice.name, choice.variant, choice.num_classes
    source = ModelSource(model_name, variant, weights, num_classes or 1000, not no_top, pooling, onnx_path, head)
    # without --input-size the size is the model's (an --onnx graph's own) and its preprocessing a Keras
    # checkpoint's own, else ImageNet's: the other options apply over it
    base = checkpoint_preprocessing(weights, input_size) if weights and input_size is not None and onnx_path is None else None
    spec = make_spec(input_size, resize, mean, std, channel_order, base=base, resampler=resampler) if input_size is not None else None
    overrides = {k: v for k, v in (("resize", resize), ("mean", mean), ("std", std),
                                   ("channel_order", channel_order), ("resampler", resampler)) if v is not None}
    labels = read_labels(labels_file) if labels_file else None
    options = CompileOptions(
        target=target, precision=Precision(precision), calib=calib, calib_count=calib_count, seed=seed,
        calibration=CalibrationOptions(CalibrationMethod(method) if method else DEFAULT_METHOD, percentile,
                                       bias_correction=DEFAULT_BIAS_CORRECTION if bias_correction is None else bias_correction),
        exclude=tuple(exclude), spec=spec, preprocess_overrides=tuple(overrides.items()) if spec is None else (),
        labels=labels, force=force, extra_inputs=(("--labels", labels_file),) if labels_file else (), ray=ray)
    if output is None:  # the one-line command of the README names no output
        output = f"{Path(onnx_path).stem if onnx_path else model_name}-{Path(target).stem}"
    if max_drop is not None:
        budget = DriftBudget(max_drop, val_source, val_count, max_rebuilds)
        result = compile_with_budget(source, options, budget, output, input_size=input_size or 224)
    else:
        result = compile_bundle(source, options, output, input_size=input_size or 224)
    b = result.bundle
    art = b.artifact
    if onnx_path:
        click.echo(f"{result.float_graph.canon}")
    click.echo(f"{result.float_graph.fold}")
    click.echo(f"head: {result.float_graph.kind.value} (output '{result.float_graph.output_name}')")
    if result.report is not None:
        click.echo(f"{result.report}")
    click.echo(f"target {b.profile.name} ({art.backend.value}, {b.profile.device}), {art.precision.value}")
    if not art.runnable:
        click.echo(f"engine not built here: {art.info.get('how_to_build')}")
    if result.validation is not None:
        from edge_resnet.cli.validate_cmd import format_table

        click.echo("")
        for line in format_table(result.validation):
            click.echo(line)
        click.echo("")
    click.echo(f"wrote bundle {b.path}:")
    for name in sorted(b.manifest["files"]):
        size = b.file(name).stat().st_size
        click.echo(f"  {name:<28} {size / 1e6:8.2f} MB")


def read_labels(path: str) -> tuple[str, ...]:
    """Class names, one per line (trailing blank lines dropped)."""
    from edge_resnet.errors import DataError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"--labels {path} is not a UTF-8 text file", "write one class name per line") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"--labels {path} is empty", "write one class name per line")
    return tuple(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True)
def targets(as_json: bool) -> None:
    """List the shipped target profiles."""
    from edge_resnet.targets import shipped_profiles

    profiles = shipped_profiles()
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in profiles.values()], indent=2))
        return
    click.echo(f"{'name':<18}{'backend':<13}{'device':<9}{'format':<7}{'aliases':<16}description")
    for p in profiles.values():
        click.echo(f"{p.name:<18}{p.backend.value:<13}{p.device:<9}{p.activation_format.value:<7}"
                   f"{','.join(p.aliases):<16}{p.description}")
