"""Hostile inputs: every command and the runtime API refuse bad input with one message and a fix, exit
non-zero without a traceback, and leave every file of the user's as it was.

The table is meant to grow: a new feature adds its hostile cases to CLI_CASES (a command line, run in a
fresh workspace of hard links to the shared assets below) or API_CASES (a call into the library). Each
case names a substring of the problem and one of the fix; the test checks, for every case:

* exit status != 0 (CLI) / an EdgeResnetError with a fix (API), and no traceback;
* exactly one ``error:`` message followed by a ``fix:`` line (click's own usage errors: one ``Error:``
  line that says what is allowed);
* nothing in the workspace changed: no file modified, removed or created (sizes, mtimes, inodes,
  and the contents of every small file, before and after).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
import hostile_files as hostile  # noqa: E402
from conftest import build_digits_bundle  # noqa: E402

from edge_resnet.cli.app import cli  # noqa: E402
from edge_resnet.errors import EdgeResnetError  # noqa: E402

FIX_BUNDLE = "compile the bundle again"


# ------------------------------------------------------------------------------------------- assets


def rewrite(path: Path, data: bytes | str) -> None:
    """Replace a file by a new one (never through a hard link shared with the assets)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def rehash(manifest: dict) -> dict:
    """What someone editing a bundle by hand can do: recompute the manifest's integrity hash."""
    if isinstance(manifest, dict) and isinstance(manifest.get("integrity"), dict):
        body = {k: v for k, v in manifest.items() if k != "integrity"}
        manifest["integrity"]["manifest_sha256"] = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return manifest


def edit_manifest(bundle: Path, change: Callable[[dict], object], hash_again: bool = True) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    m = change(m)
    rewrite(bundle / "manifest.json", json.dumps(rehash(m) if hash_again else m, indent=2))


def tampered(change: Callable[[dict], object], hash_again: bool = True) -> Callable[[Path], None]:
    """Setup: the workspace's bundle B with its manifest changed (and re-hashed unless told otherwise)."""
    return lambda ws: edit_manifest(ws / "B", change, hash_again)


