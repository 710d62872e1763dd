"""--ray: validation, calibration and batch inference on a local Ray cluster equal the local runs.

One local cluster (2 CPUs, a small object store) for the whole module; the digits ResNet-18 bundles
of the session (test_runtime's). Validation JSON is compared field by field with the local run's,
calibration byte for byte, batch inference against the runtime on the same decoded frames, also
after one of the actors is killed mid-run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from test_runtime import compiled_bundle, digit_frames  # the session's bundles, shared with test_runtime

from edge_resnet.cli.app import cli
from edge_resnet.distributed.cluster import LOCAL_OBJECT_STORE_BYTES, RayError, connect

ray = pytest.importorskip("ray")
cv2 = pytest.importorskip("cv2")

README = Path(__file__).resolve().parents[1] / "README.md"
N_IMAGES, N_VIDEO = 10, 30


@pytest.fixture(scope="session")
def cluster() -> Any:
    """The one local cluster of the session; --ray local inside the tests joins it (already connected).

    Sized as ``--ray local`` sizes its own, and told that the disk is full (capacity threshold 0): Ray
    then refuses to spill, so a workload that would spill fails here whatever the disk holds.
    """
    ray.init(num_cpus=2, object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
             log_to_driver=False, configure_logging=False, _system_config={"local_fs_capacity_threshold": 0.0})
    yield ray
    ray.shutdown()


def invoke(*args: str) -> Any:
    r = CliRunner().invoke(cli, ["-q", *args])
    assert r.exit_code == 0, r.output
    return r


def bundle_of(request: pytest.FixtureRequest, name: str) -> Path:
    if name == "openvino":
        pytest.importorskip("openvino")
    return compiled_bundle(request, name)


# ------------------------------------------------------------------------------------------- validate


def assert_same_json(local: Any, distributed: Any, where: str = "") -> None:
    """Equal field by field: ints, strings, bools and None exactly; floats within 1e-9 relative."""
    assert type(local) is type(distributed), f"{where}: {local!r} vs {distributed!r}"
    if isinstance(local, dict):
        assert local.keys() == distributed.keys(), where
        for k in local:
            assert_same_json(local[k], distributed[k], f"{where}.{k}")
    elif isinstance(local, list):
        assert len(local) == len(distributed), where
        for i, (a, b) in enumerate(zip(local, distributed, strict=True)):
            assert_same_json(a, b, f"{where}[{i}]")
    elif isinstance(local, float):
        assert math.isclose(local, distributed, rel_tol=1e-9, abs_tol=0.0), f"{where}: {local} vs {distributed}"
    else:
        assert local == distributed, f"{where}: {local!r} vs {distributed!r}"


@pytest.mark.slow
def test_validate_on_ray_gives_the_local_json(cluster: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The cpu (OpenVINO) bundle; the onnxruntime one, with the per-layer error, is the README's."""
    bundle = bundle_of(request, "openvino")
    common = ["validate", str(bundle), "--data", "digits:test", "--count", "90", "--batch-size", "16", "--no-per-layer"]
    invoke(*common, "--json", str(tmp_path / "local.json"))
    invoke(*common, "--json", str(tmp_path / "ray.json"), "--ray", "local", "--no-progress")
    local, distributed = (json.loads((tmp_path / f).read_text()) for f in ("local.json", "ray.json"))
    assert local["data"]["count"] == 90 and local["confusion"] and local["metrics"]["sqnr_db"]  # the fields are there
    assert_same_json(local, distributed)


# ----------------------------------------------------------------------------------------- calibration


@pytest.mark.slow
def test_compile_calibration_on_ray_gives_the_local_statistics_and_qdq_graph(
        cluster: Any, request: pytest.FixtureRequest) -> None:
    """compile's calibration pass (calibrate_for) with and without --ray: equal histograms, the same bytes."""
    from dataclasses import replace

    from edge_resnet.bundle import load_bundle
    from edge_resnet.compile import CompileOptions, calibrate_for, quant_config
    from edge_resnet.distributed.cluster import RayOptions
    from edge_resnet.graph.load import load_onnx
    from edge_resnet.graph.prepare import prepare_float_graph
    from edge_resnet.quant.ptq import quantize_graph
    from edge_resnet.targets import get_target

    bundle = bundle_of(request, "onnxruntime")
    fg = prepare_float_graph(load_onnx(bundle / "model.float.onnx"))
    profile = get_target("onnxruntime")
    spec = load_bundle(bundle).spec
    local_options = CompileOptions(target="onnxruntime", calib="digits:train", calib_count=48, progress=False)
    local, record = calibrate_for(fg, profile, spec, local_options)
    distributed, ray_record = calibrate_for(fg, profile, spec, replace(local_options, ray=RayOptions("local")))
    assert record == ray_record and distributed.images == local.images == 48
    assert local.bias is not None and distributed.bias is not None  # bias correction is on by default
    assert distributed.hists.keys() == local.hists.keys()
    assert all(distributed.hists[t] == h for t, h in local.hists.items())
    config = quant_config(profile)
    graphs = [quantize_graph(fg.model, st, config, local_options.calibration).model.SerializeToString()
              for st in (local, distributed)]
    assert graphs[0] == graphs[1]


