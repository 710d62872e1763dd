"""The ``edge-resnet`` command line. Subcommands live in one module each and are registered in
``_COMMANDS``; heavy imports happen inside the commands so ``--help`` is fast and needs no extras."""

from edge_resnet.cli.app import main

__all__ = ["main"]
