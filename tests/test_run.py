"""edge-resnet run: a synthetic video of real digits, classified through the CLI, against the runtime and
direct artifact inference on the same decoded frames."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from test_runtime import compiled_bundle, digit_frames  # the session's bundles, shared with test_runtime

import edge_resnet.runtime as rt
from edge_resnet.cli import run_cmd
from edge_resnet.cli.app import cli

cv2 = pytest.importorskip("cv2")

N_FRAMES = 48
FPS = 12.0


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def decode(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while (got := cap.read())[0]:
        frames.append(got[1])
    cap.release()
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits:test scaled up 8x to 64x64 (so MJPG keeps them readable), tinted, as an MJPG .avi."""
    frames, _ = digit_frames(N_FRAMES, size=64)
    return write_video(tmp_path_factory.mktemp("video") / "digits.avi", frames)


@pytest.fixture(scope="module", params=["openvino", "onnxruntime"])
def bundle(request: pytest.FixtureRequest) -> Path:
    if request.param == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino not installed")
    return compiled_bundle(request, request.param)


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, ["run", *args])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["throughput", "latency"])
def test_run_on_a_video_matches_the_runtime_and_direct_inference(bundle: Path, video: Path, tmp_path: Path,
                                                                 mode: str) -> None:
    out = tmp_path / "out.jsonl"
    r = run(str(bundle), "--source", str(video), "--top-k", "3", "--jsonl", str(out), "--mode", mode)
    assert r.exit_code == 0, r.output
    records = read_jsonl(out)
    assert [rec["frame"] for rec in records] == list(range(N_FRAMES))
    assert all(len(rec["top_k"]) == 3 and rec["latency_ms"] > 0 for rec in records)

    decoded = decode(video)  # compression changed the pixels: compare on what the CLI saw
    assert len(decoded) == N_FRAMES
    with rt.load(bundle) as model:
        expected = model.classify(decoded, top_k=3)  # OpenCV frames are BGR, the runtime's default
        direct = np.concatenate([model.runner.infer(model.spec.apply(f, "bgr")[None]) for f in decoded])
    for rec, c, logits in zip(records, expected, direct, strict=True):
        assert [t["index"] for t in rec["top_k"]] == list(c.indices)
        assert [t["label"] for t in rec["top_k"]] == list(c.labels)
        assert [t["score"] for t in rec["top_k"]] == pytest.approx(c.scores, abs=1e-5)
        assert rec["top_k"][0]["index"] == int(np.argmax(logits))
    labels = digit_frames(N_FRAMES)[1]
    assert np.mean([rec["top_k"][0]["index"] == y for rec, y in zip(records, labels, strict=True)]) > 0.8
    assert f"{N_FRAMES} frames in" in r.output and "fps" in r.output


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_save_writes_an_annotated_video_with_every_frame(bundle: Path, video: Path, tmp_path: Path,
                                                         suffix: str) -> None:
    saved = tmp_path / f"annotated{suffix}"
    r = run(str(bundle), "-s", str(video), "--save", str(saved))
    assert r.exit_code == 0, r.output
    cap = cv2.VideoCapture(str(saved))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS, rel=0.01)  # the source's frame rate
    cap.release()
    frames = decode(saved)
    assert len(frames) == N_FRAMES and frames[0].shape == (64, 64, 3)
    source = decode(video)
    # the label and fps are drawn in the top-left corner; the bottom-right stays the picture
    assert all(np.abs(a[:20].astype(int) - b[:20]).mean() > 5 for a, b in zip(frames, source, strict=True))
    assert f"wrote {saved} ({N_FRAMES} frames at {FPS:g} fps)" in r.output


@pytest.mark.slow
def test_max_frames_and_an_image_folder(bundle: Path, video: Path, tmp_path: Path) -> None:
    out = tmp_path / "ten.jsonl"
    r = run(str(bundle), "-s", str(video), "--max-frames", "10", "--jsonl", str(out), "--save", str(tmp_path / "t.avi"))
    assert r.exit_code == 0, r.output
    assert len(read_jsonl(out)) == 10 and len(decode(tmp_path / "t.avi")) == 10

    folder = tmp_path / "frames"
    folder.mkdir()
    frames, _ = digit_frames(6, size=48)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:02d}.png"), f)
    out = tmp_path / "folder.jsonl"
    r = run(str(bundle), "-s", str(folder), "--jsonl", str(out), "--top-k", "1", "--save", str(tmp_path / "f.avi"))
    assert r.exit_code == 0, r.output
    with rt.load(bundle) as model:
        expected = model.classify(frames, top_k=1)
    assert [rec["top_k"][0]["index"] for rec in read_jsonl(out)] == [c.index for c in expected]
    assert len(decode(tmp_path / "f.avi")) == 6  # no frame rate in a folder: written at the default
    # --order overrides the source's own (PNG files decode to RGB): reading them as BGR changes the input
    r = run(str(bundle), "-s", str(folder), "--jsonl", str(out), "--order", "bgr")
    assert r.exit_code == 0, r.output
    with rt.load(bundle) as model:
        swapped = model.classify([f[..., ::-1] for f in frames], top_k=5)
    assert [[t["index"] for t in rec["top_k"]] for rec in read_jsonl(out)] == [list(c.indices) for c in swapped]


@pytest.mark.slow
def test_progress_lines_are_rate_limited(bundle: Path, video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_cmd, "PRINT_EVERY_SECONDS", 1e9)
    r = run(str(bundle), "-s", str(video))
    assert r.exit_code == 0, r.output
    assert sum(line.startswith("frame ") for line in r.output.splitlines()) == 1  # the first frame only
    monkeypatch.setattr(run_cmd, "PRINT_EVERY_SECONDS", 0.0)
    r = run(str(bundle), "-s", str(video))
    assert sum(line.startswith("frame ") for line in r.output.splitlines()) == N_FRAMES


def test_ticker_and_meter() -> None:
    t = run_cmd.Ticker(1.0)
    assert [t.due(x) for x in (0.0, 0.5, 0.99, 1.0, 1.2, 2.5)] == [True, False, False, True, False, True]
    m = run_cmd.Meter(start=0.0)
    for i in range(11):
        m.tick(i * 0.1, 0.02)
    assert m.fps == pytest.approx(10.0)
    assert m.summary(1.0).startswith("11 frames in 1.0 s: 11.0 fps; latency mean 20.0 ms")


@pytest.mark.parametrize(("source", "expected"), [
    ("camera:97", ["camera:97", "cv2.VideoCapture(97) failed"]),
    ("no/such/clip.mp4", ["no/such/clip.mp4", "does not exist"]),
])
@pytest.mark.slow
def test_an_unopenable_source_is_a_clear_error(bundle: Path, source: str, expected: list[str], tmp_path: Path) -> None:
    out = tmp_path / "never.jsonl"
    r = run(str(bundle), "--source", source, "--jsonl", str(out))
    assert r.exit_code == 1
    assert all(e in r.output for e in expected) and "fix:" in r.output
    assert not out.exists()


@pytest.mark.slow
def test_run_needs_a_classifier_bundle(request: pytest.FixtureRequest, video: Path) -> None:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino not installed")
    r = run(str(compiled_bundle(request, "embedding")), "-s", str(video))
    assert r.exit_code == 1 and "embedding bundle" in r.output and "cannot classify" in r.output


@pytest.mark.slow
def test_save_with_an_unknown_extension(bundle: Path, video: Path, tmp_path: Path) -> None:
    r = run(str(bundle), "-s", str(video), "--save", str(tmp_path / "out.xyz"))
    assert r.exit_code == 1 and "unknown video type '.xyz'" in r.output
