"""Configuration: defaults, YAML overrides, flag overrides, and the errors for bad values."""

from __future__ import annotations

import pytest

from testdata import ROOT
from objsearch.config import DEFAULTS, ConfigError, load_config, parse_dims
from objsearch.errors import ObjsearchError


@pytest.mark.parametrize(("value", "expected"), [("32", [32]), ("32,16,32", [16, 32]), (" 64, 16 ", [16, 64]),
                                                 (128, [128]), ([256, 16], [16, 256])])
def test_parse_dims_sorts_and_deduplicates(value, expected):
    assert parse_dims(value) == expected


@pytest.mark.parametrize("value", ["33", "16,17", "", "abc", [8], 0, None])
def test_parse_dims_refuses_other_values(value):
    with pytest.raises(ConfigError, match="dims must be"):
        parse_dims(value)


def test_config_error_is_a_usage_error():
    assert issubclass(ConfigError, ObjsearchError) and ConfigError.exit_code == 1


def test_defaults_then_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("conf: 0.4\ndims: [16, 64]\nseed: 3\n")
    cfg = load_config(path, conf=0.6, seed=None)
    assert cfg["conf"] == 0.6  # the flag wins
    assert cfg["dims"] == [16, 64] and cfg["seed"] == 3  # the file wins over the defaults; None flags are ignored
    assert cfg["imgsz"] == DEFAULTS["imgsz"] and set(cfg) == set(DEFAULTS)


def test_the_projects_default_file_is_read():
    cfg = load_config(None, dims="16")
    assert cfg["dims"] == [16] and cfg["projection"] in ("random", "pca")
    assert cfg["batch"] == 1 and load_config(None, batch="4")["batch"] == 4


@pytest.mark.parametrize(("text", "match"), [
    ("confidence: 0.4\n", "unknown keys in .*: confidence"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("conf: [\n", "cannot read config file"),
    ("projection: tsne\n", "projection must be one of"),
    ("dims: 33\n", "dims must be among"),
    ("conf: 1.5\n", r"conf must be in \[0, 1\], got 1.5"),
    ("imgsz: 16\n", "imgsz must be >= 32"),
    ("batch: 0\n", "batch must be >= 1 image, got 0"),
    ("batch: many\n", "batch must be an integer, got 'many'"),
])
def test_bad_config_files_raise_config_error(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "none.yaml")


def test_bad_flag_values_raise_config_error():
    with pytest.raises(ConfigError, match="projection"):
        load_config(None, projection="tsne")
    with pytest.raises(ConfigError, match="conf"):
        load_config(None, conf=-0.1)


@pytest.mark.parametrize("text", ["conf: high\n", "imgsz: big\n"])
def test_non_numeric_values_in_a_config_file_raise_config_error(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


def test_fractional_dims_are_refused():
    with pytest.raises(ConfigError, match="dims"):
        parse_dims(32.7)


def test_index_hygiene_keys(tmp_path):
    cfg = load_config(None)
    assert (cfg["index_conf"], cfg["dedup_iou"], cfg["index_mirror"]) == (0.6, 0.5, False)  # mirror: one more pass
    assert cfg["projection"] == "pca" and cfg["feature_recipe"] == "cls_logits:2.5,neck_roi:1"  # docs/neighbours.md
    assert cfg["rerank_dims"] == 64 and cfg["rerank_recipe"] == "cls_logits:0.5,neck_roi:1"
    quality = load_config(ROOT / "cfg" / "quality.yaml")
    assert (quality["index_conf"], quality["dedup_iou"], quality["index_mirror"]) == (0.6, 0.5, True)
    assert quality["projection"] == "pca" and quality["feature_recipe"] == "cls_logits:2.5,neck_roi:1"
    assert load_config(None, index_conf="0.4")["index_conf"] == 0.4
    for key, value, message in (("index_conf", 1.5, r"index_conf must be in \[0, 1\] or null, got 1.5"),
                                ("dedup_iou", "x", "dedup_iou must be a number"),
                                ("index_mirror", "maybe", "index_mirror must be true or false")):
        path = tmp_path / f"{key}.yaml"
        path.write_text(f"{key}: {value}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_rerank_keys(tmp_path):
    """The rerank vectors take their own dimension: the next free one when dims holds it; null turns them off."""
    assert load_config(None, dims="16,64")["rerank_dims"] == 128
    assert load_config(None, dims="64,128,256")["rerank_dims"] is None
    path = tmp_path / "off.yaml"
    path.write_text("rerank_dims: null\n")
    assert load_config(path)["rerank_dims"] is None
    for key, value, message in (("rerank_dims", 48, "rerank_dims must be one of"),
                                ("rerank_dims", "x", "rerank_dims must be one of"),
                                ("rerank_recipe", "cls_logits:-1", "rerank_recipe: feature block weights must be "
                                                                   "positive")):
        path = tmp_path / f"{key}.yaml"
        path.write_text(f"{key}: {value}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_a_retired_key_in_an_older_file_is_ignored(tmp_path):
    """``k`` (neighbours per object) was a key nothing read; files that still hold it keep loading."""
    path = tmp_path / "old.yaml"
    path.write_text("k: 16\nconf: 0.4\n")
    cfg = load_config(path)
    assert "k" not in cfg and cfg["conf"] == 0.4 and set(cfg) == set(DEFAULTS)


def test_the_shipped_default_file_shows_the_defaults_in_code():
    """``cfg/default.yaml`` is the user-visible copy of ``DEFAULTS``: every key, every value (the default recipes
    included, which the detector and the configuration read from one constant in ``objsearch.pooling``)."""
    import inspect

    import yaml

    from objsearch.detector import Detector
    from objsearch.pooling import DEFAULT_RECIPE, DEFAULT_RERANK_RECIPE, parse_recipe

    shipped = yaml.safe_load((ROOT / "cfg" / "default.yaml").read_text())
    assert shipped == DEFAULTS
    assert DEFAULTS["feature_recipe"] == DEFAULT_RECIPE and DEFAULTS["rerank_recipe"] == DEFAULT_RERANK_RECIPE
    assert parse_recipe(shipped["feature_recipe"]) == parse_recipe(DEFAULT_RECIPE) == {"cls_logits": 2.5,
                                                                                      "neck_roi": 1.0}
    assert inspect.signature(Detector).parameters["recipe"].default == DEFAULT_RECIPE
