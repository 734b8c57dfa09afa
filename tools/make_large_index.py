"""Build a SYNTHETIC index of the original app's size: 376,459 objects over 136,199 images (issue 4).

The numbers are those of ReverseObjectSearchFast (COCO, 376,459 objects from 136,199 images). The objects are made
from the real objects of a real index (default: coco128 analysed with our detector, built on the fly): each synthetic
object copies a real object's class, box, confidence and thumbnail (real JPEG bytes, so the file size per object is
realistic) and takes that object's raw feature plus Gaussian noise (``--noise`` times the per-dimension standard
deviation of the real features). Projections are stored at 16, 32, 64, 128 and 256 dims (random, seed 0).
Every index it writes says ``synthetic: true`` in its attributes and configuration. Never commit its output.

Usage::

    python tools/make_large_index.py -o /tmp/large.h5 [-i REAL_INDEX.h5] [--objects 376459] [--images 136199]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np

from _common import coco128_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("-i", "--index", type=Path, help="real index to draw from (default: coco128, analysed now)")
    parser.add_argument("--objects", type=int, default=376_459)
    parser.add_argument("--images", type=int, default=136_199)
    parser.add_argument("--noise", type=float, default=0.25)
    parser.add_argument("--dims", default="16,32,64,128,256")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from objsearch.config import parse_dims
    from objsearch.projection import make_projection
    from objsearch.store import IndexFile, write_index_arrays

    t0 = time.perf_counter()
    stack = contextlib.ExitStack()
    source = stack.enter_context(coco128_index(args.index))
    with IndexFile(source) as real:
        n_real = len(real)
        feats = real.features(np.arange(n_real))
        thumbs = [real.thumbnail(i) for i in range(n_real)]
        attrs = {k: v for k, v in real.attrs.items() if k not in ("format", "format_version", "created", "skipped")}
        xyxy, conf, cls = real.xyxy, real.confidence, real.class_id
        widths, heights = real.image_width[real.image_id], real.image_height[real.image_id]
    rng = np.random.default_rng(args.seed)
    n, n_img = args.objects, args.images
    if n < n_img:
        raise SystemExit("--objects must be >= --images (every image holds at least one object)")
    source_id = rng.integers(0, n_real, n)
    image_id = np.sort(np.concatenate([np.arange(n_img), rng.integers(0, n_img, n - n_img)]))
    std = feats.std(0, keepdims=True)
    features = np.empty((n, feats.shape[1]), np.float32)
    for start in range(0, n, 65536):
        sl = slice(start, min(n, start + 65536))
        features[sl] = feats[source_id[sl]] + args.noise * std * rng.standard_normal((sl.stop - sl.start, feats.shape[1]), dtype=np.float32)
    first = np.searchsorted(image_id, np.arange(n_img))
    dims = parse_dims(args.dims)
    projections = [make_projection("random", d, 0).fit(features[:1]) for d in dims]
    config = {**attrs.get("config", {}), "dims": dims, "projection": "random", "seed": 0, "synthetic": True}
    attrs.update(config=config, synthetic=True, base_dir="/synthetic",
                 description=f"SYNTHETIC: {n} objects over {n_img} images made from the {n_real} real objects of "
                             f"{source.name} (features + {args.noise} std noise); not real images")
    write_index_arrays(
        args.output,
        image_path=[f"synthetic/{i:06d}.jpg" for i in range(n_img)],
        width=widths[source_id[first]], height=heights[source_id[first]],
        image_id=image_id, xyxy=xyxy[source_id], confidence=conf[source_id], class_id=cls[source_id],
        features=features, thumbnails=[thumbs[j] for j in source_id], projections=projections, attrs=attrs,
    )
    size = args.output.stat().st_size
    print(f"SYNTHETIC index {args.output}: {n} objects, {n_img} images, dims {dims}, from {n_real} real objects; "
          f"{size / 1e9:.2f} GB ({size / n / 1e3:.2f} kB per object); {time.perf_counter() - t0:.0f} s")
    stack.close()


if __name__ == "__main__":
    main()
