from __future__ import annotations

import importlib
import logging
import sys
import traceback
from typing import Any

import click

from edge_resnet.errors import EdgeResnetError

log = logging.getLogger("edge_resnet")

# command name -> "module:function"; imported only when the command runs or help lists it
_COMMANDS: dict[str, str] = {
    "models": "edge_resnet.cli.models_cmd:models",
    "export": "edge_resnet.cli.export_cmd:export",
    "fold-bn": "edge_resnet.cli.export_cmd:fold_bn",
    "quantize": "edge_resnet.cli.quantize_cmd:quantize",
    "compile": "edge_resnet.cli.compile_cmd:compile_",
    "targets": "edge_resnet.cli.compile_cmd:targets",
    "validate": "edge_resnet.cli.validate_cmd:validate",
    "bench": "edge_resnet.cli.bench_cmd:bench",
    "report": "edge_resnet.cli.report_cmd:report",
    "run": "edge_resnet.cli.run_cmd:run",
    "demo": "edge_resnet.cli.demo_cmd:demo",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on use, and whose errors are one clear line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeResnetError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="yellow", err=True)
            sys.exit(130)
        except (OSError, MemoryError) as exc:  # a file system or the machine said no, past the explicit checks
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.secho(f"error: {_system_error(exc)}", fg="red", err=True)
            sys.exit(1)


def _system_error(exc: BaseException) -> EdgeResnetError:
    from edge_resnet.outputs import WRITE_ERRNOS, write_error

    if isinstance(exc, MemoryError):
        return EdgeResnetError("out of memory", "use smaller inputs (--input-size, --calib-count, --batch-size) or a "
                                                "machine with more memory")
    assert isinstance(exc, OSError)
    if exc.errno in WRITE_ERRNOS:
        return write_error(exc, str(exc.filename or "a file"))
    where = f" ({exc.filename})" if exc.filename else ""
    return EdgeResnetError(f"{exc.strerror or exc}{where}", "check the path and its permissions (--debug shows where)")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="edge-resnet")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """Compile a float ResNet into a validated INT8 engine for edge hardware.

    \b
    edge-resnet demo                       # the whole pipeline on built-in real data
    edge-resnet compile --model resnet50 --weights ckpt.pth --calib images/ --target jetson --int8
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s" if verbose < 2 else "%(levelname)s %(name)s: %(message)s")
    # third-party libraries stay quiet unless -vv
    for noisy in ("torch", "onnxscript", "onnx_ir", "nncf", "openvino", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="edge-resnet")
