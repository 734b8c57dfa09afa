"""RoIAlign to one cell (1x1), in plain torch: what ``torchvision.ops.roi_align(maps, [boxes], 1, scale, 2,
aligned=True)`` computes, without importing torchvision.

Why not torchvision: importing ``torchvision.ops`` imports ``torch._dynamo`` (2.0-2.4 s of a 6-7 s one-off query on a
2-core CPU, measured with ``python -X importtime``), and nothing else objsearch runs needs torchvision (ultralytics
uses its own ``TorchNMS`` when torchvision is not imported). The semantics are torchvision's CPU/CUDA kernel
(``roi_align_kernel.cpp``, after He et al., "Mask R-CNN", ICCV 2017): with ``aligned`` the box is shifted by half a
cell, the bin (the whole box here) is sampled on a 2 x 2 grid at the centres of its quarters, each sample is
interpolated bilinearly (a sample more than one cell outside the map counts as 0; one inside that margin is clamped to
the border), and the four samples are averaged. ``tests/test_roi.py`` holds it to torchvision's output.
"""

from __future__ import annotations

SAMPLING_RATIO = 2  # samples per bin side, as objsearch has always called roi_align


def roi_align_1x1(maps, boxes, spatial_scale: float):
    """Average of each box over ``maps`` (RoIAlign, one output cell, 2 x 2 samples, ``aligned=True``).

    Parameters
    ----------
    maps : tensor of shape (C, H, W), float, one image's feature map.
    boxes : tensor of shape (N, 4), float, ``xyxy`` in the pixels that ``spatial_scale`` maps onto the grid
        (letterboxed input pixels, with ``spatial_scale = 1 / stride``).
    spatial_scale : float, grid cells per pixel.

    Returns
    -------
    tensor of shape (N, C), the dtype of ``maps``, on its device.

    Raises
    ------
    ValueError
        When ``maps`` is not 3-d or ``boxes`` not (N, 4).
    """
    import torch

    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (C, H, W), got {tuple(maps.shape)}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    c, height, width = (int(s) for s in maps.shape)
    n = int(boxes.shape[0])
    if n == 0:
        return maps.new_zeros((0, c))
    b = boxes.to(maps.dtype) * spatial_scale - 0.5  # aligned: pixel centres
    start_x, start_y = b[:, 0], b[:, 1]
    size_x, size_y = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    grid = (torch.arange(SAMPLING_RATIO, device=maps.device, dtype=maps.dtype) + 0.5) / SAMPLING_RATIO
    ys = (start_y[:, None] + grid[None, :] * size_y[:, None])[:, :, None].expand(n, SAMPLING_RATIO, SAMPLING_RATIO)
    xs = (start_x[:, None] + grid[None, :] * size_x[:, None])[:, None, :].expand(n, SAMPLING_RATIO, SAMPLING_RATIO)
    ys, xs = ys.reshape(n, -1), xs.reshape(n, -1)  # (N, 4) sample points
    inside = (ys >= -1.0) & (ys <= height) & (xs >= -1.0) & (xs <= width)
    ys, xs = ys.clamp(min=0), xs.clamp(min=0)
    y0, x0 = ys.floor().long(), xs.floor().long()
    y_edge, x_edge = y0 >= height - 1, x0 >= width - 1
    y0, x0 = y0.clamp(max=height - 1), x0.clamp(max=width - 1)
    ys, xs = torch.where(y_edge, y0.to(maps.dtype), ys), torch.where(x_edge, x0.to(maps.dtype), xs)
    y1, x1 = torch.where(y_edge, y0, y0 + 1), torch.where(x_edge, x0, x0 + 1)
    ly, lx = ys - y0, xs - x0
    hy, hx = 1 - ly, 1 - lx
    flat = maps.reshape(c, height * width)
    value = (flat[:, y0 * width + x0] * (hy * hx) + flat[:, y0 * width + x1] * (hy * lx)
             + flat[:, y1 * width + x0] * (ly * hx) + flat[:, y1 * width + x1] * (ly * lx))  # (C, N, 4)
    value = value * inside.to(maps.dtype)
    return (value.sum(2) / (SAMPLING_RATIO * SAMPLING_RATIO)).T
