"""Feature recipes: which blocks make an object's (or an image's) feature vector, with what weights.

A recipe is ``{block name: weight}``, written ``"cls_logits:2.5,neck_roi:1"`` in configuration files and on the
command line (a block without a weight gets 1). Each block is L2-normalised on its own, multiplied by its weight and
the blocks are concatenated in the recipe's order (see ``objsearch.detector`` for what each block is). The recipe is
stored in every index so queries use the same one. The defaults live here once; ``cfg/default.yaml`` shows them to
the user and ``tests/test_config.py`` holds the two together.

This module imports numpy only.
"""

from __future__ import annotations

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
