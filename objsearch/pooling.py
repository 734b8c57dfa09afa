"""Pooling: an object's and an image's feature vector from the maps one detector pass computed (pure functions).

``FeatureMaps`` holds what a detector runtime hands over after a forward pass (``objsearch.runtimes``): the maps that
feed the Detect head, the class logits at every anchor and the heads' penultimate maps, each level with its stride.
``pool`` makes the object vectors (N, D) of one image's boxes, ``image_feature`` its whole-image vector (F,); both are
functions of (maps, boxes or window, recipe) only, so the same code runs whatever runtime made the maps.

A recipe is ``{block name: weight}``, written ``"cls_logits:2.5,neck_roi:1"`` in configuration files and on the
command line (a block without a weight gets 1). Each block is L2-normalised on its own, multiplied by its weight and
the blocks are concatenated in the recipe's order (see ``objsearch.detector`` for what each block is). The recipe is
stored in every index so queries use the same one. The defaults live here once; ``cfg/default.yaml`` shows them to
the user and ``tests/test_config.py`` holds the two together.

This module imports numpy at import time; torch only inside the functions that take tensors (``FeatureMaps`` holds
torch tensors, on the detector's device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RECIPE_VERSION = 2  # bump when a block's definition changes: indexes of another version are refused
FEATURE_BLOCKS = ("cls_cell", "cls_logits", "cls_roi", "box_cell", "neck_roi")
DEFAULT_RECIPE = "cls_logits:2.5,neck_roi:1"  # docs/neighbours.md
DEFAULT_RERANK_RECIPE = "cls_logits:0.5,neck_roi:1"  # the rerank vectors' block weights (objsearch.rerank)

# whole-image feature (one vector per media item, from the same forward pass; see ``image_blocks``)
IMAGE_RECIPE_VERSION = 1  # bump when an image block's definition changes: such indexes need `objsearch sync`
IMAGE_BLOCKS = ("neck_gap", "neck_gmp", "cls_gap", "cls_max", "cls_sum")
DEFAULT_IMAGE_RECIPE = "neck_gap:1,cls_sum:0.5"  # chosen by `eval --mode image`, see docs/quality.md


def _parse(recipe: str | dict[str, float], known: tuple[str, ...], kind: str) -> dict[str, float]:
    """``{block: weight}`` of ``recipe`` (text or dict) whose blocks are among ``known``; ``kind`` names the recipe
    in messages ("feature", "image feature")."""
    if isinstance(recipe, dict):
        items = list(recipe.items())
    else:
        items = [(name.strip(), float(weight) if weight else 1.0)
                 for name, _, weight in (part.strip().partition(":") for part in str(recipe).split(","))]
    out: dict[str, float] = {}
    for name, weight in items:
        if name not in known:
            raise ValueError(f"unknown {kind} block {name!r}; expected one of {', '.join(known)}")
        if not float(weight) > 0:
            raise ValueError(f"{kind} block weights must be positive, got {name}:{weight}")
        out[name] = float(weight)
    if not out:
        raise ValueError(f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} recipe needs at least one block")
    return out


def parse_recipe(recipe: str | dict[str, float]) -> dict[str, float]:
    """Turn ``"cls_cell:1,cls_logits:0.5"`` (or a dict) into ``{block: weight}`` over ``FEATURE_BLOCKS``.

    Raises
    ------
    ValueError
        For an unknown block name, a weight that is not a positive number, or no block at all.
    """
    return _parse(recipe, FEATURE_BLOCKS, "feature")


def parse_image_recipe(recipe: str | dict[str, float]) -> dict[str, float]:
    """Turn ``"neck_gap:1,cls_max:0.5"`` (or a dict) into ``{image block: weight}`` over ``IMAGE_BLOCKS``.

    Raises
    ------
    ValueError
        For an unknown image block name, a weight that is not a positive number, or no block at all.
    """
    return _parse(recipe, IMAGE_BLOCKS, "image feature")


# ------------------------------------------------------------------------------------------------------------- maps
@dataclass(frozen=True)
class FeatureMaps:
    """The maps one detector forward pass computed for a batch of B letterboxed images, each level with its stride.

    Attributes
    ----------
    neck : tuple of tensors of shape (B, C_l, H_l, W_l), float
        The maps that feed the Detect head (P3-P5), one per level.
    scores : tensor of shape (B, nc, A), float
        The class logits (before the sigmoid) at every anchor; the levels' cells flattened row-major, P3 first, so
        A = sum of H_l * W_l.
    strides : tuple of float
        Pixels of the letterboxed network input per cell of each level (8, 16, 32 for YOLOv8/YOLO11).
    cls, box : tuple of tensors of shape (B, C', H_l, W_l), or None
        The class and box branches' penultimate maps per level (``Detect.cv3[l][-2]``, ``Detect.cv2[l][-2]``); None
        when the runtime did not compute them (an exported graph without them, see ``objsearch.runtimes``).

    Raises
    ------
    ValueError
        When the levels of the maps and strides disagree.
    """

    neck: tuple
    scores: Any
    strides: tuple[float, ...]
    cls: tuple | None = None
    box: tuple | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "neck", tuple(self.neck))
        object.__setattr__(self, "strides", tuple(float(s) for s in self.strides))
        if len(self.neck) != len(self.strides):
            raise ValueError(f"one stride per level expected: {len(self.neck)} maps, got {len(self.strides)} strides")
        for name in ("cls", "box"):
            maps = getattr(self, name)
            if maps is not None:
                maps = tuple(maps)
                if any(m is None for m in maps):
                    maps = None  # a runtime gives every level or none
                elif len(maps) != len(self.neck):
                    raise ValueError(f"{name} must have one map per level ({len(self.neck)}), got {len(maps)}")
                object.__setattr__(self, name, maps)
        anchors = sum(h * w for h, w in self.grid_sizes)
        if int(self.scores.shape[2]) != anchors:
            raise ValueError(f"scores must have shape (B, nc, {anchors}) for these maps, got {tuple(self.scores.shape)}")

    @property
    def grid_sizes(self) -> list[tuple[int, int]]:
        """(H_l, W_l) cells of each level."""
        return [(int(f.shape[2]), int(f.shape[3])) for f in self.neck]

    @property
    def anchor_offsets(self) -> list[int]:
        """The first anchor index of each level, then A (the number of anchors): length levels + 1."""
        return [0, *np.cumsum([h * w for h, w in self.grid_sizes]).tolist()]


def anchor_cells(maps: FeatureMaps, anchor_idx):
    """Level and cell (row-major within the level) of each anchor index: two (N,) int64 tensors on its device."""
    import torch

    offsets = torch.tensor(maps.anchor_offsets[:-1], device=anchor_idx.device)
    level = torch.bucketize(anchor_idx, offsets, right=True) - 1
    return level, anchor_idx - offsets[level]


def mirror_anchors(maps: FeatureMaps, anchor_idx):
    """The anchor index of each of ``anchor_idx`` ((N,) int64 tensor) in the horizontally flipped input: the same
    row of the same level, column W_l - 1 - column. Exact when the input width is a multiple of every stride (the
    letterbox makes it so)."""
    mirrored = anchor_idx.clone()
    offsets = maps.anchor_offsets
    for lv, (h, w) in enumerate(maps.grid_sizes):
        sel = (anchor_idx >= offsets[lv]) & (anchor_idx < offsets[lv + 1])
        cell = anchor_idx[sel] - offsets[lv]
        mirrored[sel] = offsets[lv] + (cell // w) * w + (w - 1 - cell % w)
    return mirrored


def block_sizes(maps: FeatureMaps, recipe: dict[str, float]) -> dict[str, int]:
    """Columns of each block of ``recipe`` ({block: weight}, see ``parse_recipe``) pooled from ``maps``.

    Raises
    ------
    ValueError
        For a block whose maps were not computed (``maps.cls`` or ``maps.box`` None).
    """
    sizes = {}
    for name in recipe:
        if name in ("cls_cell", "cls_roi", "box_cell"):
            branch = maps.box if name == "box_cell" else maps.cls
            if branch is None:
                raise ValueError(f"the maps of feature block {name!r} were not computed by this runtime")
            sizes[name] = int(branch[0].shape[1])
        elif name == "cls_logits":
            sizes[name] = int(maps.scores.shape[1])
        else:  # neck_roi
            sizes[name] = sum(int(f.shape[1]) for f in maps.neck)
    return sizes


def pool(maps: FeatureMaps, image: int, xyxy, anchor_idx, recipe: dict[str, float]) -> np.ndarray:
    """One feature vector per object of batch item ``image``: each block of ``recipe`` L2-normalised on its own,
    multiplied by its weight, the blocks concatenated in the recipe's order (see ``objsearch.detector``).

    Parameters
    ----------
    maps : the forward pass's maps.
    image : int, the batch item the objects belong to.
    xyxy : tensor of shape (N, 4), float, boxes in pixels of the letterboxed network input.
    anchor_idx : tensor of shape (N,), int64, the anchor that made each box (NMS's ``return_idxs``), in [0, A).
    recipe : {block: weight}, as ``parse_recipe`` returns it.

    Returns
    -------
    ndarray of shape (N, D), float32, D = sum of ``block_sizes(maps, recipe)``.

    Raises
    ------
    ValueError
        For a block whose maps were not computed.
    """
    import torch

    from objsearch.roi import roi_align_1x1

    n = len(anchor_idx)
    if n == 0:
        return np.zeros((0, sum(block_sizes(maps, recipe).values())), np.float32)
    block_sizes(maps, recipe)  # every block's maps are there
    level, cell = anchor_cells(maps, anchor_idx)
    b = int(image)
    blocks = []
    for name, weight in recipe.items():
        if name in ("cls_cell", "box_cell"):
            branch = maps.cls if name == "cls_cell" else maps.box
            block = torch.empty((n, branch[0].shape[1]), device=anchor_idx.device)
            for lv, m in enumerate(branch):
                sel = level == lv
                if sel.any():
                    block[sel] = m[b].flatten(1)[:, cell[sel]].T
        elif name == "cls_logits":
            block = maps.scores[b][:, anchor_idx].T
            block = block - block.mean(1, keepdim=True)  # the logits share a large negative offset
        elif name == "cls_roi":
            block = torch.empty((n, maps.cls[0].shape[1]), device=anchor_idx.device)
            for lv, m in enumerate(maps.cls):
                sel = level == lv
                if sel.any():
                    block[sel] = roi_align_1x1(m[b], xyxy[sel].float(), 1.0 / maps.strides[lv])
        else:  # neck_roi: each level normalised on its own, so the block's norm is sqrt(levels) times its weight
            rois = xyxy.float()
            parts = [torch.nn.functional.normalize(roi_align_1x1(f[b], rois, 1.0 / s).float(), dim=1)
                     for f, s in zip(maps.neck, maps.strides)]
            blocks.append(torch.cat(parts, 1) * weight)
            continue
        blocks.append(torch.nn.functional.normalize(block.float(), dim=1) * weight)
    return torch.cat(blocks, 1).cpu().numpy().astype(np.float32)


# -------------------------------------------------------------------------------------------------- whole image
def letterbox_window(lb_shape: tuple[int, int], image_shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """Where an image of ``image_shape`` (H, W[, 3]) lies in its letterboxed network input of ``lb_shape``
    (H', W'): ``(x1, y1, x2, y2)`` in letterboxed pixels (the padding is outside), as ``scale_boxes`` computes it."""
    h0, w0 = int(image_shape[0]), int(image_shape[1])
    gain = min(lb_shape[0] / h0, lb_shape[1] / w0)
    pad_w = round((lb_shape[1] - w0 * gain) / 2 - 0.1)
    pad_h = round((lb_shape[0] - h0 * gain) / 2 - 0.1)
    return float(pad_w), float(pad_h), float(pad_w + w0 * gain), float(pad_h + h0 * gain)


def _window_cells(window: tuple[float, float, float, float], stride: float, grid: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of a feature grid (``grid`` = (h, w) cells of ``stride`` pixels) whose cell centres lie in
    ``window`` (letterboxed pixels); never empty."""
    x1, y1, x2, y2 = window

    def span(lo: float, hi: float, n: int) -> slice:
        a = max(0, min(n - 1, int(np.ceil(lo / stride - 0.5))))
        b = max(a + 1, min(n, int(np.floor(hi / stride - 0.5)) + 1))
        return slice(a, b)

    return span(y1, y2, grid[0]), span(x1, x2, grid[1])


def image_blocks(maps: FeatureMaps, image: int, window, names=IMAGE_BLOCKS) -> dict:
    """Whole-image feature blocks of batch item ``image`` from the maps a detector pass already computed.

    Every block is pooled over the cells whose centres lie inside the image (``window``), never over the letterbox
    padding, so an image gets the same vector alone or in a padded batch.

    Parameters
    ----------
    maps : the forward pass's maps.
    image : int, the batch item.
    window : (x1, y1, x2, y2) of the image in letterboxed pixels (``letterbox_window``).
    names : the blocks to compute; ``cls_gap`` is left out when ``maps.cls`` is None.

    Returns
    -------
    dict of block name -> tensor of shape (C,), float32, not normalised:

    ``neck_gap``  global average of each P3-P5 map, each level L2-normalised, concatenated (C = sum C_l)
    ``neck_gmp``  the same with the maximum
    ``cls_gap``   global average of the class branch's penultimate maps, per level normalised, concatenated
    ``cls_max``   per class, the largest logit over the image's anchors, minus the mean over classes (nc)
    ``cls_sum``   per class, the sum of sigmoid scores over the image's anchors (a soft count; nc)
    """
    import torch

    b = int(image)
    cells = [_window_cells(window, s, g) for s, g in zip(maps.strides, maps.grid_sizes)]
    out = {}

    def pooled(level_maps, how):
        parts = []
        for m, (rows, cols) in zip(level_maps, cells):
            region = m[b][:, rows, cols].flatten(1).float()
            v = region.mean(1) if how == "mean" else region.amax(1)
            parts.append(torch.nn.functional.normalize(v, dim=0))
        return torch.cat(parts)

    if "neck_gap" in names:
        out["neck_gap"] = pooled(maps.neck, "mean")
    if "neck_gmp" in names:
        out["neck_gmp"] = pooled(maps.neck, "max")
    if "cls_gap" in names and maps.cls is not None:
        out["cls_gap"] = pooled(maps.cls, "mean")
    if "cls_max" in names or "cls_sum" in names:
        scores = maps.scores[b]
        offsets = maps.anchor_offsets
        logits = []
        for lv, ((h, w), (rows, cols)) in enumerate(zip(maps.grid_sizes, cells)):
            level = scores[:, offsets[lv]:offsets[lv + 1]].reshape(-1, h, w)
            logits.append(level[:, rows, cols].flatten(1))
        logits = torch.cat(logits, 1).float()
        if "cls_max" in names:
            top = logits.amax(1)
            out["cls_max"] = top - top.mean()
        if "cls_sum" in names:
            out["cls_sum"] = logits.sigmoid().sum(1)
    return out


def image_feature(maps: FeatureMaps, image: int, window, recipe: dict[str, float]) -> np.ndarray:
    """The whole-image feature of batch item ``image``: each block of ``recipe`` ({image block: weight},
    ``parse_image_recipe``) L2-normalised, weighted and concatenated (see ``image_blocks``).

    Returns
    -------
    ndarray of shape (F,), float32.

    Raises
    ------
    ValueError
        For a block whose maps were not computed (``cls_gap`` without ``maps.cls``).
    """
    import torch

    blocks = image_blocks(maps, image, window, names=tuple(recipe))
    parts = []
    for name, weight in recipe.items():
        if name not in blocks:
            raise ValueError(f"the maps of image block {name!r} were not computed by this runtime")
        parts.append(torch.nn.functional.normalize(blocks[name].float(), dim=0) * weight)
    return torch.cat(parts).cpu().numpy().astype(np.float32)