def test_histograms_merged_from_batches_equal_one_pass() -> None:
    """The driver's merge (per-batch histograms, any order) is exact: no cluster needed to check it."""
    from edge_resnet.quant.histogram import StreamingHistogram

    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(500).astype(np.float32) * s for s in (0.5, 3.0, 1.0, 9.0)]
    one = StreamingHistogram(64)
    for b in batches:
        one.update(b)
    merged = StreamingHistogram(64)
    for b in reversed(batches):
        part = StreamingHistogram(64)
        part.update(b)
        merged.merge(part)
    assert merged == one


def test_streaming_metrics_merged_in_order_are_the_one_pass_floats() -> None:
    from edge_resnet.validate.metrics import StreamingMetrics

    rng = np.random.default_rng(1)
    ref = rng.standard_normal((40, 10))
    out = ref + 0.1 * rng.standard_normal((40, 10))
    y = rng.integers(0, 10, 40)
    one = StreamingMetrics(10)
    merged = StreamingMetrics(10)
    for s in range(0, 40, 16):
        one.update(ref[s:s + 16], out[s:s + 16], y[s:s + 16])
        part = StreamingMetrics(10)
        part.update(ref[s:s + 16], out[s:s + 16], y[s:s + 16])
        merged.merge(part)
    for field in ("count", "agree", "cos_sum", "cos_min", "signal", "noise", "labelled", "correct"):
        assert getattr(merged, field) == getattr(one, field), field
    for key in ("float", "int8"):
        np.testing.assert_array_equal(merged.confusion[key], one.confusion[key])


# ------------------------------------------------------------------------------------- batch inference


@pytest.fixture(scope="module")
def frames_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten digit images (PNG) and a 30-frame MJPG video of other digits, in one folder."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("frames")
    frames, _ = digit_frames(N_IMAGES + N_VIDEO, size=64)
    for i, f in enumerate(frames[:N_IMAGES]):
        Image.fromarray(np.ascontiguousarray(f[..., ::-1])).save(folder / f"img{i:02d}.png")
    writer = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (64, 64))
    for f in frames[N_IMAGES:]:
        writer.write(f)
    writer.release()
    return folder


def runtime_labels(bundle: Path, folder: Path) -> list[tuple[str, int, int]]:
    """(file name, frame, top-1 index) of every item, by the runtime, in source order (names sorted)."""
    import edge_resnet.runtime as rt
    from edge_resnet.data import load_image

    out: list[tuple[str, int, int]] = []
    with rt.load(bundle) as model:
        for path in sorted(folder.iterdir()):
            if path.suffix == ".avi":
                with model.stream(str(path), top_k=1) as results:  # the runtime's own video reading
                    out += [(path.name, r.index, r.classification.index) for r in results]
            else:
                out.append((path.name, 0, model.classify(load_image(path), top_k=1, order="rgb")[0].index))
    return out


def read_jsonl(path: Path) -> list[tuple[str, int, int]]:
    return [(Path(r["source"]).name, r["frame"], r["index"]) for r in map(json.loads, path.read_text().splitlines())]


def read_parquet(path: Path) -> list[tuple[str, int, int]]:
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pydict()
    return [(Path(s).name, f, i) for s, f, i in zip(t["source"], t["frame"], t["index"], strict=True)]


def infer_actors() -> list[dict[str, Any]]:
    """The batch run's actors, from the cluster's actor table (the state API needs the dashboard)."""
    from ray._private.state import state

    return [a for a in state.actor_table(None).values() if "InferActor" in a["ActorClassName"]]


@pytest.mark.slow
def test_batch_run_after_an_actor_is_killed_mid_run_loses_and_repeats_nothing(
        cluster: Any, request: pytest.FixtureRequest, frames_folder: Path, tmp_path: Path) -> None:
    """One actor, SIGKILLed once its first batch is back: Ray restarts it and runs the rest (and what
    the dead one held) again; the results are still every item once, in order."""
    from edge_resnet.distributed.batch_run import run_batch
    from edge_resnet.distributed.cluster import RayOptions

    bundle = bundle_of(request, "onnxruntime")
    before = {a["ActorID"] for a in infer_actors()}
    killed: list[int] = []

    def kill_the_actor(seq: int) -> None:
        if killed:
            return
        alive = [a for a in infer_actors() if a["ActorID"] not in before and a["State"] == "ALIVE"]
        assert len(alive) == 1, alive
        os.kill(alive[0]["Pid"], signal.SIGKILL)  # the worker process dies, as on a lost node
        killed.append(seq)

    out = tmp_path / "results.jsonl"
    summary = run_batch(bundle, str(frames_folder), out, RayOptions("local", actors=1), batch_size=4,
                        progress=False, on_batch=kill_the_actor)
    assert killed == [0] and summary.items == N_IMAGES + N_VIDEO
    assert read_jsonl(out) == runtime_labels(bundle, frames_folder)
    ours = [a for a in infer_actors() if a["ActorID"] not in before]
    assert len(ours) == 1 and ours[0]["NumRestarts"] >= 1, ours  # the batches after the kill ran on its restart


