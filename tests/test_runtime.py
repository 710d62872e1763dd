"""edge_resnet.runtime: bundles on camera frames, videos and streams, against the raw backend calls.

The bundles are the digits-trained ResNet-18 (conftest) compiled once per session for OpenVINO (cpu),
ONNX Runtime, and as an OpenVINO embedding model (--no-top --pooling avg); test_run.py reuses them.
"""

from __future__ import annotations

import _thread
import gc
import importlib.util
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import edge_resnet.runtime as rt
from edge_resnet.data import ChannelOrder, load_digits_split
from edge_resnet.errors import BackendError, BundleError, DataError
from edge_resnet.postprocess import l2_normalize, top_k_softmax
from edge_resnet.runtime.frame_sources import SourceKind, open_source

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
needs_cv2 = pytest.mark.skipif(importlib.util.find_spec("cv2") is None, reason="opencv not installed")

# ------------------------------------------------------------------------------------------------ bundles

# name -> compile arguments (besides model, weights, sizes and calibration)
BUNDLE_ARGS: dict[str, list[str]] = {
    "openvino": ["--target", "cpu"],
    "onnxruntime": ["--target", "onnxruntime"],
    "embedding": ["--target", "cpu", "--no-top", "--pooling", "avg"],
}
CLASSIFIERS = ["openvino", "onnxruntime"]
_BUNDLES = pytest.StashKey[dict[str, Path]]()


def _headless_checkpoint(checkpoint: Path, out: Path) -> Path:
    """The checkpoint without its fc layer: compile --no-top takes only the backbone's weights."""
    import torch

    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("fc.")}, out)
    return out


def compiled_bundle(request: pytest.FixtureRequest, name: str) -> Path:
    """Bundle ``name`` of BUNDLE_ARGS, compiled once per test session (shared with test_run.py)."""
    store = request.config.stash.setdefault(_BUNDLES, {})
    if name not in store:
        from edge_resnet.cli.app import cli

        digits = request.getfixturevalue("digits_r18")
        cache_dir = request.getfixturevalue("cache_dir")
        tmp = request.getfixturevalue("tmp_path_factory").mktemp(f"bundle-{name}")
        weights = digits.checkpoint
        if "--no-top" in BUNDLE_ARGS[name]:
            weights = _headless_checkpoint(weights, tmp / "backbone.pth")
        args = ["compile", "--model", "resnet18", "--num-classes", "10", "--weights", str(weights),
                "--input-size", "32", "--resize", "32", "--calib", "digits:train", "--calib-count", "128",
                *BUNDLE_ARGS[name], "-o", str(tmp / "bundle")]
        r = CliRunner().invoke(cli, args, env={"EDGE_RESNET_CACHE": str(cache_dir)})
        assert r.exit_code == 0, r.output
        store[name] = tmp / "bundle"
    return store[name]


@pytest.fixture(scope="module", params=CLASSIFIERS)
def model(request: pytest.FixtureRequest) -> Any:
    if request.param == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino not installed")
    m = rt.load(compiled_bundle(request, request.param))
    yield m
    m.close()


@pytest.fixture(scope="module")
def embedder(request: pytest.FixtureRequest) -> Any:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino not installed")
    m = rt.load(compiled_bundle(request, "embedding"))
    yield m
    m.close()


# ------------------------------------------------------------------------------------------------- frames


