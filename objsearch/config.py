"""Configuration: defaults in code, ``cfg/*.yaml`` overrides, command-line flags override last.

The resolved configuration is saved in every index file (root attribute ``config``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import yaml

from objsearch.errors import ExitCode, ObjsearchError
from objsearch.pooling import DEFAULT_RECIPE, DEFAULT_RERANK_RECIPE, parse_recipe
from objsearch.projection import ALLOWED_DIMS, PROJECTION_METHODS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "cfg" / "default.yaml"
LOGGER = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "weights": None,
    "imgsz": 640,
    "conf": 0.25,
    "index_conf": 0.6,
    "dedup_iou": 0.5,
    "index_mirror": False,
    "iou": 0.7,
    "max_det": 300,
    "device": "cpu",
    "feature_recipe": DEFAULT_RECIPE,
    "dims": [32],
    "rerank_dims": 64,
    "rerank_recipe": DEFAULT_RERANK_RECIPE,
    "projection": "pca",
    "seed": 0,
    "thumb_size": 128,
    "thumb_quality": 85,
    "batch": 1,
    "runtime": "auto",  # onnxruntime on the CPU when its export matches torch, else torch (objsearch.runtimes)
    "video_fps": 1.0,
    "video_stride": None,
}


# keys that older configuration files may hold and that nothing reads any more: accepted in a file, then dropped
# (``k``, the neighbours per object, is the query's ``--k`` flag)
RETIRED_KEYS = frozenset({"k"})


class ConfigError(ObjsearchError):
    """A configuration file or value is invalid (a usage error)."""

    exit_code = ExitCode.USAGE


def parse_dims(value) -> list[int]:
    """``"16,32"``, ``32`` or ``[16, 32]`` -> sorted unique list of allowed dims.

    Raises
    ------
    ConfigError
        For a value outside 16, 32, 64, 128, 256.
    """
    if isinstance(value, str):
        items = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    try:
        dims = sorted({int(v) for v in items})
        if any(float(v) != int(v) for v in items):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"dims must be integers from {ALLOWED_DIMS}, got {value!r}") from None
    bad = [d for d in dims if d not in ALLOWED_DIMS]
    if bad or not dims:
        raise ConfigError(f"dims must be among {ALLOWED_DIMS}, got {value!r}")
    return dims


def load_config(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Defaults, then the YAML file (``cfg/default.yaml`` when ``path`` is None and it exists), then the
    overrides whose value is not None.

    Raises
    ------
    ConfigError
        For an unreadable file, an unknown key or an invalid value.
    """
    cfg = dict(DEFAULTS)
    file = Path(path) if path is not None else (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None)
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file} must hold a mapping, got {type(loaded).__name__}")
        retired = sorted(RETIRED_KEYS & set(loaded))
        if retired:
            LOGGER.info("ignoring retired keys in %s: %s", file, ", ".join(retired))
            loaded = {key: value for key, value in loaded.items() if key not in RETIRED_KEYS}
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown keys in {file}: {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
        cfg.update(loaded)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg["dims"] = parse_dims(cfg["dims"])
    for key, kind in (("conf", float), ("iou", float), ("imgsz", int), ("max_det", int), ("seed", int),
                      ("thumb_size", int), ("thumb_quality", int), ("batch", int)):
        try:
            cfg[key] = kind(cfg[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be {'a number' if kind is float else 'an integer'}, got {cfg[key]!r}") from None
    try:
        parse_recipe(cfg["feature_recipe"])
    except ValueError as exc:
        raise ConfigError(f"feature_recipe: {exc}") from None
    from objsearch.runtimes import check_runtime

    try:
        cfg["runtime"] = check_runtime(cfg["runtime"])
    except ValueError as exc:
        raise ConfigError(f"runtime: {exc}") from None
    try:
        parse_recipe(cfg["rerank_recipe"])
    except ValueError as exc:
        raise ConfigError(f"rerank_recipe: {exc}") from None
    if cfg["rerank_dims"] is not None:
        try:
            cfg["rerank_dims"] = int(cfg["rerank_dims"])
        except (TypeError, ValueError):
            raise ConfigError(f"rerank_dims must be one of {ALLOWED_DIMS} or null, got {cfg['rerank_dims']!r}") \
                from None
        if cfg["rerank_dims"] not in ALLOWED_DIMS:
            raise ConfigError(f"rerank_dims must be one of {ALLOWED_DIMS} or null (no reranking), got "
                              f"{cfg['rerank_dims']}")
        # an index holds one projection per dimension: the rerank vectors take the next free one (null: none left)
        cfg["rerank_dims"] = next((d for d in ALLOWED_DIMS if d >= cfg["rerank_dims"] and d not in cfg["dims"]), None)
    if cfg["projection"] not in PROJECTION_METHODS:
        raise ConfigError(f"projection must be one of {PROJECTION_METHODS}, got {cfg['projection']!r}")
    if not 0.0 <= float(cfg["conf"]) <= 1.0:
        raise ConfigError(f"conf must be in [0, 1], got {cfg['conf']}")
    for key in ("index_conf", "dedup_iou"):
        if cfg[key] is not None:
            try:
                cfg[key] = float(cfg[key])
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a number in [0, 1] or null, got {cfg[key]!r}") from None
            if not 0.0 <= cfg[key] <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1] or null, got {cfg[key]}")
    if not isinstance(cfg["index_mirror"], bool):
        raise ConfigError(f"index_mirror must be true or false, got {cfg['index_mirror']!r}")
    if int(cfg["imgsz"]) < 32:
        raise ConfigError(f"imgsz must be >= 32 pixels, got {cfg['imgsz']}")
    try:
        cfg["video_fps"] = float(cfg["video_fps"])
        cfg["video_stride"] = None if cfg["video_stride"] in (None, 0) else int(cfg["video_stride"])
    except (TypeError, ValueError):
        raise ConfigError(f"video_fps must be a number and video_stride an integer or null, got "
                          f"{cfg['video_fps']!r} and {cfg['video_stride']!r}") from None
    if not (0.0 < cfg["video_fps"] <= 1000.0) or not math.isfinite(cfg["video_fps"]):
        raise ConfigError(f"video_fps must be in (0, 1000] frames per second, got {cfg['video_fps']}")
    if cfg["video_stride"] is not None and cfg["video_stride"] < 1:
        raise ConfigError(f"video_stride must be >= 1 frame (or null: sample video_fps), got {cfg['video_stride']}")
    if cfg["batch"] < 1:
        raise ConfigError(f"batch must be >= 1 image, got {cfg['batch']}")
    return cfg


DEMO_INDEX = Path("runs") / "demo" / "coco128.h5"  # what ``objsearch demo`` writes by default


def find_demo_index(cwd: str | Path | None = None) -> Path | None:
    """The index ``objsearch demo`` made: ``runs/demo/coco128.h5`` under ``cwd`` (default: the current folder),
    else under the project root; None when neither exists."""
    for root in (Path.cwd() if cwd is None else Path(cwd), PROJECT_ROOT):
        if (root / DEMO_INDEX).is_file():
            return root / DEMO_INDEX
    return None