# ------------------------------------------------------------------------------------ without Ray, README


def test_ray_without_ray_installed_is_one_clear_message(tmp_path: Path) -> None:
    """Ray blocked from importing: --help and a local command work; --ray names the extra, no traceback."""
    code = (
        "import sys\n"
        "sys.modules['ray'] = None  # import ray -> ImportError, as when it is not installed\n"
        "import edge_resnet.cli.validate_cmd, edge_resnet.cli.run_cmd, edge_resnet.cli.compile_cmd\n"
        "from edge_resnet.cli.app import main\n"
        "main(sys.argv[1:])\n")
    def edge(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)

    helped = edge("validate", "--help")
    assert helped.returncode == 0 and "--ray" in helped.stdout
    failed = edge("validate", str(tmp_path), "--data", "digits:test", "--ray", "local")
    assert failed.returncode != 0
    assert "edge-resnet[ray]" in failed.stderr and "Traceback" not in failed.stderr
    assert failed.stderr.count("error:") == 1


def test_a_workers_error_is_one_clear_message(cluster: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A video OpenCV cannot open, found by the Ray task that counts its frames: the worker's DataError
    reaches the user as that one message, not as Ray's traceback; no results file is left."""
    bundle = bundle_of(request, "onnxruntime")
    (tmp_path / "broken.avi").write_bytes(b"not a video" * 100)
    r = CliRunner().invoke(cli, ["run", str(bundle), "--source", str(tmp_path), "--ray", "local",
                                 "--out", str(tmp_path / "out.jsonl")])
    assert r.exit_code == 1, r.output
    assert "OpenCV cannot open video" in r.output and "Traceback" not in r.output and "RayTaskError" not in r.output
    assert not (tmp_path / "out.jsonl").exists()


def readme_ray_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- ray-commands -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no <!-- ray-commands --> block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def readme_args(line: str, bundle: Path, frames: Path) -> list[str]:
    args = shlex.split(line.replace("edge-resnet-demo/onnxruntime", str(bundle)).replace("videos/", f"{frames}/"))
    assert args[0] == "edge-resnet", line
    return args[1:]


def without_ray(args: list[str]) -> list[str]:
    i = args.index("--ray")
    return args[:i] + args[i + 2:]


def swap(args: list[str], option: str, value: str) -> list[str]:
    i = args.index(option)
    return [*args[:i + 1], value, *args[i + 2:]]


@pytest.mark.slow
def test_readme_ray_commands_run_and_give_the_local_results(cluster: Any, request: pytest.FixtureRequest,
                                                            frames_folder: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command of the README's Ray section, on the session's onnxruntime bundle and a folder of
    images and a video, each against its local counterpart: the validation JSON field by field (with
    the per-layer error), the calibrated Q/DQ graph byte for byte, the batch run's rows == the runtime."""
    bundle = bundle_of(request, "onnxruntime")
    monkeypatch.chdir(tmp_path)
    commands = {line.split()[1]: readme_args(line, bundle, frames_folder) for line in readme_ray_commands()}
    assert sorted(commands) == ["quantize", "run", "validate"]
    for args in commands.values():
        invoke(*args)

    invoke(*swap(without_ray(commands["validate"]), "--json", "local.json"))
    local, distributed = (json.loads(Path(f).read_text()) for f in ("local.json", "validation.json"))
    assert local["per_layer"] and local["confusion"] and local["data"]["count"] > 100
    assert_same_json(local, distributed)

    invoke(*swap(without_ray(commands["quantize"]), "-o", "local.int8.onnx"))
    assert Path("local.int8.onnx").read_bytes() == Path("model.int8.onnx").read_bytes()

    rows = read_parquet(Path("results.parquet"))
    assert rows == runtime_labels(bundle, frames_folder)  # every image and frame once, in source order
    assert len(rows) == N_IMAGES + N_VIDEO
    again = CliRunner().invoke(cli, commands["run"])
    assert again.exit_code != 0 and "never overwrites" in again.output  # the results file is kept


def test_a_full_object_store_on_a_full_disk_is_one_clear_error(cluster: Any):
    """Ray's own OutOfDiskError (the store cannot spill: the fixture's disk counts as full) becomes ours."""
    refs = []
    with pytest.raises(RayError) as info, connect("local") as joined:
        for _ in range(2 * LOCAL_OBJECT_STORE_BYTES // (16 << 20)):
            refs.append(joined.ray.put(np.ones(16 << 20, dtype=np.uint8)))
    refs.clear()
    assert "ran out of object store memory" in str(info.value) and "95% full" in str(info.value)
    assert "free disk space" in (info.value.fix or "")
