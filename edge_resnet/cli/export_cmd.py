from __future__ import annotations

import click

from edge_resnet.cli.head_option import head_option
from edge_resnet.cli.options import build_from_options, model_options


@click.command()
@model_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Where to write the .onnx file.")
def export(model_name: str, variant: str | None, weights: str | None, num_classes: int, no_top: bool,
           pooling: str | None, input_size: int, output: str) -> None:
    """Export a model to a self-contained, BN-folded float ONNX graph."""
    from edge_resnet.graph.export import export_float_graph
    from edge_resnet.graph.finite import check_finite
    from edge_resnet.graph.load import save_onnx
    from edge_resnet.outputs import check_output, writing

    check_output(output, "-o", inputs={"--weights": weights})
    model, _ = build_from_options(model_name, variant, weights, num_classes, no_top, pooling)
    fg = export_float_graph(model, input_size)
    check_finite(fg.model, f"the model ({model_name}{', weights ' + weights if weights else ''})", input_size)
    with writing(output):
        save_onnx(fg.model, output)
    click.echo(f"{fg.fold}")
    click.echo(f"wrote {output} (input 'input' [N,3,{input_size},{input_size}], output '{fg.output_name}')")


@click.command("fold-bn")
@click.argument("src", type=click.Path(dir_okay=False))
@head_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True)
def fold_bn(src: str, head: str | None, output: str) -> None:
    """Fold BatchNormalization into the preceding Conv of any ResNet ONNX file (and bring it to the canonical
    form: NCHW, decomposed BatchNorm and Pads merged, logits or features output)."""
    from edge_resnet.graph.finite import nonfinite_tensors
    from edge_resnet.graph.load import load_onnx, save_onnx
    from edge_resnet.graph.prepare import prepare_float_graph
    from edge_resnet.outputs import check_output, writing

    check_output(output, "-o", inputs={"SRC": src})
    fg = prepare_float_graph(load_onnx(src), head=head)
    bad = nonfinite_tensors(fg.model)
    if bad:
        from edge_resnet.errors import GraphError

        raise GraphError(f"{src} has NaN or infinite weights after folding, in {len(bad)} tensor(s): "
                         f"{', '.join(bad[:5])}", "fix the model's weights (BatchNorm statistics saved as NaN?)")
    with writing(output):
        save_onnx(fg.model, output)
    click.echo(f"{fg.canon}")
    click.echo(f"{fg.fold}")
    click.echo(f"wrote {output} ({fg.kind.value}, output '{fg.output_name}')")
