import json
import sys

import numpy as np
import pytest

from edge_resnet.data import ChannelOrder, PreprocessSpec
from edge_resnet.errors import DataError

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _normalize(hwc_rgb: np.ndarray) -> np.ndarray:
    """torchvision's ToTensor + Normalize by hand: CHW, (v/255 - mean)/std in float32."""
    x = hwc_rgb.astype(np.float32) / np.float32(255)
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def _image_4x6() -> np.ndarray:
    # 4 rows, 6 columns, 3 distinct channels
    r = (np.arange(24).reshape(4, 6) * 10).astype(np.uint8)
    return np.stack([r, 255 - r, np.full_like(r, 7)], axis=2)


def test_crop_and_normalize_by_hand():
    # shorter side 4 == resize: no resampling; centre 2x2 crop: top (4-2)/2 = 1, left (6-2)/2 = 2
    spec = PreprocessSpec(input_size=2, resize=4)
    img = _image_4x6()
    out = spec.apply(img)
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    crop = img[1:3, 2:4]
    np.testing.assert_array_equal(out, _normalize(crop))
    # one value written out: R at (row 1, col 2) = 80 -> (80/255 - 0.485) / 0.229
    assert out[0, 0, 0] == pytest.approx((80 / 255 - 0.485) / 0.229, rel=1e-6)
    # B is 7 everywhere: (7/255 - 0.406) / 0.225
    np.testing.assert_allclose(out[2], (7 / 255 - 0.406) / 0.225, rtol=1e-6)


def test_2x2_to_1x1_is_the_average():
    spec = PreprocessSpec(input_size=1, resize=1)
    img = np.repeat(np.array([[10, 20], [30, 40]], dtype=np.uint8)[..., None], 3, axis=2)
    out = spec.apply(img)
    np.testing.assert_allclose(out[:, 0, 0], (25 / 255 - MEAN) / STD, rtol=1e-6)


