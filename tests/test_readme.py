"""README.md and calibration/README.md cannot lie: every command line they show is run here.

Each command the READMEs show (fenced and indented code blocks, and every inline ``edge-resnet ...``
span, e.g. the command table) must have an entry in ``RUNS``: the same command made concrete, on
small data and fast options where the README's defaults are slow (a ResNet-18 trained on digits at
32x32 instead of an ImageNet ResNet-50). The concrete command must be an instance of the README's
(same subcommand; every option it passes is one the README line shows, or a speed option from
``FAST``), and it runs in a workspace holding the files the README names (``ckpt.pth``,
``images/``, ``val/``, ``video.mp4``, ``model.onnx`` ...). A command shown in a README but missing
here fails ``test_every_readme_command_is_run``.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import tomllib
from click.testing import CliRunner

from edge_resnet.cli.app import cli

ROOT = Path(__file__).resolve().parents[1]
READMES = (ROOT / "README.md", ROOT / "calibration" / "README.md")
FAST = {"--input-size", "--resize", "--calib-count", "--num-classes", "--count", "--time", "--iters", "--warmup",
        "--frame-count", "--max-frames", "--bench-seconds", "--no-per-layer", "--no-progress", "--val-count",
        "--frames", "--labels"}
SIZE = "--input-size 32 --resize 32"


@dataclass(frozen=True)
class Run:
    args: str  # the concrete command line after `edge-resnet`
    needs: tuple[str, ...] = ()  # commands (keys of RUNS) whose outputs this one reads
    exit_code: int = 0
    same_as: str | None = None  # a README line that is this other one with its defaults spelled out


DIGITS = f"--num-classes 10 {SIZE} --calib-count 16"
RUNS: dict[str, Run] = {
    # the headline: the product in one line
    "edge-resnet compile --model resnet50 --weights ckpt.pth --calib images/ --target jetson --int8":
        Run(f"compile --model resnet18 --weights ckpt.pth --calib images/ --target jetson --int8 {DIGITS}"),
    "edge-resnet demo -o edge-resnet-demo":
        Run("demo -o edge-resnet-demo --calib-count 16 --bench-seconds 0.2"),
    "edge-resnet demo": Run("demo --calib-count 16 --bench-seconds 0.2", same_as="edge-resnet demo -o edge-resnet-demo"),
    "edge-resnet demo [-o DIR]": Run("demo -o edge-resnet-demo --calib-count 16 --bench-seconds 0.2"),  # the same run
    "edge-resnet compile --model resnet50 [--weights ckpt.pth | --onnx model.onnx [--head classifier|embedding|features]] "
    "--target jetson --int8 --calib images/ [--calib-count 512] [--method percentile] [--max-drop 0.5 --val val/] -o out/":
        Run(f"compile --model resnet18 --weights ckpt.pth --target cpu --int8 --calib images/ {DIGITS} "
            "--method percentile --max-drop 5 --val val/ -o out/"),
    "edge-resnet validate BUNDLE --data SRC [--json v.json] [--report r.html] [--max-drop P]":
        Run("validate edge-resnet-demo/cpu --data val/ --json v.json --report r.html --max-drop 5",
            needs=("edge-resnet demo -o edge-resnet-demo",)),
    "edge-resnet bench BUNDLE [--batch 1,8] [--compare fp32] [--pipeline] [--json b.json]":
        Run("bench edge-resnet-demo/cpu --batch 1,8 --compare fp32 --pipeline --frames images/ --json b.json "
            "--time 0.2 --warmup 2 --frame-count 8", needs=("edge-resnet demo -o edge-resnet-demo",)),
    "edge-resnet report BUNDLE --validation v.json --bench b.json -o report.html":
        Run("report edge-resnet-demo/cpu --validation v.json --bench b.json -o report.html",
            needs=("edge-resnet validate BUNDLE --data SRC [--json v.json] [--report r.html] [--max-drop P]",
                   "edge-resnet bench BUNDLE [--batch 1,8] [--compare fp32] [--pipeline] [--json b.json]")),
    "edge-resnet run BUNDLE --source video.mp4|camera:0|rtsp://...|folder/ [--jsonl out.jsonl] [--save out.mp4]":
        Run("run edge-resnet-demo/cpu --source video.mp4 --jsonl out.jsonl --save out.mp4",
            needs=("edge-resnet demo -o edge-resnet-demo",)),
    "edge-resnet quantize model.onnx --calib SRC [--format s8s8|u8s8] [--exclude conv1] -o model.int8.onnx":
        Run("quantize model.onnx --calib images/ --calib-count 16 --format u8s8 --exclude conv1 -o model.int8.onnx"),
    "edge-resnet export --model resnet50 [--variant v1|v1.5|v2] [--no-top --pooling avg] -o model.onnx":
        Run("export --model resnet18 --variant v1 --no-top --pooling avg --input-size 32 -o exported.onnx"),
    # built from a real Keras model by tests/test_keras_checkpoints.py (Keras is the reference there);
    # here the same command on a Keras file the fixture below writes with Keras itself
    "edge-resnet export --weights resnet50v2.keras [--input-size 224] -o model.onnx":
        Run("export --weights resnet50v2.keras --input-size 32 -o keras.onnx"),
    "edge-resnet fold-bn in.onnx [--head classifier|embedding|features] -o out.onnx":
        Run("fold-bn in.onnx --head classifier -o out.onnx"),
    # the prose of the Jetson section names what build_engine.sh runs and the commands that use the engine
    "edge-resnet validate bundle --data SRC": Run("validate", same_as="edge-resnet validate BUNDLE --data SRC "
                                                  "[--json v.json] [--report r.html] [--max-drop P]"),
    "edge-resnet validate": Run("validate", same_as="edge-resnet validate BUNDLE --data SRC [--json v.json] "
                                "[--report r.html] [--max-drop P]"),
    "edge-resnet bench": Run("bench", same_as="edge-resnet bench BUNDLE [--batch 1,8] [--compare fp32] [--pipeline] "
                             "[--json b.json]"),
    "edge-resnet models": Run("models"),
    "edge-resnet targets": Run("targets"),
    # calibration/README.md
    "edge-resnet compile ... --calib recipe:digits":
        Run(f"compile --model resnet18 --weights ckpt.pth --target onnxruntime --calib recipe:digits {DIGITS} -o recipe-bundle"),
    # Ray (a local cluster; tests/test_ray.py's session cluster when it ran first). test_ray.py also
    # compares each of these with its local counterpart.
    "edge-resnet validate edge-resnet-demo/onnxruntime --data digits:test --ray local --json validation.json":
        Run("validate edge-resnet-demo/onnxruntime --data digits:test --count 60 --ray local --json validation.json",
            needs=("edge-resnet demo -o edge-resnet-demo",)),
    "edge-resnet quantize edge-resnet-demo/onnxruntime/model.float.onnx --calib digits:train --calib-count 128 "
    "--ray local -o model.int8.onnx":
        Run("quantize edge-resnet-demo/onnxruntime/model.float.onnx --calib digits:train --calib-count 32 --ray local "
            "-o model.int8.onnx", needs=("edge-resnet demo -o edge-resnet-demo",)),
    "edge-resnet run edge-resnet-demo/onnxruntime --source videos/ --ray local --out results.parquet":
        Run("run edge-resnet-demo/onnxruntime --source images/ --ray local --out results.parquet",
            needs=("edge-resnet demo -o edge-resnet-demo",)),
}
# the install + test command is what .ci/run executes; the install part of the main command is
# checked against pyproject.toml below (a test cannot pip-install), its `edge-resnet demo` is run
INSTALL = re.compile(r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install -c constraints\.txt "
                     r"-e \"\.\[(?P<extras>[a-z,]+)\]\"(?: && (?P<rest>.+))?$")


# fenced blocks after these markers are run, line by line, by another test (module, function): the
# Jetson steps run against the fake TensorRT device there
DELEGATED = {"jetson-host-steps": ("test_tensorrt_device", "test_readme_jetson_steps"),
             "jetson-device-steps": ("test_tensorrt_device", "test_readme_jetson_steps")}


def readme_commands() -> list[str]:
    """Every command line the READMEs show, as written (table escapes undone), but the delegated blocks."""
    found: list[str] = []
    for path in READMES:
        text = path.read_text(encoding="utf-8")
        for marker in DELEGATED:
            text = re.sub(rf"<!-- {marker} -->\n```bash\n.*?```", "", text, flags=re.S)
        for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S):
            found += [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
        for line in text.splitlines():
            if line.startswith("    ") and line.strip().startswith("edge-resnet "):
                found.append(line.strip())
        for span in re.findall(r"`(edge-resnet [^`]+)`", text):
            found.append(span.replace("\\|", "|"))
    commands: list[str] = []
    for c in found:
        m = INSTALL.match(c)
        if m:
            c = m.group("rest") or ""
            if c.startswith("python -m pytest"):
                continue  # .ci/run
        for part in c.split(" / "):  # "`edge-resnet models` / `edge-resnet targets`" is two spans already
            if part and part not in commands:
                commands.append(part)
    return commands


def test_the_demos_default_output_is_the_one_the_readme_spells_out():
    from edge_resnet.cli.demo_cmd import demo

    assert {p.name: p.default for p in demo.params}["output"] == "edge-resnet-demo"


def test_delegated_blocks_are_run_by_their_test():
    import importlib

    for marker, (module, name) in DELEGATED.items():
        assert f"<!-- {marker} -->" in READMES[0].read_text(encoding="utf-8"), marker
        test = getattr(importlib.import_module(module), name)
        assert marker in Path(test.__code__.co_filename).read_text(encoding="utf-8")


def test_every_readme_command_is_run():
    missing = [c for c in readme_commands() if c not in RUNS]
    assert not missing, "README commands that no test runs (add them to RUNS):\n" + "\n".join(missing)
    stale = [c for c in RUNS if c not in readme_commands()]
    assert not stale, "RUNS entries the READMEs no longer show:\n" + "\n".join(stale)


def _options(command: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", command))


@pytest.mark.parametrize("shown", list(RUNS))
def test_the_concrete_command_is_an_instance_of_the_readmes(shown: str):
    run = RUNS[shown]
    assert shlex.split(run.args)[0] == shown.split()[1], "another subcommand"
    extra = set() if " ... " in shown else _options(run.args) - _options(shown) - FAST  # "...": options elided
    assert not extra, f"options the README line does not show: {sorted(extra)}"


def test_install_commands_name_real_extras():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    text = READMES[0].read_text(encoding="utf-8")
    shown = [m.group("extras") for line in text.splitlines() if (m := INSTALL.match(line.strip()))]
    assert len(shown) >= 2  # the main command and the test command
    for group in shown:
        assert set(group.split(",")) <= extras, group


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, digits_r18, cache_dir) -> Path:
    """The files the README's commands name, made from the digits model and data."""
    import cv2
    from PIL import Image

    ws = tmp_path_factory.mktemp("readme")
    shutil.copy(digits_r18.checkpoint, ws / "ckpt.pth")
    onnx.save(digits_r18.float_graph, str(ws / "model.onnx"))
    onnx.save(digits_r18.float_graph, str(ws / "in.onnx"))
    from edge_resnet.data import load_digits_split

    x, y = load_digits_split("train")
    (ws / "images").mkdir()
    for i in range(24):
        Image.fromarray(x[i]).save(ws / "images" / f"{i:03d}.png")
    xt, yt = load_digits_split("test")
    for i in range(60):
        (ws / "val" / str(yt[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(xt[i]).save(ws / "val" / str(yt[i]) / f"{i:03d}.png")
    writer = cv2.VideoWriter(str(ws / "video.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for i in range(12):
        writer.write(cv2.cvtColor(np.asarray(Image.fromarray(xt[i]).resize((64, 64))), cv2.COLOR_RGB2BGR))
    writer.release()
    _keras_file(ws / "resnet50v2.keras")
    return ws


def _keras_file(path: Path) -> None:
    """A real Keras ResNet50V2 (5 classes, 32x32), saved by Keras (the tests' reference helper)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from keras_reference import build

    build("ResNet50V2", classes=5, size=32, seed=0).save(str(path))


_done: dict[str, object] = {}  # by concrete command: one run serves README lines that are the same command


def _invoke(shown: str, ws: Path, monkeypatch, cache_dir: Path) -> object:
    run = RUNS[shown]
    if run.same_as:
        return _invoke(run.same_as, ws, monkeypatch, cache_dir)
    if run.args in _done:
        return _done[run.args]
    for need in run.needs:
        _invoke(need, ws, monkeypatch, cache_dir)
    monkeypatch.chdir(ws)
    monkeypatch.setenv("EDGE_RESNET_CACHE", str(cache_dir))
    r = CliRunner().invoke(cli, shlex.split(run.args))
    assert r.exit_code == run.exit_code, f"edge-resnet {run.args}\n{r.output}\n{r.exception!r}"
    _done[run.args] = r
    return r


@pytest.mark.slow
@pytest.mark.parametrize("shown", list(RUNS))
def test_readme_command_runs(shown: str, workspace: Path, monkeypatch, cache_dir: Path):
    r = _invoke(shown, workspace, monkeypatch, cache_dir)
    args = shlex.split(RUNS[shown].args)
    outputs = [args[i + 1] for i, a in enumerate(args[:-1])
               if a in ("-o", "--json", "--jsonl", "--save", "--report", "--out")]
    for out in outputs:
        assert (workspace / out).exists(), f"{out} was not written"
    if args[0] == "compile":
        bundle = workspace / (args[args.index("-o") + 1] if "-o" in args else f"{args[args.index('--model') + 1]}-"
                              f"{args[args.index('--target') + 1]}")
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["artifact"]["precision"] == "int8" and (bundle / manifest["graphs"]["int8"]).is_file()
    if args[0] == "run" and "--jsonl" in args:
        lines = (workspace / "out.jsonl").read_text().splitlines()
        assert len(lines) == 12, "one line per frame of the 12-frame video"
    if args[0] == "run" and "--out" in args:  # the batch mode (--ray): one row per image of images/
        import pyarrow.parquet as pq

        assert pq.read_table(workspace / args[args.index("--out") + 1]).num_rows == 24
    if args[0] in ("models", "targets"):
        assert "resnet50" in r.output or "jetson" in r.output


@pytest.mark.slow
def test_readme_python_block_runs(workspace: Path, monkeypatch, cache_dir: Path):
    """The runtime snippet, with its bundle and camera replaced by the demo's bundle and the test video."""
    _invoke("edge-resnet demo -o edge-resnet-demo", workspace, monkeypatch, cache_dir)
    monkeypatch.chdir(workspace)
    blocks = re.findall(r"```python\n(.*?)```", READMES[0].read_text(encoding="utf-8"), re.S)
    assert blocks
    from edge_resnet.data import load_digits_split

    frame = np.ascontiguousarray(load_digits_split("test")[0][0][:, :, ::-1])
    for code in blocks:
        code = code.replace('"out/"', '"edge-resnet-demo/cpu"').replace('"camera:0"', '"video.mp4"')
        scope: dict[str, object] = {"frame_bgr": frame}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README, not user input
        assert scope["top"] and scope["result"] is not None
