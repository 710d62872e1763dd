"""``--head``: what the model's output is, when the graph's structure should not decide it."""

from __future__ import annotations

import click

HEAD_HELP = ("What the output is: classifier (logits), embedding (N x D) or features (N x C x H x W). "
             "Default: read from the graph (a dense head with a 2-D output is a classifier, whatever its name).")

head_option = click.option("--head", type=click.Choice(["classifier", "embedding", "features"]), default=None,
                           help=HEAD_HELP)