@pytest.fixture(scope="session")
def assets(tmp_path_factory, digits_r18) -> Path:
    """Files a hostile user has: a real bundle, its float graph, images, a video, a checkpoint, and bad files."""
    import cv2
    import onnx
    import torch
    from onnx import helper
    from PIL import Image
    from sklearn.datasets import load_digits

    bundle = build_digits_bundle(tmp_path_factory.getbasetemp() / "digits-bundles", digits_r18.checkpoint,
                                 "onnxruntime")
    a = tmp_path_factory.mktemp("hostile-assets")
    shutil.copytree(bundle, a / "B")
    shutil.copy(bundle / "model.float.onnx", a / "m.onnx")
    shutil.copy(digits_r18.checkpoint, a / "ck.pth")
    (a / "imgs").mkdir()
    frames = [np.repeat((d * 16).clip(0, 255).astype(np.uint8)[..., None], 3, 2) for d in load_digits().images[:40]]
    for i in range(3):
        Image.fromarray(frames[i]).resize((32, 32)).save(a / "imgs" / f"{i}.png")
    for name, fourcc in (("v.mp4", "mp4v"), ("v.avi", "MJPG")):
        w = cv2.VideoWriter(str(a / name), cv2.VideoWriter_fourcc(*fourcc), 10, (32, 32))
        for f in frames:
            w.write(cv2.resize(f, (32, 32)))
        w.release()
    # graphs: a 1-channel input, a custom operator
    g = onnx.load(str(a / "m.onnx"))
    g.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
    conv_w = next(i for i in g.graph.initializer if i.name == g.graph.node[0].input[1])
    conv_w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(conv_w)[:, :1].copy(), conv_w.name))
    onnx.save(g, str(a / "gray.onnx"))
    c = onnx.load(str(a / "m.onnx"))
    out = c.graph.output[0].name
    c.graph.node[-1].output[0] = "pre_custom"
    c.graph.node.append(helper.make_node("MySoftmax", ["pre_custom"], [out], domain="com.example"))
    c.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(c, str(a / "custom.onnx"))
    # the classifier cut to one output; finite weights whose sums overflow float32 (512 x 3e38)
    one, big = onnx.load(str(a / "m.onnx")), onnx.load(str(a / "m.onnx"))
    for t in one.graph.initializer:
        if t.name in ("fc.weight", "fc.bias"):
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t)[:1].copy(), t.name))
    one.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    onnx.save(one, str(a / "one.onnx"))
    for t in big.graph.initializer:
        if t.name == "fc.weight":
            t.CopyFrom(onnx.numpy_helper.from_array(np.full(onnx.numpy_helper.to_array(t).shape, 3e38, np.float32),
                                                    t.name))
    onnx.save(big, str(a / "overflow.onnx"))
    nan = onnx.load(str(a / "m.onnx"))
    w = nan.graph.initializer[0]
    values = onnx.numpy_helper.to_array(w).copy()
    values.flat[0] = np.nan
    w.CopyFrom(onnx.numpy_helper.from_array(values, w.name))
    onnx.save(nan, str(a / "nan.onnx"))
    # checkpoints
    hostile.pickled_checkpoint(a / "evil.pth")
    hostile.hdf5_file(a / "model.h5")
    hostile.keras_v3_file(a / "model.keras")
    hostile.safetensors_file(a / "model.safetensors")
    hostile.torch_zip_bomb(a / "bomb.pth")
    (a / "truncated.pth").write_bytes((a / "ck.pth").read_bytes()[:1_000_000])
    sd = torch.load(a / "ck.pth", weights_only=True)
    sd["layer2.0.bn1.running_var"][:] = float("nan")
    torch.save(sd, a / "nan.pth")
    # data
    hostile.npz_bomb(a / "bomb.npz")
    (a / "bombimgs").mkdir()
    hostile.png_bomb(a / "bombimgs" / "huge.png")
    np.savez(a / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    (a / "overflow.txt").write_text("imgs/0.png 99999999999999999999\n")
    (a / "three.txt").write_text("cat\ndog\nbird\n")
    (a / "empty.txt").write_text("\n")
    (a / "wrong.json").write_text(json.dumps({"metrics": [1, 2, 3], "bundle": "B", "data": {}}))
    (a / "bench-shaped.json").write_text(json.dumps({"artifact": "B", "results": []}))
    manifest = json.loads((a / "B" / "manifest.json").read_text())
    (a / "other.json").write_text(json.dumps({"bundle": "/elsewhere/bundle", "bundle_sha256": "0" * 64, "metrics": {},
                                              "data": {}, "precision": manifest["precision"]}))
    (a / "outside").mkdir()
    shutil.copy(a / "B" / "labels.txt", a / "outside" / "labels.txt")
    shutil.copy(a / "m.onnx", a / "outside" / "model.onnx")
    (a / "docs").mkdir()
    (a / "docs" / "thesis.tex").write_text("years of work\n")
    return a


@dataclass(frozen=True)
class Built:
    path: Path
    warnings: str  # what the compile logged at WARNING and above


@pytest.fixture(scope="session")
def one_output_bundle(assets, tmp_path_factory) -> Built:
    """A --fp32 bundle of the digits ResNet-18 cut to a single output, and the warnings of its compile."""
    out = tmp_path_factory.mktemp("one-output") / "one"
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("edge_resnet")
    logger.addHandler(handler)
    try:
        r = CliRunner().invoke(cli, ["compile", "--onnx", str(assets / "one.onnx"), "--target", "onnxruntime",
                                     "--fp32", "-o", str(out)])
    finally:
        logger.removeHandler(handler)
    assert r.exit_code == 0, r.output
    return Built(out, "\n".join(rec.getMessage() for rec in records))


def link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=os.link)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, size, mtime, inode (and the bytes' hash for files under 1 MB)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode)
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 1 << 20 else None
                out[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode, digest)
    return out


def assert_untouched(before: dict, after: dict) -> None:
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert not changed, f"modified: {changed}"
    assert not (before.keys() - after.keys()), f"removed: {sorted(before.keys() - after.keys())}"
    assert not (after.keys() - before.keys()), f"created: {sorted(after.keys() - before.keys())}"


@pytest.fixture
def workspace(assets, tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    link_tree(assets, ws)
    monkeypatch.chdir(ws)
    return ws


# ------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class CliCase:
    id: str
    args: tuple[str, ...]  # after `edge-resnet`, relative to the workspace (the current directory)
    problem: str  # in the error message
    fix: str  # in the fix line (click usage errors: in their one Error: line)
    setup: Callable[[Path], None] | None = None
    cwd: str = "."
    usage: bool = False  # a click usage error (exit 2, "Error: ..."): what is allowed is in the message
    not_in_output: tuple[str, ...] = ()


def _symlink_labels(target: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        (ws / "B" / "labels.txt").unlink()
        (ws / "B" / "labels.txt").symlink_to(target)
    return setup


def _modify_file(ws: Path) -> None:
    rewrite(ws / "B" / "model.onnx", (ws / "B" / "model.onnx").read_bytes()[:-10] + b"0123456789")


def _huge_manifest(ws: Path) -> None:
    rewrite(ws / "B" / "manifest.json", b"{" + b" " * (20 << 20) + b"}")


def _deep_json(ws: Path) -> None:
    rewrite(ws / "B" / "manifest.json", "[" * 100_000 + "]" * 100_000)


def _bundle_with_user_file(ws: Path) -> None:
    link_tree(ws / "B", ws / "old-bundle")
    (ws / "old-bundle" / "notes.txt").write_text("mine\n")


def _work_dir(ws: Path) -> None:
    (ws / "work").mkdir()
    (ws / "work" / "thesis.tex").write_text("years of work\n")


def _models_dir(ws: Path) -> None:
    (ws / "models").mkdir()
    os.link(ws / "m.onnx", ws / "models" / "model.onnx")
    (ws / "models" / "notes.txt").write_text("mine\n")


def _unlisted_graph(ws: Path) -> None:
    os.link(ws / "m.onnx", ws / "B" / "extra.onnx")
    edit_manifest(ws / "B", lambda m: {**m, "graphs": {**m["graphs"], "float": "extra.onnx"}})


def _artifact(**changes) -> Callable[[dict], dict]:
    return lambda m: {**m, "artifact": {**m["artifact"], **changes}}


RUN = ("run", "B", "--source", "imgs/", "--mode", "latency", "--jsonl", "o.jsonl")
VALIDATE = ("validate", "B", "--data", "digits:test", "--count", "16", "--no-per-layer", "--no-progress")
COMPILE_FP32 = ("-q", "compile", "--onnx", "m.onnx", "--target", "onnxruntime", "--fp32")
QUANTIZE = ("quantize", "m.onnx", "--calib", "digits:train", "--calib-count", "16")
EXPORT = ("export", "--model", "resnet18", "--num-classes", "10", "--input-size", "32")
TORCH_ADVICE = ("weights_only", "may be truncated")  # torch's advice (re-run with weights_only=False), ours for bad files

CLI_CASES: list[CliCase] = [
    # ---- a bundle is untrusted input
    CliCase("bundle-labels-absolute", RUN, "labels '/etc/passwd' is an absolute path", FIX_BUNDLE,
            tampered(lambda m: {**m, "labels": "/etc/passwd"})),
    CliCase("bundle-labels-edited-unhashed", RUN, "was modified after compile wrote it", FIX_BUNDLE,
            tampered(lambda m: {**m, "labels": "/etc/passwd"}, hash_again=False)),
    CliCase("bundle-artifact-dotdot", RUN, "artifact.files.model '../outside/model.onnx' goes up with '..'", FIX_BUNDLE,
            tampered(_artifact(files={"model": "../outside/model.onnx"}))),
    CliCase("bundle-graph-absolute", VALIDATE, "is an absolute path", FIX_BUNDLE,
            tampered(lambda m: {**m, "graphs": {**m["graphs"], "float": "/tmp/model.onnx"}})),
    CliCase("bundle-labels-backslash", RUN, "contains a backslash", FIX_BUNDLE,
            tampered(lambda m: {**m, "labels": "..\\labels.txt"})),
    CliCase("bundle-labels-drive-letter", RUN, "starts with a drive letter", FIX_BUNDLE,
            tampered(lambda m: {**m, "labels": "C:/labels.txt"})),
    CliCase("bundle-symlink-outside", RUN, "is a symbolic link", "cp -rL", _symlink_labels("../outside/labels.txt")),
    CliCase("bundle-symlink-inside", RUN, "bundles hold no symbolic links", "cp -rL", _symlink_labels("model.onnx")),
    CliCase("bundle-manifest-list", RUN, "is a list, not the JSON object", FIX_BUNDLE, tampered(lambda m: [])),
    CliCase("bundle-manifest-null", RUN, "is null, not the JSON object", FIX_BUNDLE, tampered(lambda m: None)),
    CliCase("bundle-manifest-not-json", RUN, "is not valid JSON", FIX_BUNDLE,
            lambda ws: rewrite(ws / "B" / "manifest.json", "{not json")),
    CliCase("bundle-manifest-deeply-nested", RUN, "is not valid JSON", FIX_BUNDLE, _deep_json),
    CliCase("bundle-manifest-huge", RUN, "a manifest is a few kB", FIX_BUNDLE, _huge_manifest),
    CliCase("bundle-no-artifact", RUN, "has no 'artifact' entry", FIX_BUNDLE,
            tampered(lambda m: {k: v for k, v in m.items() if k != "artifact"})),
    CliCase("bundle-unknown-backend", RUN, "artifact.backend is 'tpu', not one of", FIX_BUNDLE,
            tampered(_artifact(backend="tpu"))),
    CliCase("bundle-files-wrong-type", RUN, "'files' is a list, expected an object", FIX_BUNDLE,
            tampered(lambda m: {**m, "files": list(m["files"])})),
    CliCase("bundle-artifact-files-wrong-type", RUN, "'artifact.files' is a string, expected an object", FIX_BUNDLE,
            tampered(_artifact(files="model.onnx"))),
    CliCase("bundle-format-99", RUN, "has bundle format 99", "compile the bundle again",
            tampered(lambda m: {**m, "format_version": 99})),
    CliCase("bundle-no-integrity", RUN, "has no integrity record", FIX_BUNDLE,
            tampered(lambda m: {k: v for k, v in m.items() if k != "integrity"})),
    CliCase("bundle-hash-not-sha256", RUN, "not a sha256", FIX_BUNDLE,
            tampered(lambda m: {**m, "files": {**m["files"], "labels.txt": "abc"}})),
    CliCase("bundle-unlisted-graph", VALIDATE, "which the manifest's file list does not cover", FIX_BUNDLE,
            _unlisted_graph),
    CliCase("bundle-file-modified", RUN, "modified: model.onnx", "compile the bundle again", _modify_file),
    CliCase("bundle-file-missing", RUN, "missing: labels.txt", "compile the bundle again",
            lambda ws: (ws / "B" / "labels.txt").unlink()),
    CliCase("bundle-input-size-huge", RUN, "is out of range", FIX_BUNDLE,
            tampered(lambda m: {**m, "preprocess": {**m["preprocess"], "input_size": 100000, "resize": 100000}})),
    CliCase("bundle-target-empty", RUN, "invalid target profile", FIX_BUNDLE, tampered(lambda m: {**m, "target": {}})),
    # ---- writing never destroys the user's files
    CliCase("compile-force-cwd", ("-q", "compile", "--onnx", "../m.onnx", "--target", "onnxruntime", "--fp32",
                                  "--force", "-o", "."), "is the current directory", "new directory", _work_dir,
            cwd="work"),
    CliCase("compile-force-parent-of-cwd", ("-q", "compile", "--model", "resnet18", "--target", "onnxruntime",
                                            "--fp32", "--force", "-o", ".."),
            "is the current directory or one of its parents", "new directory", _work_dir, cwd="work"),
    CliCase("compile-force-input-folder", ("-q", "compile", "--onnx", "models/model.onnx", "--target", "onnxruntime",
                                           "--fp32", "--force", "-o", "models"), "holds the input --onnx",
            "outside your inputs", _models_dir),
    CliCase("compile-force-not-a-bundle", (*COMPILE_FP32, "--force", "-o", "docs"),
            "--force replaces only an edge-resnet bundle", "move your files out of it"),
    CliCase("compile-force-bundle-with-user-file", (*COMPILE_FP32, "--force", "-o", "old-bundle"),
            "holds files that are not part of the bundle", "move your files out of it", _bundle_with_user_file),
    CliCase("compile-force-calib-folder", ("-q", "compile", "--onnx", "m.onnx", "--target", "onnxruntime", "--calib",
                                           "imgs", "--force", "-o", "imgs"), "holds the input --calib",
            "outside your inputs"),
    CliCase("compile-output-exists", (*COMPILE_FP32, "-o", "B"), "already exists", "--force"),
    CliCase("compile-output-is-a-file", (*COMPILE_FP32, "-o", "imgs/0.png"), "Directory 'imgs/0.png' is a file",
            "'-o' / '--output'", usage=True),
    CliCase("compile-output-unwritable", (*COMPILE_FP32, "-o", "/sys/edge-resnet-bundle"),
            "does not accept new files", "permissions"),
    CliCase("quantize-in-place", (*QUANTIZE, "-o", "m.onnx"), "is the input MODEL.onnx", "to another file"),
    CliCase("quantize-scales-is-output", (*QUANTIZE, "--scales", "q.onnx", "-o", "q.onnx"), "are the same file",
            "its own file"),
    CliCase("quantize-output-is-folder", (*QUANTIZE, "-o", "imgs"), "File 'imgs' is a directory", "'-o' / '--output'",
            usage=True),
    CliCase("fold-bn-in-place", ("fold-bn", "m.onnx", "-o", "m.onnx"), "is the input SRC", "to another file"),
    CliCase("export-over-weights", (*EXPORT, "--weights", "ck.pth", "-o", "ck.pth"), "is the input --weights",
            "to another file"),
    CliCase("run-save-over-source", ("run", "B", "--source", "v.mp4", "--save", "v.mp4"), "is the input --source",
            "to another file"),
    CliCase("run-jsonl-into-bundle", ("run", "B", "--source", "imgs/", "--jsonl", "B/o.jsonl"),
            "is inside the bundle BUNDLE", "outside the bundle"),
    CliCase("run-jsonl-is-save", ("run", "B", "--source", "imgs/", "--jsonl", "o.avi", "--save", "o.avi"),
            "are the same file", "its own file"),
    CliCase("validate-json-over-bundle-file", (*VALIDATE, "--json", "B/model.onnx"), "is inside the bundle",
            "outside the bundle"),
    CliCase("validate-json-is-report", (*VALIDATE, "--json", "x.html", "--report", "x.html"), "are the same file",
            "its own file"),
    CliCase("report-over-manifest", ("report", "B", "-o", "B/manifest.json"), "is inside the bundle",
            "outside the bundle"),
    CliCase("report-over-validation", ("report", "B", "--validation", "other.json", "-o", "other.json"),
            "is the input --validation", "to another file"),
    CliCase("bench-json-into-bundle", ("bench", "B", "--json", "B/bench.json"), "is inside the bundle",
            "outside the bundle"),
    # ---- checkpoints are never unpickled, archives never inflate unchecked
    CliCase("weights-pickled-objects", (*EXPORT, "--weights", "evil.pth", "-o", "x.onnx"),
            "contains pickled Python objects (classes or functions, e.g. posix.system", "torch.save(model.state_dict()",
            not_in_output=TORCH_ADVICE),
    # Keras and safetensors files are read (issue 11): a damaged or foreign one gets its reader's message
    CliCase("weights-hdf5", (*EXPORT, "--weights", "model.h5", "-o", "x.onnx"), "cannot be read as an HDF5 file",
            "save it again", not_in_output=TORCH_ADVICE),
    CliCase("weights-keras-archive", (*EXPORT, "--weights", "model.keras", "-o", "x.onnx"),
            "without any layer holding weights", "keras.applications ResNet", not_in_output=TORCH_ADVICE),
    CliCase("weights-safetensors", (*EXPORT, "--weights", "model.safetensors", "-o", "x.onnx"),
            "does not match the model", "--num-classes", not_in_output=TORCH_ADVICE),
    CliCase("weights-zip-bomb", (*EXPORT, "--weights", "bomb.pth", "-o", "x.onnx"), "a decompression bomb",
            "EDGE_RESNET_MAX_UNPACKED_BYTES"),
    CliCase("weights-truncated", (*EXPORT, "--weights", "truncated.pth", "-o", "x.onnx"),
            "cannot be read as a PyTorch file", "it may be truncated", not_in_output=("weights_only",)),
    CliCase("weights-nan-export", (*EXPORT, "--weights", "nan.pth", "-o", "x.onnx"), "NaN or infinite weights",
            "fix the checkpoint"),
    CliCase("weights-nan-compile-fp32", ("-q", "compile", "--model", "resnet18", "--num-classes", "10", "--weights",
                                         "nan.pth", "--input-size", "32", "--target", "onnxruntime", "--fp32", "-o",
                                         "nanB"), "NaN or infinite weights", "fix the checkpoint"),
    CliCase("onnx-nan-weights-compile-fp32", ("-q", "compile", "--onnx", "nan.onnx", "--target", "onnxruntime",
                                              "--fp32", "-o", "nanB"), "has NaN or infinite weights in 1 tensor(s)",
            "fix the checkpoint"),
    CliCase("onnx-nan-weights-fold-bn", ("fold-bn", "nan.onnx", "-o", "f.onnx"), "NaN or infinite weights",
            "fix the model's weights"),
    # ---- data
    CliCase("calib-npz-bomb", (*QUANTIZE[:2], "--calib", "bomb.npz", "-o", "q.onnx"), "a decompression bomb",
            "EDGE_RESNET_MAX_COMPRESSION_RATIO"),
    CliCase("calib-png-bomb", (*QUANTIZE[:2], "--calib", "bombimgs", "-o", "q.onnx"), "megapixel limit",
            "image viewer"),
    CliCase("calib-npz-objects", (*QUANTIZE[:2], "--calib", "objects.npz", "-o", "q.onnx"), "holds Python objects",
            "plain numeric arrays"),
    CliCase("data-list-label-overflow", (*VALIDATE[:2], "--data", "overflow.txt", "--no-progress"), "is out of range",
            "class indices"),
    # ---- graphs
    CliCase("onnx-one-channel", ("-q", "compile", "--onnx", "gray.onnx", "--target", "onnxruntime", "--fp32", "-o",
                                 "g"), "has 1 channel(s)", "3-channel input"),
    CliCase("onnx-custom-operator", ("-q", "compile", "--onnx", "custom.onnx", "--target", "onnxruntime", "--fp32",
                                     "-o", "c"), "custom operators that no edge-resnet backend implements: MySoftmax",
            "standard ONNX operators"),
    CliCase("onnx-outputs-overflow", ("-q", "compile", "--onnx", "overflow.onnx", "--target", "onnxruntime", "--fp32",
                                      "-o", "c"), "outputs NaN or infinity", "values that overflow float32"),
    CliCase("onnx-is-an-image", ("-q", "compile", "--onnx", "imgs/0.png", "--target", "onnxruntime", "--fp32", "-o",
                                 "c"), "it is a PNG image", "export the model again"),
    # ---- options that do not fit the model or each other
    CliCase("exclude-unknown-layer", (*QUANTIZE, "--exclude", "layer1.0.conv9", "-o", "q.onnx"),
            "(did you mean layer1.0.conv2, layer1.0.conv1", "use layer names of the graph"),
    CliCase("labels-count-mismatch", (*COMPILE_FP32, "--labels", "three.txt", "-o", "l"),
            "has 3 class names and the model has 10 outputs", "one name per output"),
    CliCase("labels-empty", (*COMPILE_FP32, "--labels", "empty.txt", "-o", "l"), "is empty", "one class name per line"),
    CliCase("max-drop-nan", ("-q", "compile", "--onnx", "m.onnx", "--target", "onnxruntime", "--calib", "digits:train",
                             "--max-drop", "nan", "--val", "digits:test", "-o", "n"), "nan is not a drift budget",
            "a finite number of points, e.g. 0.5", usage=True),
    CliCase("max-drop-inf", (*VALIDATE, "--max-drop", "inf"), "inf is not a drift budget", "finite number",
            usage=True),
    CliCase("report-another-bundles-validation", ("report", "B", "--validation", "other.json", "-o", "r.html"),
            "holds the validation of another bundle", "this bundle"),
    CliCase("report-wrong-shape", ("report", "B", "--validation", "wrong.json", "-o", "r.html"),
            "is not a validation JSON", "edge-resnet validate --json"),
    CliCase("report-bench-as-validation", ("report", "B", "--validation", "bench-shaped.json", "-o", "r.html"),
            "looks like the output of edge-resnet bench", "edge-resnet validate --json"),
    CliCase("pooling-without-no-top", (*EXPORT, "--pooling", "max", "-o", "x.onnx"),
            "applies to a model without its classifier", "--no-top --pooling max"),
    CliCase("bench-batch-over-profile-max", ("bench", "B", "--batch", "1,64", "--iters", "1"),
            "batch 64 is above the bundle's largest batch 32", "up to 32"),
    CliCase("input-size-huge", ("export", "--model", "resnet18", "--input-size", "100000", "-o", "x.onnx"),
            "100000 is not in the range", "32<=x<=4096", usage=True),
]


def _error_block(output: str) -> tuple[list[str], str]:
    lines = output.splitlines()
    errors = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    text = "\n".join(lines[errors[0]:]) if errors else ""
    return errors, text


def run_case(case: CliCase, workspace: Path, monkeypatch) -> str:
    """Run one CLI case in ``workspace`` and check everything the module docstring promises; the output."""
    if case.setup is not None:
        case.setup(workspace)
    monkeypatch.chdir(workspace / case.cwd)
    before = snapshot(workspace)
    result = CliRunner().invoke(cli, list(case.args))
    out = result.output
    assert result.exit_code != 0, out
    assert result.exception is None or isinstance(result.exception, SystemExit), (result.exception, out)
    assert "Traceback" not in out, out
    if case.usage:
        assert result.exit_code == 2, out
        errors = [ln for ln in out.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1 and case.problem in errors[0] and case.fix in errors[0], out
    else:
        errors, text = _error_block(out)
        assert len(errors) == 1, out
        assert case.problem in text, out
        fix = [ln for ln in text.splitlines() if ln.strip().startswith("fix:")]
        assert len(fix) == 1 and case.fix in text.split("fix:", 1)[1], out
    for forbidden in case.not_in_output:
        assert forbidden not in out, out
    assert_untouched(before, snapshot(workspace))
    print(f"[{case.id}] edge-resnet {' '.join(case.args)}\n{out}")  # the messages, with pytest -rP
    return out




@pytest.mark.slow
@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_hostile_command_line(case: CliCase, workspace, monkeypatch):
    run_case(case, workspace, monkeypatch)


# ------------------------------------------------------------------------------------------- the API


@dataclass(frozen=True)
class ApiCase:
    id: str
    call: Callable[[Path, dict], object]  # (workspace, fixtures) -> raises
    problem: str
    fix: str


def _load(ws: Path, _: dict, **options):
    import edge_resnet.runtime

    return edge_resnet.runtime.load(ws / "B", **options)


def _stream_none(ws: Path, _: dict):
    with _load(ws, _) as model:
        return list(model.stream([model_frame(), None], mode="latency"))


def model_frame() -> np.ndarray:
    return np.zeros((32, 32, 3), np.uint8)


def _classify_one_output(ws: Path, fx: dict):
    import edge_resnet.runtime

    with edge_resnet.runtime.load(fx["one_output_bundle"].path) as model:
        return model.classify(model_frame())


def _compile_huge_input(ws: Path, _: dict):
    from edge_resnet.compile import CompileOptions, ModelSource, compile_bundle
    from edge_resnet.types import Precision

    options = CompileOptions(target="onnxruntime", precision=Precision.FP32)
    return compile_bundle(ModelSource("resnet18", num_classes=10), options, ws / "out", input_size=100_000)


def _spec_huge(ws: Path, _: dict):
    from edge_resnet.data import PreprocessSpec

    return PreprocessSpec(input_size=100_000, resize=100_000)


def _dataset_bomb(ws: Path, _: dict):
    from edge_resnet.data import PreprocessSpec, open_dataset

    return open_dataset(ws / "bomb.npz", PreprocessSpec(input_size=32, resize=32))


def _weights_pickled(ws: Path, _: dict):
    from edge_resnet.models import build_model, load_weights

    return load_weights(build_model("resnet18", num_classes=10), ws / "evil.pth")


def _bundle_file_escape(ws: Path, _: dict):
    from edge_resnet.bundle import load_bundle

    return load_bundle(ws / "B").file("../outside/labels.txt")


def _confined_absolute(ws: Path, _: dict):
    from edge_resnet.bundle import confined

    return confined(ws / "B", "/etc/passwd")


API_CASES: list[ApiCase] = [
    ApiCase("load-unknown-option", lambda ws, fx: _load(ws, fx, thread=2), "unknown load option(s) thread",
            "use frame_input, hint, threads"),
    ApiCase("stream-none-frame", _stream_none, "frame 1 of list is None, not an image", "leave out the frames"),
    ApiCase("classify-one-output", _classify_one_output, "cannot rank classes", "model.infer(frames)"),
    ApiCase("compile-input-size-huge", _compile_huge_input, "input size 100000 is out of range", "from 32 to 4096"),
    ApiCase("spec-input-size-huge", _spec_huge, "is out of range", "up to 4096"),
    ApiCase("dataset-npz-bomb", _dataset_bomb, "a decompression bomb", "EDGE_RESNET_MAX_COMPRESSION_RATIO"),
    ApiCase("weights-pickled", _weights_pickled, "contains pickled Python objects", "state_dict()"),
    ApiCase("bundle-file-outside", _bundle_file_escape, "is not one of the files", FIX_BUNDLE),
    ApiCase("confined-absolute-path", _confined_absolute, "is an absolute path", FIX_BUNDLE),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_hostile_api(case: ApiCase, workspace, one_output_bundle):
    before = snapshot(workspace)
    with pytest.raises(EdgeResnetError) as info:
        case.call(workspace, {"one_output_bundle": one_output_bundle})
    err = info.value
    assert case.problem in err.problem, str(err)
    assert err.fix and case.fix in err.fix, str(err)
    assert "weights_only" not in str(err)
    assert_untouched(before, snapshot(workspace))
    print(f"[{case.id}] {type(err).__name__}: {err}")  # the messages, with pytest -rP


# ------------------------------------------------------------------------------ the defects of issue 10
# Each defect the issue reproduced is covered by cases of the tables above (run by test_hostile_command_line
# and test_hostile_api, each failing on the code before the fix) and, where a case cannot show it (a
# process killed or interrupted, memory use, a race), by a test_issue10_defectNN_* test below.

ISSUE10_DEFECT_CASES: dict[int, tuple[str, ...]] = {
    1: ("bundle-labels-absolute", "bundle-labels-edited-unhashed", "bundle-artifact-dotdot", "bundle-graph-absolute",
        "bundle-symlink-outside", "bundle-file-outside"),
    2: ("compile-force-cwd", "compile-force-parent-of-cwd", "compile-force-input-folder", "compile-force-not-a-bundle",
        "compile-force-bundle-with-user-file", "compile-force-calib-folder"),
    3: ("quantize-in-place", "fold-bn-in-place", "run-save-over-source", "validate-json-over-bundle-file",
        "report-over-manifest"),
    4: ("compile-output-unwritable", "bundle-manifest-list", "bundle-manifest-null", "bundle-no-artifact",
        "bundle-unknown-backend", "onnx-one-channel", "onnx-custom-operator", "data-list-label-overflow",
        "input-size-huge", "compile-input-size-huge", "stream-none-frame"),
    5: ("weights-pickled-objects", "weights-hdf5", "weights-keras-archive", "weights-safetensors"),
    6: ("weights-zip-bomb", "calib-npz-bomb", "calib-png-bomb", "dataset-npz-bomb"),
    7: ("weights-nan-export", "weights-nan-compile-fp32", "onnx-nan-weights-compile-fp32", "onnx-outputs-overflow"),
    9: ("exclude-unknown-layer", "labels-count-mismatch", "max-drop-nan", "report-another-bundles-validation",
        "report-wrong-shape", "pooling-without-no-top", "bench-batch-over-profile-max", "load-unknown-option",
        "classify-one-output"),
}


def test_the_table_covers_at_least_forty_cases():
    assert len(CLI_CASES) + len(API_CASES) >= 40
    ids = [c.id for c in CLI_CASES] + [c.id for c in API_CASES]
    assert len(ids) == len(set(ids))
    missing = [i for cases in ISSUE10_DEFECT_CASES.values() for i in cases if i not in ids]
    assert not missing, missing
    dedicated = {int(name[len("test_issue10_defect"):][:2]) for name in globals() if name.startswith("test_issue10_defect")}
    assert set(ISSUE10_DEFECT_CASES) | dedicated == set(range(1, 12))


def edge_resnet_cmd(*args: str) -> list[str]:
    """A real `edge-resnet` process (the installed entry point's code, run by this interpreter)."""
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'edge-resnet'; from edge_resnet.cli import main; main()",
            *args]


def _poll(predicate: Callable[[], bool], proc, timeout: float = 600.0) -> bool:
    """Wait until ``predicate()`` holds (True) or the process ends first (False)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.01)
    raise AssertionError("timed out")


def _partials(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.partial-")]


@pytest.mark.slow
def test_issue10_defect01_bundle_paths_never_leave_the_bundle(workspace, monkeypatch):
    """labels: /etc/passwd (re-hashed, as a careful attacker would) gave /etc/passwd lines as labels."""
    import edge_resnet.runtime
    from edge_resnet.errors import BundleError

    edit_manifest(workspace / "B", lambda m: {**m, "labels": "/etc/passwd"})
    r = CliRunner().invoke(cli, ["run", "B", "--source", "imgs/", "--mode", "latency", "--jsonl", "o.jsonl"])
    assert r.exit_code == 1 and "labels '/etc/passwd' is an absolute path" in r.output, r.output
    assert "root:" not in r.output and not (workspace / "o.jsonl").exists()
    edit_manifest(workspace / "B", lambda m: {**m, "labels": "labels.txt"})  # back as compile wrote it
    for i, change in enumerate((_artifact(files={"model": "../outside/model.onnx"}),
                                lambda m: {**m, "graphs": {**m["graphs"], "float": str(workspace / "m.onnx")}})):
        link_tree(workspace / "B", workspace / f"B{i}")
        edit_manifest(workspace / f"B{i}", change)
        with pytest.raises(BundleError, match="a bundle may only name files inside it"):
            edge_resnet.runtime.load(workspace / f"B{i}")
    # a symbolic link whose target has the very bytes the manifest hashes
    _symlink_labels(str(workspace / "outside" / "labels.txt"))(workspace)
    with pytest.raises(BundleError, match="symbolic link .*outside the bundle"):
        edge_resnet.runtime.load(workspace / "B")


def test_bundle_integrity_covers_the_manifest(tmp_path):
    from test_bundle import _write

    from edge_resnet.bundle import load_bundle, manifest_digest

    out = _write(tmp_path / "b")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["integrity"] == {"algorithm": "sha256", "manifest_sha256": manifest_digest(manifest)}
    assert load_bundle(out).digest == manifest["integrity"]["manifest_sha256"]
    manifest["precision"] = "int8"  # any edit, even one that keeps the JSON valid
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeResnetError, match="was modified after compile wrote it"):
        load_bundle(out)


def test_unlisted_files_are_ignored_and_named(tmp_path, caplog):
    from test_bundle import _write

    from edge_resnet.bundle import load_bundle

    out = _write(tmp_path / "b")
    (out / "notes.txt").write_text("not part of the bundle\n")
    with caplog.at_level(logging.WARNING):
        b = load_bundle(out)
    assert "notes.txt" in caplog.text and "ignored" in caplog.text
    with pytest.raises(EdgeResnetError, match="is not one of the files"):
        b.file("notes.txt")




def test_issue10_defect02_a_directory_appearing_during_a_compile_survives(tmp_path):
    from test_bundle import minimal_manifest

    from edge_resnet.bundle import BundleWriter
    from edge_resnet.errors import BundleError

    out = tmp_path / "b"
    with pytest.raises(BundleError, match="appeared while the bundle was being compiled"), BundleWriter(out) as w:
        (w.dir / "model.onnx").write_bytes(b"x")
        (w.dir / "labels.txt").write_text("a\n")
        out.mkdir()  # made by someone else meanwhile, even empty: rename(2) would replace an empty directory
        w.finish(minimal_manifest())
    assert out.is_dir() and list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # our staging directory is gone


def test_force_refuses_a_bundle_that_changed_during_the_compile(tmp_path):
    from test_bundle import _write, minimal_manifest

    from edge_resnet.bundle import BundleWriter
    from edge_resnet.errors import BundleError

    out = _write(tmp_path / "b")
    with pytest.raises(BundleError, match="changed while the bundle was being compiled"), \
            BundleWriter(out, force=True) as w:
        (w.dir / "model.onnx").write_bytes(b"x")
        (w.dir / "labels.txt").write_text("a\n")
        (out / "results.csv").write_text("the user's\n")
        w.finish(minimal_manifest())
    assert (out / "results.csv").read_text() == "the user's\n"


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "plain-rename"])
def test_force_replaces_a_bundle_atomically(tmp_path, monkeypatch, exchange):
    from test_bundle import _write

    import edge_resnet.bundle as bundle_module
    from edge_resnet.bundle import load_bundle

    if not exchange:
        monkeypatch.setattr(bundle_module, "_renameat2", None)  # systems without renameat2(2)
    out = _write(tmp_path / "b")
    first = load_bundle(out).digest
    (out / "model.onnx").unlink()
    out = _write(tmp_path / "b", force=True)  # a broken bundle is still ours to replace
    assert load_bundle(out).digest == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.slow
def test_issue10_defect02_cli_directory_appearing_during_compile_survives(assets, tmp_path):
    import subprocess

    for attempt in range(3):  # the compile may publish before the directory is made: try again
        ws = tmp_path / f"try{attempt}"
        link_tree(assets, ws)
        out = ws / "appear"
        proc = subprocess.Popen(edge_resnet_cmd("-q", "compile", "--onnx", "m.onnx", "--target", "onnxruntime",
                                                "--fp32", "-o", "appear"),
                                cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = _poll(lambda ws=ws: bool(_partials(ws, "appear")), proc)
        if started:
            out.mkdir()
            (out / "precious.txt").write_text("made by the user during the compile\n")
        text, _err = proc.communicate(timeout=600)
        if started and proc.returncode != 0:
            break
    assert proc.returncode == 1, text
    assert "appeared while the bundle was being compiled" in text and "Traceback" not in text, text
    assert (out / "precious.txt").read_text() == "made by the user during the compile\n"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"] and not _partials(ws, "appear")






@pytest.mark.slow
def test_issue10_defect04_unwritable_output_is_found_before_the_work(workspace, monkeypatch):
    import edge_resnet.compile

    def no_work(*args, **kwargs):
        raise AssertionError("the model was built before the output was checked")

    monkeypatch.setattr(edge_resnet.compile, "float_graph_for", no_work)
    r = CliRunner().invoke(cli, [*COMPILE_FP32, "-o", "/sys/edge-resnet-bundle"])
    assert r.exit_code == 1 and "does not accept new files" in r.output, r.output


@pytest.mark.slow
def test_issue10_defect04_a_full_disk_while_writing_is_one_message(assets, tmp_path):
    """EFBIG (the file size limit; ENOSPC behaves the same) while the bundle is written: one message,
    nothing published, no staging directory left."""
    import resource
    import subprocess

    link_tree(assets, tmp_path / "ws")
    ws = tmp_path / "ws"

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))  # 4 MB: the float graph is 45 MB

    r = subprocess.run(edge_resnet_cmd("-q", "compile", "--onnx", "m.onnx", "--target", "onnxruntime", "--fp32",
                                       "-o", "big"), cwd=ws, capture_output=True, text=True, preexec_fn=limit_file_size,
                       timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error: cannot write the bundle" in r.stderr and "File too large" in r.stderr, r.stderr
    assert "fix:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (ws / "big").exists() and not [p for p in ws.iterdir() if p.name.startswith(".big.")]




_BOMBS = """
import json, time
from edge_resnet.data import PreprocessSpec, open_dataset
from edge_resnet.errors import EdgeResnetError
from edge_resnet.models.checkpoint import read_state_dict
out = {}
for name, read in (("bomb.pth", read_state_dict),
                   ("bomb.npz", lambda p: open_dataset(p, PreprocessSpec(input_size=32, resize=32)))):
    t = time.perf_counter()
    try:
        read(name)
        message = None
    except EdgeResnetError as exc:
        message = str(exc)
    out[name] = {"seconds": round(time.perf_counter() - t, 3), "message": message}
status = open("/proc/self/status").read()
out["peak_rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) // 1024
print(json.dumps(out))
"""


@pytest.mark.slow
def test_issue10_defect06_bombs_are_refused_without_the_allocation(assets, monkeypatch):
    """The issue's cases: a .pth that torch.load inflates to 3.4 GB (3.4 GB of memory, 18 s there) and an .npz
    of 1.4 GB of pixels are refused from their zip directories, in a process whose peak memory stays that of
    importing torch; torch.load, np.load and PIL's decoder are never reached. (The CLI's messages: the
    weights-zip-bomb, calib-npz-bomb and calib-png-bomb cases.)"""
    import subprocess

    from PIL import Image

    from edge_resnet.data import PreprocessSpec, open_dataset
    from edge_resnet.errors import CheckpointError, DataError
    from edge_resnet.models.checkpoint import read_state_dict

    assert (assets / "bomb.pth").stat().st_size < 4 << 20 and (assets / "bomb.npz").stat().st_size < 2 << 20
    r = subprocess.run([sys.executable, "-c", _BOMBS], cwd=assets, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    print(f"bombs: {figures}")  # the closing note's figures, with pytest -rP
    assert "a decompression bomb" in figures["bomb.pth"]["message"]
    assert "a decompression bomb" in figures["bomb.npz"]["message"]
    assert figures["peak_rss_mb"] < 1000, f"peak RSS {figures['peak_rss_mb']} MB: a bomb was inflated"
    import torch

    spec = PreprocessSpec(input_size=32, resize=32)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load read the bomb"))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load inflated the bomb"))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("PIL decoded the bomb"))
    with pytest.raises(CheckpointError, match="3.19 GiB of contents"):
        read_state_dict(assets / "bomb.pth")
    with pytest.raises(DataError, match="1.30 GiB of contents"):
        open_dataset(assets / "bomb.npz", spec)
    with pytest.raises(DataError, match="10000x10000 pixels, over the 64-megapixel limit"):
        open_dataset(assets / "bombimgs", spec)


def test_genuine_compressed_checkpoints_still_load(assets, tmp_path, monkeypatch):
    """A real checkpoint deflated is not a bomb; the limits are configurable."""
    import zipfile

    import torch

    from edge_resnet.errors import CheckpointError
    from edge_resnet.models.checkpoint import read_state_dict

    torch.manual_seed(0)
    torch.save({f"layer{i}.weight": torch.randn(64, 64) for i in range(4)}, tmp_path / "small.pth")
    src = zipfile.ZipFile(tmp_path / "small.pth")
    with zipfile.ZipFile(tmp_path / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert len(read_state_dict(tmp_path / "deflated.pth")) == 4
    monkeypatch.setenv("EDGE_RESNET_MAX_UNPACKED_BYTES", "1000000")
    with pytest.raises(CheckpointError, match="over the"):
        read_state_dict(assets / "ck.pth")


CTRL_C_HOOK = '''
import os, signal, sys, time
import openvino
real = openvino.convert_model
def convert_model(*args, **kwargs):
    # Ctrl-C arrives while OpenVINO converts; OpenVINO loses it {how}
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
    except KeyboardInterrupt:{handler}
    return real(*args, **kwargs)
openvino.convert_model = convert_model
sys.argv[0] = "edge-resnet"
from edge_resnet.cli import main
main()
'''
# what OpenVINO does with a KeyboardInterrupt raised inside conversion: openvino_telemetry's is_docker()
# (called by convert_model) swallows it in a bare except; C++ frontends calling Python back turn it into a
# RuntimeError ("Check 'false' failed ... KeyboardInterrupt")
CTRL_C_WAYS = {
    "swallowed": ("(a bare except: in openvino_telemetry)", "\n        pass"),
    "as-runtime-error": ("(wrapped in a RuntimeError by its C++ frontend)",
                         "\n        raise RuntimeError(\"Check 'false' failed: KeyboardInterrupt\")"),
}


@pytest.mark.slow
@pytest.mark.parametrize("way", sorted(CTRL_C_WAYS))
def test_issue10_defect08_ctrl_c_during_openvino_conversion_stops_the_compile(assets, tmp_path, way):
    pytest.importorskip("openvino")
    import subprocess

    link_tree(assets, tmp_path / "ws")
    ws = tmp_path / "ws"
    how, handler = CTRL_C_WAYS[way]
    (ws / "hook.py").write_text(CTRL_C_HOOK.format(how=how, handler=handler))
    r = subprocess.run([sys.executable, "hook.py", "-q", "compile", "--onnx", "m.onnx", "--target", "cpu", "--fp32",
                        "-o", "ov"], cwd=ws, capture_output=True, text=True, timeout=600)
    assert r.returncode == 130, r.stdout + r.stderr
    assert "interrupted" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (ws / "ov").exists() and not [p for p in ws.iterdir() if p.name.startswith(".ov.")]






@pytest.mark.slow
def test_issue10_defect09_a_truncated_video_is_reported(workspace, caplog):
    """An AVI cut to 2/3 of its bytes: its header still declares 40 frames, OpenCV reads 23 and stops."""
    data = (workspace / "v.avi").read_bytes()
    rewrite(workspace / "cut.avi", data[: len(data) * 2 // 3])
    with caplog.at_level(logging.WARNING):  # (pytest's log capture takes the warnings from the CLI's output)
        r = CliRunner().invoke(cli, ["run", "B", "--source", "cut.avi", "--mode", "latency"])
    assert r.exit_code == 0 and "23 frames in" in r.output, r.output
    assert "cut.avi ended after 23 frames, but its header declares 40" in caplog.text and "truncated" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        r = CliRunner().invoke(cli, ["validate", "B", "--data", "cut.avi", "--no-per-layer", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "ended after 23 frames, but its header declares 40" in caplog.text, caplog.text


@pytest.mark.slow
def test_issue10_defect09_a_one_output_model_is_flagged_at_compile(one_output_bundle):
    assert "single output: softmax scores of one logit are always 1.0" in one_output_bundle.warnings


@pytest.mark.slow
def test_issue10_defect10_mean_and_std_apply_at_the_onnx_graphs_own_size(workspace):
    from edge_resnet.bundle import load_bundle

    r = CliRunner().invoke(cli, [*COMPILE_FP32, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "-o", "ms"])
    assert r.exit_code == 0, r.output
    spec = load_bundle(workspace / "ms").spec
    assert (spec.input_size, spec.resize) == (32, 37)  # the graph's 32x32, resized as the default convention
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.25, 0.25, 0.25)


@pytest.mark.slow
def test_issue10_defect11_a_killed_compile_leaves_nothing_the_next_one_does_not_clean(assets, tmp_path):
    import signal
    import subprocess

    link_tree(assets, tmp_path / "ws")
    ws = tmp_path / "ws"
    for _attempt in range(3):  # the compile may finish before it is killed: try again
        shutil.rmtree(ws / "k", ignore_errors=True)
        proc = subprocess.Popen(edge_resnet_cmd("-q", "compile", "--onnx", "m.onnx", "--target", "onnxruntime",
                                                "--fp32", "-o", "k"), cwd=ws, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        started = _poll(lambda: any((p / "model.float.onnx").exists() for p in _partials(ws, "k")), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if started and _partials(ws, "k") and not (ws / "k").exists():
            break
    left = _partials(ws, "k")
    assert left, "the compile was never caught in the act"
    # a look-alike the user made, not marked as ours: named, never removed
    (ws / ".k.partial-mine").mkdir()
    (ws / ".k.partial-mine" / "keep.txt").write_text("mine\n")
    r = subprocess.run(edge_resnet_cmd("compile", "--onnx", "m.onnx", "--target", "onnxruntime", "--fp32", "-o", "k"),
                       cwd=ws, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"removed {left[0]}" in r.stderr and "left by an interrupted compile" in r.stderr, r.stderr
    assert ".k.partial-mine looks like the leftover of an interrupted compile" in r.stderr, r.stderr
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith(".k.")) == [".k.partial-mine"]
    assert (ws / ".k.partial-mine" / "keep.txt").exists() and (ws / "k" / "manifest.json").exists()


def test_a_staging_directory_of_a_running_compile_is_left_alone(tmp_path):
    import subprocess

    from edge_resnet.bundle import STAGING_MARKER, clean_stale_staging

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        d = tmp_path / ".b.partial-x"
        d.mkdir()
        (d / STAGING_MARKER).write_text(json.dumps({"pid": alive.pid, "host": __import__("socket").gethostname()}))
        assert clean_stale_staging(tmp_path / "b") == [] and d.exists()
    finally:
        alive.kill()
        alive.wait()
    assert clean_stale_staging(tmp_path / "b") == [d] and not d.exists()
