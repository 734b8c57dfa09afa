"""Pooling as pure functions of (maps with their strides, boxes, anchors, recipe): small seeded maps, by hand."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from objsearch.pooling import (FeatureMaps, anchor_cells, block_sizes, image_feature, letterbox_window,  # noqa: E402
                               mirror_anchors, pool)


def _maps(batch: int = 1, nc: int = 3, seed: int = 0, with_heads: bool = True) -> FeatureMaps:
    """Two levels: 4 x 6 cells of stride 8 and 2 x 3 cells of stride 16 (a 32 x 48 input)."""
    g = torch.Generator().manual_seed(seed)
    neck = [torch.rand((batch, 5, 4, 6), generator=g), torch.rand((batch, 7, 2, 3), generator=g)]
    scores = torch.randn((batch, nc, 4 * 6 + 2 * 3), generator=g)
    heads = [torch.rand((batch, 2, 4, 6), generator=g), torch.rand((batch, 2, 2, 3), generator=g)]
    return FeatureMaps(neck, scores, (8, 16), heads if with_heads else None, heads if with_heads else None)


def test_maps_know_their_grids_and_anchors():
    maps = _maps()
    assert maps.strides == (8.0, 16.0) and maps.grid_sizes == [(4, 6), (2, 3)] and maps.anchor_offsets == [0, 24, 30]
    level, cell = anchor_cells(maps, torch.tensor([0, 23, 24, 29]))
    assert level.tolist() == [0, 0, 1, 1] and cell.tolist() == [0, 23, 0, 5]
    # row 1, column 0 of level 0 -> column 5; row 0, column 1 of level 1 -> column 1 (the middle stays)
    assert mirror_anchors(maps, torch.tensor([6, 25, 24])).tolist() == [11, 25, 26]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"strides": (8,)}, "one stride per level"),
    ({"scores": torch.zeros((1, 3, 29))}, r"scores must have shape \(B, nc, 30\)"),
    ({"cls": [torch.zeros((1, 2, 4, 6))]}, "cls must have one map per level"),
])
def test_inconsistent_maps_are_refused(kwargs, match):
    maps = _maps()
    fields = {"neck": maps.neck, "scores": maps.scores, "strides": maps.strides, "cls": maps.cls, "box": maps.box}
    with pytest.raises(ValueError, match=match):
        FeatureMaps(**{**fields, **kwargs})


def test_cls_logits_block_by_hand():
    maps = _maps(batch=2)
    anchors = torch.tensor([3, 27])
    out = pool(maps, 1, torch.tensor([[0.0, 0.0, 8.0, 8.0], [16.0, 0.0, 48.0, 32.0]]), anchors, {"cls_logits": 2.0})
    logits = maps.scores[1][:, anchors].T.numpy()
    centred = logits - logits.mean(1, keepdims=True)
    expected = 2.0 * centred / np.linalg.norm(centred, axis=1, keepdims=True)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_cell_blocks_read_the_anchor_cell_of_its_level():
    maps = _maps()
    out = pool(maps, 0, torch.zeros((1, 4)), torch.tensor([24 + 4]), {"box_cell": 1.0})  # level 1, row 1, column 1
    v = maps.box[1][0, :, 1, 1].numpy()
    np.testing.assert_allclose(out[0], v / np.linalg.norm(v), rtol=1e-5)


def test_neck_roi_of_constant_maps_is_one_unit_vector_per_level():
    neck = [torch.ones((1, 5, 4, 6)), torch.full((1, 7, 2, 3), 3.0)]
    maps = FeatureMaps(neck, torch.zeros((1, 3, 30)), (8, 16))
    out = pool(maps, 0, torch.tensor([[4.0, 4.0, 20.0, 20.0]]), torch.tensor([0]), {"neck_roi": 1.0})
    np.testing.assert_allclose(out[0], np.r_[np.full(5, 1 / np.sqrt(5)), np.full(7, 1 / np.sqrt(7))], rtol=1e-5)


def test_no_boxes_and_missing_maps():
    recipe = {"cls_logits": 2.5, "neck_roi": 1.0}
    assert pool(_maps(), 0, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), recipe).shape == (0, 3 + 12)
    assert block_sizes(_maps(), {"cls_cell": 1, "box_cell": 1}) == {"cls_cell": 2, "box_cell": 2}
    with pytest.raises(ValueError, match="feature block 'cls_roi' were not computed"):
        pool(_maps(with_heads=False), 0, torch.zeros((1, 4)), torch.tensor([0]), {"cls_roi": 1.0})
    with pytest.raises(ValueError, match="image block 'cls_gap' were not computed"):
        image_feature(_maps(with_heads=False), 0, (0, 0, 48, 32), {"cls_gap": 1.0})


def test_image_feature_ignores_the_letterbox_padding():
    """The same image alone (32 x 48) or padded below it to 48 x 48 gets the same whole-image vector: only the cells
    whose centres lie in the image's window are pooled."""
    alone = _maps()
    pad = lambda m: torch.cat([m, torch.full((1, m.shape[1], m.shape[2] // 2, m.shape[3]), 9.0)], 2)  # noqa: E731
    scores = torch.cat([torch.cat([alone.scores[:, :, :24].reshape(1, 3, 4, 6), torch.full((1, 3, 2, 6), 5.0)], 2)
                        .flatten(2), torch.cat([alone.scores[:, :, 24:].reshape(1, 3, 2, 3),
                                                torch.full((1, 3, 1, 3), 5.0)], 2).flatten(2)], 2)
    padded = FeatureMaps([pad(f) for f in alone.neck], scores, alone.strides, [pad(f) for f in alone.cls])
    recipe = {"neck_gap": 1.0, "cls_gap": 1.0, "cls_max": 0.5, "cls_sum": 0.5}
    window = letterbox_window((48, 48), (32, 48))
    assert window == (0.0, 8.0, 48.0, 40.0)
    a = image_feature(alone, 0, (0.0, 0.0, 48.0, 32.0), recipe)
    assert a.dtype == np.float32 and a.shape == (5 + 7 + 4 + 3 + 3,)
    assert padded.grid_sizes == [(6, 6), (3, 3)]
    b = image_feature(padded, 0, (0.0, 0.0, 48.0, 32.0), recipe)
    np.testing.assert_allclose(a, b, rtol=1e-5)