def digit_frames(n: int, size: int = 64, start: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """digits:test images scaled up to ``size`` and tinted (so BGR and RGB differ), as BGR frames."""
    x, y = load_digits_split("test")
    idx = np.arange(start, start + n) % len(x)
    up = np.repeat(np.repeat(x[idx], size // 8, axis=1), size // 8, axis=2).astype(np.float32)
    rgb = np.clip(up * np.array([1.0, 0.75, 0.45], np.float32), 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(f[..., ::-1]) for f in rgb], y[idx]


def raw_logits(m: Any, bgr_frames: list[np.ndarray]) -> np.ndarray:
    """What validate-style direct artifact inference gives: the bundle's spec, then runner.infer."""
    return np.concatenate([m.runner.infer(m.spec.apply(f, "bgr")[None]) for f in bgr_frames])


def indices(results: list[Any]) -> list[tuple[int, ...]]:
    return [r.indices for r in results]


def threads_settle() -> int:
    """threading.active_count() once threads outside the runtime (timers) are done."""
    for t in threading.enumerate():
        if isinstance(t, threading.Timer):
            t.join()
    return threading.active_count()


# ----------------------------------------------------------------------------------------- postprocessing


def softmax(logits: np.ndarray) -> np.ndarray:  # the reference: float64, max-subtracted
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_softmax_top_k_and_l2_normalize() -> None:
    logits = np.array([[1.0, 3.0, 3.0, -2.0], [1000.0, 0.0, 0.0, 0.0]], np.float32)
    p = softmax(logits)
    idx, scores = top_k_softmax(logits, 3)
    assert idx.tolist() == [[1, 2, 0], [0, 1, 2]]  # ties: the lower class first
    assert top_k_softmax(logits, 1)[0].tolist() == [[1], [0]]
    assert np.isfinite(scores).all() and np.allclose(scores, np.take_along_axis(p, idx, 1))
    assert np.allclose(top_k_softmax(logits, 1)[1], np.take_along_axis(p, idx[:, :1], 1))
    v = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32))
    assert v.dtype == np.float32 and np.allclose(v, [[0.6, 0.8], [0.0, 0.0]])


# -------------------------------------------------------------------------------------------- load, classify


@pytest.mark.slow
def test_load_picks_the_backend_of_the_bundle(model: Any) -> None:
    runner_class = {"openvino": "OpenVINORunner", "onnxruntime": "OnnxRuntimeRunner"}[model.backend.value]
    assert type(model.runner).__name__ == runner_class
    assert model.kind is rt.ModelKind.CLASSIFIER
    assert model.labels == [str(i) for i in range(10)]
    assert model.input_shape == (3, 32, 32)


@pytest.mark.slow
def test_classify_equals_direct_artifact_inference(model: Any) -> None:
    frames, labels = digit_frames(40)
    results = model.classify(frames, top_k=3)
    logits = raw_logits(model, frames)
    expected = np.argsort(-logits, axis=1, kind="stable")[:, :3]
    assert indices(results) == [tuple(row) for row in expected.tolist()]
    for r, row in zip(results, softmax(logits), strict=True):
        assert r.labels == tuple(model.labels[i] for i in r.indices)
        assert r.scores == pytest.approx(row[list(r.indices)].tolist(), rel=1e-5)
        assert r.scores[0] >= r.scores[1] >= r.scores[2]
    # real digits, tinted (out of the training distribution): as accurate as the bundle's float model
    from edge_resnet.quant.ptq import run_onnx

    reference = run_onnx(model.bundle.float_model(), np.stack([model.spec.apply(f, "bgr") for f in frames]))
    accuracy, float_accuracy = (np.mean([i == y for i, y in zip(top1, labels, strict=True)])
                                for top1 in ([r.index for r in results], reference.argmax(1)))
    assert float_accuracy > 0.8 and accuracy >= float_accuracy - 1 / len(frames)


@pytest.mark.slow
def test_frames_are_normalised_inside_the_engine_with_the_host_paths_numbers(model: Any) -> None:
    """The engine takes the resized, cropped uint8 frames and does the float conversion, channel swap, mean/std and
    layout itself (OpenVINO PrePostProcessor / ONNX ops); its INT8 outputs equal the host-normalised path's bit for
    bit, on real digits frames in both channel orders."""
    size = model.spec.input_size
    assert model.frame_runner is not None and "normalised in the engine" in repr(model)
    assert list(model.frame_runner.input_metadata.values()) == [(np.dtype(np.uint8), (None, size, size, 3))]
    inputs = model.bundle.manifest["inputs"]
    assert inputs["frames"]["dtype"] == "uint8" and inputs["frames"]["shape"] == [None, size, size, 3]
    assert inputs["tensor"]["shape"] == [None, 3, size, size]
    frames, _ = digit_frames(64, start=100)
    batch = model.engine_batch(frames)
    assert batch.dtype == np.uint8 and batch.shape == (64, size, size, 3)
    np.testing.assert_array_equal(model.infer(frames), raw_logits(model, frames))
    rgb = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
    np.testing.assert_array_equal(model.infer(rgb, order="rgb"), raw_logits(model, frames))
    with rt.load(model.bundle.path, normalize_in_engine=False) as host:
        assert host.frame_runner is None
        np.testing.assert_array_equal(host.infer(frames), raw_logits(model, frames))
    with pytest.raises(BackendError, match="takes uint8 frames"):
        model.frame_runner.infer(model.preprocess(frames[:2]))


@pytest.mark.slow
def test_every_input_form_gives_the_same_result(model: Any) -> None:
    from PIL import Image

    frames, _ = digit_frames(6)
    rgb = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
    expected = indices(model.classify(frames, top_k=2))
    assert indices([model.classify(f, top_k=2)[0] for f in frames]) == expected  # one frame at a time
    assert indices(model.classify(np.stack(frames), top_k=2)) == expected  # (N, H, W, 3) uint8
    assert indices(model.classify(rgb, top_k=2, order="rgb")) == expected
    assert indices(model.classify([Image.fromarray(f) for f in rgb], top_k=2)) == expected  # PIL is RGB
    assert indices(model.classify(model.preprocess(frames), top_k=2)) == expected  # NCHW float32 passes through
    as_rgb = rt.load(model.bundle.path, order="rgb")
    assert indices(as_rgb.classify(rgb, top_k=2)) == expected
    # the order matters: these frames are tinted, so reading BGR as RGB changes the input
    assert not np.array_equal(model.preprocess(frames), model.preprocess(frames, order="rgb"))


@pytest.mark.slow
def test_top_k_is_capped_at_the_number_of_classes(model: Any) -> None:
    frames, _ = digit_frames(1)
    (r,) = model.classify(frames[0], top_k=50)
    assert sorted(r.indices) == list(range(10)) and sum(r.scores) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(DataError, match="top_k"):
        model.classify(frames[0], top_k=0)


BAD_FRAMES = {
    "float dtype": (np.zeros((64, 64, 3), np.float32), "dtype float32"),
    "int64 dtype": (np.zeros((64, 64, 3), np.int64), "dtype int64"),
    "two channels": (np.zeros((64, 64, 2), np.uint8), "2 channels"),
    "five channels": (np.zeros((64, 64, 5), np.uint8), "5 channels"),
    "empty": (np.zeros((0, 64, 3), np.uint8), "empty"),
    "1-D": (np.zeros(64, np.uint8), "1 dimensions"),
    "5-D": (np.zeros((1, 1, 8, 8, 3), np.uint8), "5 dimensions"),
    "not an array": ("frame.jpg", "str"),
    "empty list": ([], "empty list"),
    "preprocessed, wrong size": (np.zeros((1, 3, 64, 64), np.float32), "preprocessed batch has shape"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_malformed_frames_are_a_clear_data_error(model: Any, case: str) -> None:
    frame, message = BAD_FRAMES[case]
    with pytest.raises(DataError, match=message) as exc:
        model.classify(frame)
    assert exc.value.fix  # every one says what to do


@pytest.mark.slow
def test_a_bad_frame_in_a_list_is_named(model: Any) -> None:
    frames, _ = digit_frames(3)
    frames[1] = frames[1][..., :2]
    with pytest.raises(DataError, match="frame 1 of 3 has 2 channels"):
        model.classify(frames)


@pytest.mark.slow
def test_classify_is_thread_safe(model: Any) -> None:
    frames, _ = digit_frames(64)
    sequential = [model.classify(f, top_k=3)[0] for f in frames]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda f: model.classify(f, top_k=3)[0], frames))
    assert concurrent == sequential  # indices, labels and scores


# ------------------------------------------------------------------------------------------------ embeddings


@pytest.mark.slow
def test_embed_gives_l2_normalised_vectors(embedder: Any) -> None:
    frames, labels = digit_frames(60)
    v = embedder.embed(frames)
    assert embedder.kind is rt.ModelKind.EMBEDDING
    assert v.shape == (60, 512) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    raw = raw_logits(embedder, frames)
    assert np.allclose(v, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    sim = v @ v.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    assert sim[same].mean() > sim[labels[:, None] != labels[None, :]].mean()  # digits cluster


@pytest.mark.slow
def test_classify_on_an_embedding_bundle_and_embed_on_a_classifier_are_errors(embedder: Any, model: Any) -> None:
    frames, _ = digit_frames(1)
    with pytest.raises(BundleError, match="embedding bundle .* cannot classify") as exc:
        embedder.classify(frames)
    assert "embed" in exc.value.fix
    with pytest.raises(BundleError, match="classifier bundle .* cannot embed") as exc:
        model.embed(frames)
    assert "--no-top --pooling avg" in exc.value.fix


# --------------------------------------------------------------------------------------------------- streams


# stream options -> what they exercise
STREAM_OPTIONS: dict[str, dict[str, Any]] = {
    "defaults": {},  # throughput: the second runner, workers = its parallel inferences + 1, batches of <= 4
    "throughput, no batching": {"batch": 1},
    "throughput, 3 workers x 2, buffer 1": {"workers": 3, "batch": 2, "buffer": 1},
    "latency": {"mode": "latency"},  # the model's runner, the decoder preprocesses, 1 worker
    "latency, 2 workers": {"mode": rt.Mode.LATENCY, "workers": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("options", list(STREAM_OPTIONS))
def test_stream_gives_the_classify_results_in_frame_order(model: Any, options: str) -> None:
    """Exactly classify's results (scores compared as floats, not approximately): INT8 outputs are
    bit-identical across the latency/throughput configurations and batch sizes."""
    frames, _ = digit_frames(50)
    expected = model.classify(frames, top_k=2)
    with model.stream(frames, top_k=2, keep_frames=True, **STREAM_OPTIONS[options]) as results:
        got = list(results)
    assert [r.index for r in got] == list(range(50))
    assert [r.classification for r in got] == expected
    assert all(r.frame is f for r, f in zip(got, frames, strict=True)) and all(r.latency > 0 for r in got)


@pytest.mark.slow
def test_throughput_streams_run_the_backends_throughput_configuration(request: pytest.FixtureRequest,
                                                                       model: Any) -> None:
    from edge_resnet.backends.base import get_backend

    runner, plan = model.throughput_runner()
    assert plan == get_backend(model.backend).throughput_config() and runner is not model.runner
    assert model.throughput_runner()[0] is runner  # loaded once, kept for later streams
    info = runner.describe()
    if model.backend.value == "openvino":
        assert model.runner.describe()["performance_hint"] == "LATENCY"
        assert info["performance_hint"] == "THROUGHPUT" and runner.optimal_requests() >= 1
    else:
        assert model.runner.describe()["intra_op_num_threads"] is None and info["intra_op_num_threads"] == 1
    frames, _ = digit_frames(4)
    with model.stream(frames) as s:
        assert (s.workers, s.batch) == (runner.parallel_requests() + 1, 4)
        assert s.max_in_flight == 2 * s.workers * s.batch
    with model.stream(frames, mode="latency") as s:
        assert (s.workers, s.batch, s.max_in_flight) == (1, 1, 2)

    # a model loaded in the throughput configuration already streams on its own runner
    options = {"hint": "throughput"} if model.backend.value == "openvino" else {"threads": 1}
    with rt.load(model.bundle.path, **options) as loaded:
        assert loaded.throughput_runner()[0] is loaded.frame_runner  # the runner frames go to (normalising)
    other = rt.load(model.bundle.path)
    second, _ = other.throughput_runner()
    other.close()  # closes both runners
    assert other._throughput is None
    if model.backend.value == "onnxruntime":
        assert second.session is None
    with pytest.raises(BundleError, match="is closed"):  # not loaded again behind the caller's back
        other.stream(frames)


def test_unknown_stream_mode_is_a_clear_error(model: Any) -> None:
    with pytest.raises(DataError, match="unknown stream mode 'fast'") as exc:
        model.stream([digit_frames(1)[0][0]], mode="fast")
    assert "throughput" in exc.value.fix and "latency" in exc.value.fix


@pytest.mark.slow
def test_stream_of_embeddings(embedder: Any) -> None:
    frames, _ = digit_frames(12)
    got = list(embedder.stream(frames))
    assert np.allclose(np.stack([r.embedding for r in got]), embedder.embed(frames), atol=1e-6)
    assert all(r.classification is None for r in got)


@pytest.mark.slow
@needs_cv2
def test_stream_over_a_video_file_and_an_image_folder(model: Any, tmp_path: Path) -> None:
    import cv2

    frames, _ = digit_frames(20)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    for f in frames:
        writer.write(f)
    writer.release()
    cap = cv2.VideoCapture(str(video))
    decoded = []
    while (got := cap.read())[0]:
        decoded.append(got[1])
    cap.release()
    assert len(decoded) == 20
    results = list(model.stream(str(video), top_k=3))
    assert [r.classification for r in results] == model.classify(decoded, top_k=3)  # BGR frames from OpenCV

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames[:7]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f)  # lossless
    (folder / "notes.txt").write_text("not an image")
    results = list(model.stream(folder, top_k=3))
    assert [r.order for r in results] == [ChannelOrder.RGB] * 7  # PIL decodes to RGB
    assert [r.classification for r in results] == model.classify(frames[:7], top_k=3)


@pytest.mark.slow
@pytest.mark.parametrize("options", list(STREAM_OPTIONS))
def test_stream_errors_arrive_after_the_frames_before_them(model: Any, options: str) -> None:
    frames, _ = digit_frames(5)
    frames[3] = frames[3].astype(np.float32)
    got = []
    with pytest.raises(DataError, match="frame 3 .* dtype float32"), \
            model.stream(frames, **STREAM_OPTIONS[options]) as results:
        for r in results:
            got.append(r.index)
    assert got == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("options", ["latency", "latency, 2 workers"])
def test_an_inference_failure_arrives_in_frame_order(model: Any, monkeypatch: pytest.MonkeyPatch,
                                                     options: str) -> None:
    frames, _ = digit_frames(6)
    real = model.run_batch
    bad = model.engine_batch(frames[4])  # what the stream hands run_batch for that frame

    def failing(batch: np.ndarray) -> np.ndarray:
        if np.array_equal(batch, bad):
            raise BackendError("inference failed on purpose")
        return real(batch)

    monkeypatch.setattr(model, "run_batch", failing)
    got = []
    with pytest.raises(BackendError, match="on purpose"), model.stream(frames, **STREAM_OPTIONS[options]) as s:
        for r in s:
            got.append(r.index)
    assert got == [0, 1, 2, 3]


@pytest.mark.slow
def test_stream_max_frames(model: Any) -> None:
    frames, _ = digit_frames(10)
    assert [r.index for r in model.stream(frames, max_frames=4)] == [0, 1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("options", ["defaults", "latency"])
def test_a_slow_consumer_stalls_decoding(model: Any, options: str) -> None:
    """Back-pressure: the source is read only ``max_in_flight`` frames ahead of the consumer."""
    produced = 0
    frames, _ = digit_frames(8)

    def source():
        nonlocal produced
        while True:
            produced += 1
            yield frames[produced % 8]

    ahead = []
    with model.stream(source(), **STREAM_OPTIONS[options]) as results:
        for consumed, _ in enumerate(results, start=1):
            time.sleep(0.01)
            ahead.append(produced - consumed)
            if consumed == 60:
                break
    assert max(ahead) <= results.max_in_flight, (ahead, results.max_in_flight)
    assert max(ahead) >= results.max_in_flight - 1  # the decoder did run ahead, up to the bound


# -------------------------------------------------------------------------------------------- shutdown


def _endless(frames: list[np.ndarray], closed: list[bool]):
    try:
        while True:
            yield from frames
    finally:
        closed.append(True)


def _stop_by_close(s: Any) -> None:
    next(s)
    s.close()


def _stop_by_with(s: Any) -> None:
    with s:
        for r in s:
            if r.index == 5:
                break


def _stop_by_generator_close(s: Any) -> None:
    def consume():
        with s:
            yield from s

    g = consume()
    next(g)
    g.close()


def _stop_by_dropping_it(s: Any) -> list:
    next(s)
    return []  # the caller deletes its reference


def _stop_by_keyboard_interrupt(s: Any) -> None:
    """Ctrl-C while the consumer waits for a result (the common case), without a with block."""
    real = s._next_payload
    calls = 0

    def interrupted():
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return real()

    s._next_payload = interrupted
    with pytest.raises(KeyboardInterrupt):
        for _ in s:
            pass


def _stop_by_sigint(s: Any) -> None:
    """A real SIGINT (Ctrl-C) in the main thread, the stream in a with block."""
    timer = threading.Timer(0.2, _thread.interrupt_main)
    with pytest.raises(KeyboardInterrupt), s:
        timer.start()
        for _ in s:
            pass
    timer.join()


STOPS = {"close": _stop_by_close, "with": _stop_by_with, "generator close": _stop_by_generator_close,
         "garbage collected": _stop_by_dropping_it, "KeyboardInterrupt": _stop_by_keyboard_interrupt,
         "SIGINT": _stop_by_sigint}


@pytest.mark.slow
@pytest.mark.parametrize("how", list(STOPS))
def test_stream_shuts_down_cleanly(model: Any, how: str) -> None:
    if how == "SIGINT" and threading.current_thread() is not threading.main_thread():
        pytest.skip("interrupt_main needs the test in the main thread")
    frames, _ = digit_frames(8)
    closed: list[bool] = []
    start = threading.active_count()
    s = model.stream(_endless(frames, closed), buffer=2)
    assert threading.active_count() > start  # the pipeline's threads run
    STOPS[how](s)
    if how == "garbage collected":
        del s
        gc.collect()
    else:
        assert s.closed
    assert threads_settle() == start
    assert closed == [True]  # the source's generator was closed, by the reader thread


# -------------------------------------------------------------------------------------------------- sources


@needs_cv2
@pytest.mark.parametrize(("source", "message"), [
    ("camera:97", r"cannot open camera source 'camera:97': cv2.VideoCapture\(97\) failed"),
    ("rtsp://127.0.0.1:1/none", r"cannot open url source 'rtsp://127.0.0.1:1/none': cv2.VideoCapture"),
])
def test_unopenable_sources_name_the_source_and_what_was_tried(source: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as exc:
        open_source(source)
    assert "backends" in exc.value.problem and exc.value.fix


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(DataError, match="has no images"):
        open_source(tmp_path)
    with pytest.raises(DataError, match="not a frame source"):
        open_source(np.zeros((4, 8, 8, 3), np.uint8))
    assert open_source([np.zeros((8, 8, 3), np.uint8)]).kind is SourceKind.FRAMES
    assert open_source([], order="rgb").order.value == "rgb"


@needs_cv2
def test_a_corrupt_video_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(DataError, match="cannot open video source"):
        open_source(bad)


# ------------------------------------------------------------------------------------------- import footprint

_FOOTPRINT = """
import sys
{block}
import numpy as np
import edge_resnet.runtime as rt
heavy = sorted(m for m in ("torch", "cv2", "openvino", "onnxruntime", "onnx") if sys.modules.get(m) is not None)
assert not heavy, f"import edge_resnet.runtime imported {{heavy}}"
model = rt.load({bundle!r})
frame = np.zeros((48, 64, 3), np.uint8)
model.classify(frame)
list(model.stream([frame] * 3))
print(sys.modules.get("torch") is not None)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("block_torch", [False, True])
def test_the_runtime_does_not_import_torch(request: pytest.FixtureRequest, name: str, block_torch: bool) -> None:
    if name == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino not installed")
    bundle = compiled_bundle(request, name)
    block = "sys.modules['torch'] = None  # import torch raises ImportError" if block_torch else ""
    code = _FOOTPRINT.format(block=block, bundle=str(bundle))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------------------ soak


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def soak(model: Any, n_frames: int, warmup: int = 200) -> dict[str, float]:
    """Stream ``n_frames`` fresh frames; Python heap (tracemalloc) and RSS growth after ``warmup`` frames."""
    base, _ = digit_frames(50)

    def source():
        for i in range(n_frames):
            yield base[i % 50].copy()  # a new array every frame, as a decoder gives

    tracemalloc.start()
    try:
        heap0 = rss0 = None
        peak_heap = 0
        for r in model.stream(source(), top_k=5):
            if r.index == warmup:
                gc.collect()
                heap0, rss0 = tracemalloc.get_traced_memory()[0], _rss_bytes()
            elif r.index > warmup and r.index % 100 == 0:
                peak_heap = max(peak_heap, tracemalloc.get_traced_memory()[0] - heap0)
        gc.collect()
        heap_growth = tracemalloc.get_traced_memory()[0] - heap0
    finally:
        tracemalloc.stop()
    rss1 = _rss_bytes()
    frame_bytes = base[0].nbytes + 4 * int(np.prod(model.input_shape))
    return {"frames": n_frames, "processed_bytes": n_frames * frame_bytes, "heap_growth": heap_growth,
            "heap_peak_growth": peak_heap,
            "rss_growth": (rss1 - rss0) if rss0 is not None and rss1 is not None else float("nan")}


@pytest.mark.slow
def test_soak_memory_stays_flat(model: Any) -> None:
    stats = soak(model, 1500)
    # 1,300 frames after warm-up move ~30 MB through the pipeline; a leak of one frame each would show
    assert stats["heap_growth"] < 256 * 1024, stats
    assert stats["heap_peak_growth"] < 1024 * 1024, stats
    if stats["rss_growth"] == stats["rss_growth"]:  # not NaN: /proc is there
        assert stats["rss_growth"] < stats["processed_bytes"] / 4, stats
