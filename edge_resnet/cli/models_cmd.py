from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--input-size", type=click.IntRange(min=32), default=224, show_default=True,
              help="Input size the GMACs are counted at.")
def models(as_json: bool, input_size: int) -> None:
    """List every registered model: name, variant, parameters, GMACs, the Keras network it loads."""
    from edge_resnet.models import MODELS, count_macs, count_parameters

    rows = []
    for name, spec in MODELS.items():
        m = spec.build()
        rows.append({"name": name, "depth": spec.depth, "variant": spec.variant.value,
                     "parameters": count_parameters(m), "gmacs": round(count_macs(m, input_size) / 1e9, 3),
                     "keras": spec.keras_name})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<14}{'variant':<9}{'parameters':>13}{'GMACs@' + str(input_size):>12}  keras checkpoints")
    for r in rows:
        click.echo(f"{r['name']:<14}{r['variant']:<9}{r['parameters']:>13,}{r['gmacs']:>12.3f}  {r['keras'] or ''}")
