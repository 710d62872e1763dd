import pytest

from edge_resnet.data.recipes import load_recipe, resolve, shipped_recipes
from edge_resnet.errors import DataError


def test_shipped_recipes_load():
    names = set(shipped_recipes())
    assert {"digits", "imagenet-val", "video-frames"} <= names
    for name in names:
        r = load_recipe(f"recipe:{name}")
        assert r.name == name and r.source and r.count


def test_resolve_recipe_defaults_and_overrides(tmp_path):
    assert resolve("recipe:digits", None, None) == ("digits:train", 512, 0, 10)
    assert resolve("recipe:digits", 64, 3) == ("digits:train", 64, 3, 10)
    own = tmp_path / "mine.toml"
    own.write_text('name = "mine"\nsource = "frames/"\ncount = 100\nseed = 7\nstride = 5\n')
    assert resolve(str(own), None, None) == ("frames/", 100, 7, 5)
    assert resolve("images/", None, None) == ("images/", None, 0, 10)  # not a recipe: unchanged


def test_bad_recipes(tmp_path):
    with pytest.raises(DataError, match="(?s)unknown calibration recipe 'nope'.*digits"):
        load_recipe("recipe:nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nsource = "a"\ncolour = "red"\n')
    with pytest.raises(DataError, match="invalid calibration recipe"):
        load_recipe(bad)


def test_quantize_takes_a_recipe_as_calib(tmp_path, digits_r18):
    """`--calib recipe:digits` is digits:train with the recipe's seed: the same Q/DQ graph, byte for byte."""
    import onnx
    from click.testing import CliRunner

    from edge_resnet.cli.app import cli

    model = tmp_path / "float.onnx"
    onnx.save(digits_r18.float_graph, str(model))
    outs = {}
    for calib in ("recipe:digits", "digits:train"):
        out = tmp_path / f"{calib.replace(':', '_')}.onnx"
        r = CliRunner().invoke(cli, ["quantize", str(model), "--calib", calib, "--calib-count", "16", "-o", str(out)])
        assert r.exit_code == 0, r.output
        outs[calib] = out.read_bytes()
    assert outs["recipe:digits"] == outs["digits:train"]


def test_compile_records_the_recipe(tmp_path, digits_r18, cache_dir):
    import json

    from click.testing import CliRunner

    from edge_resnet.cli.app import cli

    out = tmp_path / "b"
    r = CliRunner().invoke(cli, ["compile", "--model", "resnet18", "--num-classes", "10", "--weights", str(digits_r18.checkpoint),
                                 "--input-size", "32", "--resize", "32", "--target", "onnxruntime", "--calib", "recipe:digits",
                                 "--calib-count", "16", "-o", str(out)], env={"EDGE_RESNET_CACHE": str(cache_dir)})
    assert r.exit_code == 0, r.output
    calibration = json.loads((out / "manifest.json").read_text())["calibration"]
    assert calibration["recipe"] == "recipe:digits" and calibration["source"] == "digits:train"
    assert calibration["count"] == 16 and calibration["seed"] == 0
