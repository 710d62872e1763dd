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
