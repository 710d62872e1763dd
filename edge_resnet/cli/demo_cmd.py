from __future__ import annotations

import click


@click.command()
@click.option("-o", "--output", type=click.Path(file_okay=False), default="edge-resnet-demo", show_default=True,
              help="Directory for the bundles, reports and summary.")
@click.option("--calib-count", type=click.IntRange(min=16), default=512, show_default=True)
@click.option("--bench-seconds", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Benchmark time per batch size and precision.")
@click.pass_context
def demo(ctx: click.Context, output: str, calib_count: int, bench_seconds: float) -> None:
    """The whole pipeline on built-in real data (scikit-learn's digits): train, compile, validate, bench."""
    import logging

    from edge_resnet.demo import format_summary, run_demo

    if logging.getLogger().level >= logging.INFO and not ctx.find_root().params.get("verbose"):
        logging.getLogger("edge_resnet").setLevel(logging.WARNING)  # step lines instead; -v for the details
    result = run_demo(output, calib_count=calib_count, bench_seconds=bench_seconds, say=click.echo)
    click.echo(format_summary(result))