def _pil_bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """PIL's antialiased bilinear (triangle filter stretched by the downscale factor)."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - scale + 0.5), 0), min(int(centre + scale + 0.5), n_in)
        for x in range(lo, hi):
            w[o, x] = max(0.0, 1 - abs((x + 0.5 - centre) / scale))
        w[o] /= w[o].sum()
    return w


def test_resize_shorter_side_then_crop_matches_hand_computed_bilinear():
    # 4x6 -> shorter side 2 -> 2x3 (6*2/4 = 3), centre crop 2x2: left = round(0.5) = 0
    spec = PreprocessSpec(input_size=2, resize=2)
    img = _image_4x6()
    wy, wx = _pil_bilinear_weights(4, 2), _pil_bilinear_weights(6, 3)
    np.testing.assert_allclose(wx[0] * 7, [3, 3, 1, 0, 0, 0])  # the weights, by hand
    # PIL: horizontal pass, round to uint8, vertical pass, round
    horiz = np.floor(np.einsum("hwc,ow->hoc", img.astype(float), wx) + 0.5)
    both = np.floor(np.einsum("hwc,oh->owc", horiz, wy) + 0.5).astype(np.uint8)
    assert both[..., 0].tolist() == [[50, 68, 86], [144, 162, 180]]
    np.testing.assert_array_equal(spec.apply(img), _normalize(both[:, :2]))


def test_resized_size_follows_torchvision():
    spec = PreprocessSpec()
    assert spec.resized_size(480, 640) == (256, 341)  # int(256 * 640 / 480) = 341
    assert spec.resized_size(640, 480) == (341, 256)
    assert spec.resized_size(300, 300) == (256, 256)


def test_default_output_shape_and_upsampling_small_images():
    out = PreprocessSpec().apply(np.zeros((8, 8, 3), np.uint8))
    assert out.shape == (3, 224, 224)
    np.testing.assert_allclose(out[:, 100, 100], -MEAN / STD, rtol=1e-6)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("model_order", list(ChannelOrder))
@pytest.mark.parametrize("shape", [(37, 53), (480, 640), (301, 97)])
def test_bgr_input_gives_the_same_result_as_rgb(interpolation, model_order, shape):
    """A BGR frame is resized in its own order and reordered after the crop: the bytes must equal
    reordering the full frame to RGB first (PIL resamples each channel on its own)."""
    rng = np.random.default_rng(shape[0])
    rgb = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    spec = PreprocessSpec(input_size=16, resize=20, interpolation=interpolation, channel_order=model_order)
    reference = spec.apply(rgb)
    np.testing.assert_array_equal(spec.apply(rgb[..., ::-1].copy(), ChannelOrder.BGR), reference)
    np.testing.assert_array_equal(spec.apply(rgb[..., ::-1], "bgr"), reference)
    np.testing.assert_array_equal(spec.resize_and_crop(rgb[..., ::-1], "bgr"), spec.resize_and_crop(rgb))


def test_bgr_model_gets_reversed_channels_and_its_own_mean():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    rgb_model = PreprocessSpec(input_size=20, resize=20, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    # mean/std are in the model's channel order
    bgr_model = PreprocessSpec(
        input_size=20, resize=20, mean=(0.3, 0.2, 0.1), std=(0.6, 0.5, 0.4), channel_order=ChannelOrder.BGR
    )
    np.testing.assert_array_equal(bgr_model.apply(rgb), rgb_model.apply(rgb)[::-1])


def test_grayscale_and_rgba_are_converted():
    spec = PreprocessSpec(input_size=4, resize=4)
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 15
    rgb = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(spec.apply(gray), spec.apply(rgb))
    np.testing.assert_array_equal(spec.apply(gray[..., None]), spec.apply(rgb))
    rgba = np.concatenate([rgb, np.full((4, 4, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(spec.apply(rgba), spec.apply(rgb))
    bgra = np.concatenate([rgb[..., ::-1], np.zeros((4, 4, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(spec.apply(bgra, ChannelOrder.BGR), spec.apply(rgb))


def test_apply_batch():
    spec = PreprocessSpec(input_size=8, resize=10)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(10, 12), (30, 20), (8, 8)]]
    batch = spec.apply_batch(images)
    assert batch.shape == (3, 3, 8, 8) and batch.dtype == np.float32
    for i, img in enumerate(images):
        np.testing.assert_array_equal(batch[i], spec.apply(img))
    stacked = np.stack([images[0], images[0]])
    assert spec.apply_batch(stacked).shape == (2, 3, 8, 8)
    with pytest.raises(DataError, match="no images"):
        spec.apply_batch([])
    with pytest.raises(DataError, match=r"\(N, H, W, C\)"):
        spec.apply_batch(images[0])


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((0, 5, 3), np.uint8), "empty image"),
        (np.zeros((5, 0), np.uint8), "empty image"),
        (np.zeros((5, 5, 2), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((3, 5, 5), np.uint8), r"got \(3, 5, 5\)"),
        (np.zeros((5, 5, 3), np.float32), "uint8"),
        (np.zeros((5, 5, 3), np.uint16), "uint8"),
        ([[1, 2], [3, 4]], "numpy array"),
    ],
)
def test_bad_images_raise_clear_errors(image, match):
    with pytest.raises(DataError, match=match) as info:
        PreprocessSpec().apply(image)
    assert info.value.fix


def test_to_dict_round_trip_is_json_safe():
    spec = PreprocessSpec(input_size=96, resize=110, channel_order=ChannelOrder.BGR, interpolation="bicubic")
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["channel_order"] == "bgr" and d["mean"] == [0.485, 0.456, 0.406]
    back = PreprocessSpec.from_dict(d)
    assert back == spec and back.channel_order is ChannelOrder.BGR and isinstance(back.mean, tuple)
    assert PreprocessSpec.from_dict({}) == PreprocessSpec()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"input_size": 224, "size": 3}, "unknown keys"),
        ({"input_size": "224"}, "integer"),
        ({"input_size": 224, "resize": 200}, "smaller than input_size"),
        ({"mean": [0.5, 0.5]}, "3 numbers"),
        ({"std": [0.2, 0.0, 0.2]}, "positive"),
        ({"std": [0.2, float("nan"), 0.2]}, "finite"),
        ({"channel_order": "rgba"}, "channel_order"),
        ({"interpolation": "area"}, "interpolation"),
        ({"layout": "NHWC"}, "layout"),
        ({"dtype": "float16"}, "dtype"),
        ([1, 2], "mapping"),
    ],
)
def test_from_dict_validates(data, match):
    with pytest.raises(DataError, match=match):
        PreprocessSpec.from_dict(data)


def test_normalization_affine_reproduces_apply():
    spec = PreprocessSpec(input_size=6, resize=6)
    affine = spec.normalization_affine()
    np.testing.assert_allclose(affine.offset, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(affine.scale, [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)])
    img = np.random.default_rng(3).integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    by_affine = np.stack([affine.scale[c] * (img[..., c] - affine.offset[c]) for c in range(3)])
    np.testing.assert_allclose(spec.apply(img), by_affine, rtol=1e-5, atol=1e-5)


def test_normalization_affine_is_in_the_models_channel_order():
    spec = PreprocessSpec(mean=(0.1, 0.2, 0.3), std=(0.25, 0.5, 1.0), channel_order="bgr")
    affine = spec.normalization_affine()
    assert affine.channel_order is ChannelOrder.BGR
    np.testing.assert_allclose(affine.offset, [25.5, 51.0, 76.5])


def test_deepstream_scalar_scale():
    ds = PreprocessSpec().deepstream_normalization()
    assert not ds.exact
    scales = np.array([1 / (255 * s) for s in (0.229, 0.224, 0.225)])
    assert ds.net_scale_factor == pytest.approx(scales.mean())
    assert ds.max_relative_error == pytest.approx(np.max(np.abs(scales - scales.mean()) / scales))
    assert 0.01 < ds.max_relative_error < 0.02
    entries = ds.config_entries()
    assert entries["offsets"] == "123.675;116.28;103.53" and entries["model-color-format"] == "0"

    equal = PreprocessSpec(
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channel_order="bgr"
    ).deepstream_normalization()
    assert equal.exact and equal.max_relative_error == 0.0
    assert equal.net_scale_factor == pytest.approx(2 / 255)
    assert equal.config_entries()["model-color-format"] == "1"


def test_apply_writes_into_a_given_row():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(30, 41, 3), dtype=np.uint8)
    spec = PreprocessSpec(input_size=16, resize=20)
    batch = np.full((2, 3, 16, 16), np.nan, np.float32)
    got = spec.apply(image, "bgr", out=batch[1])
    assert got is not None and np.shares_memory(got, batch)
    np.testing.assert_array_equal(batch[1], spec.apply(image, "bgr"))
    assert np.isnan(batch[0]).all()
    with pytest.raises(DataError, match=r"C-contiguous float32 array of shape \(3, 16, 16\)"):
        spec.apply(image, out=np.empty((3, 16, 17), np.float32))
    with pytest.raises(DataError, match="C-contiguous"):
        spec.apply(image, out=np.empty((3, 16, 16, 2), np.float32)[..., 0])


# ------------------------------------------------------------------------------ the opencv resampler


def test_opencv_resampler_resizes_the_centre_region_resize_and_crop_keep() -> None:
    cv2 = pytest.importorskip("cv2")
    spec = PreprocessSpec(input_size=224, resize=256, resampler="opencv")
    frame = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    assert spec.crop_box(480, 640) == (30, 110, 420, 420)  # 480 * 224 / 256 = 420, centred
    expected = cv2.resize(frame[30:450, 110:530], (224, 224), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(spec.resize_and_crop(frame, "rgb"), expected)
    np.testing.assert_array_equal(spec.crop(frame, "bgr", ChannelOrder.BGR), expected)
    np.testing.assert_array_equal(spec.apply(frame, "rgb"), PreprocessSpec(input_size=224, resize=224).apply(expected))
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["resampler"] == "opencv"
    old = {k: v for k, v in PreprocessSpec().to_dict().items() if k != "resampler"}  # a bundle from before
    assert PreprocessSpec.from_dict(old).resampler.value == "pil"


def test_opencv_resampler_without_opencv_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)
    spec = PreprocessSpec(input_size=32, resize=36, resampler="opencv")
    with pytest.raises(DataError, match=r"edge-resnet\[video\]"):
        spec.apply(np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(DataError, match="unknown resampler"):
        PreprocessSpec(resampler="skimage")
