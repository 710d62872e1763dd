import logging
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_resnet.data import (
    DIGITS_CLASS_NAMES,
    PreprocessSpec,
    load_digits_split,
    load_image,
    open_dataset,
    sample_indices,
)
from edge_resnet.errors import DataError

SPEC = PreprocessSpec(input_size=16, resize=16)


def _png(path: Path, value: int = 0, size: tuple[int, int] = (20, 16), mode: str = "RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    arr[0, 0] = value % 256
    Image.fromarray(arr).convert(mode).save(path)
    return arr


def _all(ds, batch_size=4):
    xs, ys, ids = [], [], []
    for b in ds.batches(batch_size):
        xs.append(b.x)
        ids += b.ids
        if b.y is not None:
            ys.append(b.y)
    return np.concatenate(xs), (np.concatenate(ys) if ys else None), ids


# -- the import constraint -----------------------------------------------------------------------


def test_data_package_imports_without_torch_cv2_or_sklearn():
    code = (
        "import sys, edge_resnet.data\n"
        "bad = [m for m in ('torch', 'cv2', 'sklearn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- digits ------------------------------------------------------------------------------------


def test_digits_split_sizes_stratification_and_determinism():
    from sklearn.datasets import load_digits

    x_train, y_train = load_digits_split("train")
    x_test, y_test = load_digits_split("test")
    assert x_train.shape == (1257, 8, 8, 3) and x_test.shape == (540, 8, 8, 3)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert x_train.max() == 255 and x_train.min() == 0
    assert (x_train[..., 0] == x_train[..., 2]).all()
    # every class in both splits in proportion (within one image of 70/30)
    full = np.bincount(load_digits().target, minlength=10)
    np.testing.assert_array_equal(
        np.bincount(y_train, minlength=10) + np.bincount(y_test, minlength=10), full
    )
    assert np.abs(np.bincount(y_test, minlength=10) - 0.3 * full).max() <= 1
    # deterministic, and a fresh copy each time
    x2, y2 = load_digits_split("train")
    np.testing.assert_array_equal(x2, x_train)
    np.testing.assert_array_equal(y2, y_train)
    x2[0] = 1
    assert not (load_digits_split("train")[0][0] == 1).all()
    assert [str(i) for i in range(10)] == DIGITS_CLASS_NAMES
    # the reference: sklearn's own split of the raw 0..16 images, scaled by 255/16 (16 -> 255, 8 -> 128)
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    raw_train, raw_test, ref_train, ref_test = train_test_split(
        bunch.images, bunch.target, stratify=bunch.target, random_state=0, test_size=0.3
    )
    np.testing.assert_array_equal(y_test, ref_test)
    np.testing.assert_array_equal(y_train, ref_train)
    np.testing.assert_array_equal(x_test[..., 1], np.floor(raw_test * 255 / 16 + 0.5))
    assert x_train[raw_train == 8].tolist() == [[128, 128, 128]] * int((raw_train == 8).sum())
    with pytest.raises(DataError, match="split"):
        load_digits_split("val")


def test_digits_sources():
    ds = open_dataset("digits", SPEC)
    assert len(ds) == 1257 and ds.class_names == DIGITS_CLASS_NAMES
    np.testing.assert_array_equal(ds.labels, load_digits_split("train")[1])
    test = open_dataset("digits:test", SPEC)
    assert len(test) == 540 and test.kind == "digits"
    b = next(test.batches(32))
    assert b.x.shape == (32, 3, 16, 16) and b.x.dtype == np.float32
    x, y = load_digits_split("test")
    np.testing.assert_array_equal(b.x, SPEC.apply_batch(x[:32]))  # 8x8 upsampled to 16x16
    np.testing.assert_array_equal(b.y, y[:32])
    with pytest.raises(DataError, match="digits:train or digits:test"):
        open_dataset("digits:val", SPEC)


def test_random_is_not_a_data_source():
    with pytest.raises(DataError, match="not a data source"):
        open_dataset("random", SPEC)


# -- folders -----------------------------------------------------------------------------------


def test_folder_with_class_subfolders_gives_labels(tmp_path):
    root = tmp_path / "data"
    _png(root / "dog" / "b.png", 1)
    _png(root / "dog" / "nested" / "a.png", 2)
    _png(root / "cat" / "x.PNG", 3)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "cat" / "y.JPEG", format="JPEG")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    _png(root / ".hidden" / "z.png", 4)
    ds = open_dataset(root, SPEC)
    assert ds.class_names == ["cat", "dog"]
    assert ds.ids == ["cat/x.PNG", "cat/y.JPEG", "dog/b.png", "dog/nested/a.png"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
    assert len(ds) == 4 and ds.skipped == 0 and ds.kind == "folder"
    x, y, ids = _all(ds, batch_size=3)
    assert x.shape == (4, 3, 16, 16) and ids == ds.ids
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    np.testing.assert_array_equal(x[2], SPEC.apply(load_image(root / "dog" / "b.png")))
    assert "4 images" in ds.description and "2 classes" in ds.description


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", i)
    ds = open_dataset(tmp_path, SPEC)
    assert ds.labels is None and ds.class_names is None and len(ds) == 3
    b = next(ds.batches(8))
    assert b.y is None and b.ids == ["0.png", "1.png", "2.png"]


def test_grayscale_rgba_and_palette_files_become_rgb(tmp_path):
    gray = _png(tmp_path / "g.png", 1, mode="L")
    _png(tmp_path / "a.png", 2, mode="RGBA")
    _png(tmp_path / "p.png", 3, mode="P")
    ds = open_dataset(tmp_path, SPEC)
    images = [im for b in ds.images(8) for im in b.images]
    assert all(im.shape == (16, 20, 3) and im.dtype == np.uint8 for im in images)
    expected_gray = np.asarray(Image.fromarray(gray).convert("L"))
    np.testing.assert_array_equal(images[1][..., 0], expected_gray)  # sorted: a, g, p
    np.testing.assert_array_equal(images[1][..., 2], expected_gray)


def test_corrupt_file_is_skipped_counted_and_warned_once(tmp_path, caplog):
    for i in range(4):
        _png(tmp_path / f"ok{i}.png", i)
    (tmp_path / "broken.jpg").write_bytes(b"\x00garbage bytes, not a jpeg" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="edge_resnet.data"):
        ds = open_dataset(tmp_path, SPEC)
        x, _, ids = _all(ds)
    assert len(ds) == 4 and ds.skipped == 2 and x.shape[0] == 4
    assert "broken.jpg" not in ids
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2" in warnings[0] and "broken.jpg" in warnings[0]
    assert "2 unreadable skipped" in ds.description


def test_truncated_file_is_skipped_when_decoded(tmp_path, caplog):
    for i in range(3):
        _png(tmp_path / f"ok{i}.png", i)
    good = tmp_path / "t.png"
    _png(good, 9, size=(64, 64))
    good.write_bytes(good.read_bytes()[:200])  # header fine, pixel data cut off
    ds = open_dataset(tmp_path, SPEC)
    assert len(ds) == 4 and ds.skipped == 0  # the header check cannot see it
    with caplog.at_level(logging.WARNING, logger="edge_resnet.data"):
        x, _, ids = _all(ds, batch_size=2)
    assert x.shape[0] == 3 and "t.png" not in ids
    assert [b.x.shape[0] for b in ds.batches(2)] == [2, 1]  # batches stay full
    assert ds.skipped == 1 and len(ds) == 3
    assert any("t.png" in r.getMessage() for r in caplog.records)


def test_folder_where_nothing_is_readable_errors(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"nope")
    (tmp_path / "b.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="no readable images") as info:
        open_dataset(tmp_path, SPEC)
    assert "a.jpg" in str(info.value)


def test_empty_and_missing_sources_error(tmp_path):
    with pytest.raises(DataError, match=r"no images found in .*looked for .jpg") as info:
        open_dataset(tmp_path, SPEC)
    assert info.value.fix
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        open_dataset(tmp_path, SPEC)
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing", SPEC)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="unknown kind of data source") as info:
        open_dataset(tmp_path / "weights.bin", SPEC)
    assert ".npz" in info.value.fix


def test_images_next_to_class_folders_is_an_error(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "cls" / "b.png")
    with pytest.raises(DataError, match="top level"):
        open_dataset(tmp_path, SPEC)


# -- list files --------------------------------------------------------------------------------


def test_txt_list_with_labels_comments_and_relative_paths(tmp_path):
    _png(tmp_path / "imgs" / "a.png", 1)
    _png(tmp_path / "imgs" / "b c.png", 2)
    lst = tmp_path / "list.txt"
    lst.write_text("# calibration list\n\nimgs/a.png 3\nimgs/b c.png 0\n")
    ds = open_dataset(lst, SPEC)
    assert ds.ids == ["imgs/a.png", "imgs/b c.png"] and ds.kind == "list"
    np.testing.assert_array_equal(ds.labels, [3, 0])
    x, y, _ = _all(ds)
    np.testing.assert_array_equal(x[1], SPEC.apply(load_image(tmp_path / "imgs" / "b c.png")))

    nolabels = tmp_path / "n.txt"
    nolabels.write_text("imgs/a.png\nimgs/b c.png\nimgs/missing.png\n")
    ds = open_dataset(nolabels, SPEC)
    assert ds.labels is None and len(ds) == 2 and ds.skipped == 1

    mixed = tmp_path / "m.txt"
    mixed.write_text("imgs/a.png 1\nimgs/b c.png\n")
    with pytest.raises(DataError, match="some lines have a label"):
        open_dataset(mixed, SPEC)


# -- arrays ------------------------------------------------------------------------------------


def test_npz_with_x_and_y(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10, 20, 24, 3), dtype=np.uint8)
    y = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = open_dataset(tmp_path / "d.npz", SPEC)
    assert len(ds) == 10 and ds.kind == "array" and ds.ids[:2] == ["0", "1"]
    got, labels, _ = _all(ds, batch_size=4)
    np.testing.assert_array_equal(got, SPEC.apply_batch(x))
    np.testing.assert_array_equal(labels, y)
    # the same images channels-first give the same inputs
    np.save(tmp_path / "nchw.npy", x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(_all(open_dataset(tmp_path / "nchw.npy", SPEC))[0], got)
    # raw images come back unchanged
    raw = [im for b in ds.images(3) for im in b.images]
    np.testing.assert_array_equal(np.stack(raw), x)


def test_float32_nchw_passes_through_byte_identical(tmp_path):
    x = np.random.default_rng(1).standard_normal((11, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ds = open_dataset(tmp_path / "x.npy", SPEC)
    assert ds.preprocessed and "already preprocessed" in ds.description
    batches = list(ds.batches(4))
    assert [b.x.shape[0] for b in batches] == [4, 4, 3]
    assert all(b.x.dtype == np.float32 and b.x.flags.c_contiguous for b in batches)
    assert np.concatenate([b.x for b in batches]).tobytes() == x.tobytes()
    with pytest.raises(DataError, match="preprocessed"):
        next(ds.images(4))
    # sampled rows are the same rows, byte for byte
    sub = open_dataset(tmp_path / "x.npy", SPEC, count=5, seed=3)
    idx = np.asarray([int(i) for i in sub.ids])
    assert _all(sub)[0].tobytes() == x[idx].tobytes()


@pytest.mark.parametrize(
    ("array", "got"),
    [
        (np.zeros((2, 3, 32, 32), np.float32), "(2, 3, 32, 32)"),  # preprocessed at another size
        (np.zeros((2, 16, 16, 3), np.float32), "(2, 16, 16, 3)"),  # float NHWC
        (np.zeros((2, 3, 16, 16), np.float64), "float64"),
        (np.zeros((2, 5, 16, 16), np.uint8), "(2, 5, 16, 16)"),
        (np.zeros((0, 16, 16, 3), np.uint8), "empty"),
    ],
)
def test_wrong_array_shape_names_what_it_accepts(tmp_path, array, got):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError) as info:
        open_dataset(tmp_path / "x.npy", SPEC)
    msg = str(info.value)
    assert got in msg and "(N, 3, 16, 16)" in msg


def test_bad_array_files(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled"):
        open_dataset(tmp_path / "obj.npy", SPEC)
    np.savez(tmp_path / "noxy.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="no array named 'x'"):
        open_dataset(tmp_path / "noxy.npz", SPEC)
    np.savez(tmp_path / "badlabels.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="integer labels"):
        open_dataset(tmp_path / "badlabels.npz", SPEC)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        open_dataset(tmp_path / "junk.npz", SPEC)


# -- sampling ----------------------------------------------------------------------------------


def test_stratified_sampling_counts():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    idx = sample_indices(100, 10, labels=labels, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2]
    assert (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, sample_indices(100, 10, labels=labels, seed=0))
    assert not np.array_equal(idx, sample_indices(100, 10, labels=labels, seed=1))
    # small classes still get one
    small = np.repeat([0, 1, 2], [97, 2, 1])
    assert np.bincount(small[sample_indices(100, 10, labels=small)], minlength=3).tolist() == [8, 1, 1]
    # fewer than the classes: one each for the largest
    assert np.bincount(labels[sample_indices(100, 2, labels=labels)], minlength=3).tolist() == [1, 1, 0]
    # no labels: a seeded subset
    plain = sample_indices(100, 7, seed=5)
    assert len(np.unique(plain)) == 7 and np.array_equal(plain, sample_indices(100, 7, seed=5))
    with pytest.raises(DataError, match="count"):
        sample_indices(100, 0)


def test_stratified_sampling_of_a_labelled_source(tmp_path, caplog):
    ds = open_dataset("digits:test", SPEC, count=100, seed=0)
    assert len(ds) == 100
    full = np.bincount(load_digits_split("test")[1], minlength=10)
    counts = np.bincount(ds.labels, minlength=10)
    assert counts.sum() == 100 and (counts >= 1).all()
    assert np.abs(counts - full * 100 / 540).max() < 1
    assert ds.ids == open_dataset("digits:test", SPEC, count=100, seed=0).ids
    assert [int(i) for i in ds.ids] == sorted(int(i) for i in ds.ids)
    assert "stratified sample of 540" in ds.description
    with caplog.at_level(logging.WARNING, logger="edge_resnet.data"):
        assert len(open_dataset("digits:test", SPEC, count=10_000)) == 540
    assert any("using all" in r.getMessage() for r in caplog.records)


def test_sampling_a_folder_skips_unreadable_files_and_still_fills_the_count(tmp_path):
    for i in range(12):
        _png(tmp_path / "a" / f"{i:02d}.png", i, size=(8, 8))
        _png(tmp_path / "b" / f"{i:02d}.png", i, size=(8, 8))
    for i in range(12):
        (tmp_path / "ab"[i % 2] / f"bad{i:02d}.jpg").write_bytes(b"junk")
    ds = open_dataset(tmp_path, SPEC, count=8, seed=0)
    assert len(ds) == 8 and np.bincount(ds.labels).tolist() == [4, 4]
    assert all("bad" not in i for i in ds.ids)
    assert 0 < ds.skipped < 12  # only about `count` files were checked, not all 36


# -- video -------------------------------------------------------------------------------------


def test_video_sampled_with_a_stride(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (32, 24))
    assert writer.isOpened()
    for i in range(30):
        frame = np.zeros((24, 32, 3), np.uint8)
        frame[..., 2] = 200 if i < 15 else 0  # BGR: red for the first half
        frame[..., 0] = 0 if i < 15 else 200  # blue for the second half
        writer.write(frame)
    writer.release()

    ds = open_dataset(path, SPEC, stride=10)
    assert len(ds) == 3 and ds.ids == ["0", "10", "20"] and ds.kind == "video"
    assert "3 images from 30 frames, stride 10" in ds.description
    frames = [im for b in ds.images(2) for im in b.images]
    assert len(frames) == 3 and frames[0].shape == (24, 32, 3)
    assert frames[0][..., 0].mean() > 150 and frames[0][..., 2].mean() < 50  # red in RGB
    assert frames[2][..., 2].mean() > 150 and frames[2][..., 0].mean() < 50  # blue in RGB
    x, y, _ = _all(ds, batch_size=2)
    assert x.shape == (3, 3, 16, 16) and y is None
    np.testing.assert_array_equal(x[0], SPEC.apply(frames[0]))
    assert len(open_dataset(path, SPEC, stride=7)) == 5
    assert len(open_dataset(path, SPEC, stride=1, count=4)) == 4


def test_video_without_opencv_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "clip.mp4").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    with pytest.raises(DataError, match="OpenCV") as info:
        open_dataset(tmp_path / "clip.mp4", SPEC)
    assert "pip install edge-resnet[video]" in info.value.fix


def test_unreadable_video_errors(tmp_path):
    pytest.importorskip("cv2")
    (tmp_path / "clip.mp4").write_bytes(b"not a video at all")
    with pytest.raises(DataError, match="video"):
        open_dataset(tmp_path / "clip.mp4", SPEC)


# -- streaming ---------------------------------------------------------------------------------


def _peak_bytes(root: Path, spec: PreprocessSpec) -> tuple[int, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        ds = open_dataset(root, spec)
        n = sum(b.x.shape[0] for b in ds.batches(8))
        return tracemalloc.get_traced_memory()[1], n
    finally:
        tracemalloc.stop()


def test_folder_iteration_streams(tmp_path):
    spec = PreprocessSpec(input_size=64, resize=64)
    for i in range(200):
        _png(tmp_path / "many" / f"{i:03d}.png", i, size=(64, 64))
        if i < 50:
            _png(tmp_path / "few" / f"{i:03d}.png", i, size=(64, 64))
    peak_few, n_few = _peak_bytes(tmp_path / "few", spec)
    peak_many, n_many = _peak_bytes(tmp_path / "many", spec)
    assert (n_few, n_many) == (50, 200)
    whole_set = 200 * 3 * 64 * 64 * 4  # 9.8 MB of float32 inputs
    assert peak_many - peak_few < whole_set / 20, (peak_few, peak_many)
