"""Build a SYNTHETIC index of the original app's size: 376,459 objects over 136,199 images (issue 4).

The numbers are those of ReverseObjectSearchFast (COCO, 376,459 objects from 136,199 images). The objects are made
from the real objects of a real index (default: coco128 analysed with our detector, built on the fly): each synthetic
object copies a real object's class, box, confidence and thumbnail (real JPEG bytes, so the file size per object is
realistic) and takes that object's raw feature plus Gaussian noise (``--noise`` times the per-dimension standard
deviation of the real features). Projections are stored at 16, 32, 64, 128 and 256 dims (random, seed 0), except
the real index's rerank dimension, which holds its rerank projection (``objsearch.rerank``). It is
written through the catalog writer like any index (format 2, stable ids), in commits of ``--commit`` images, so
memory stays bounded. Every index it writes says ``synthetic: true`` in its attributes and configuration. Never
commit its output.

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
    parser.add_argument("--commit", type=int, default=20_000, help="images per transaction")
    args = parser.parse_args()

    from objsearch.catalog import Catalog, CatalogWriter
    from objsearch.config import parse_dims
    from objsearch.projection import make_projection
    from objsearch.types import Detections, MediaRecord, MediaRef

    t0 = time.perf_counter()
    stack = contextlib.ExitStack()
    source = stack.enter_context(coco128_index(args.index))
    with Catalog(source) as real:
        n_real = len(real.object_id)
        feats = real.features(real.object_id)
        thumbs = [real.thumbnail(i) for i in real.object_id]
        attrs = {k: real.attrs[k] for k in ("weights_sha256", "weights_name", "feature_recipe", "config",
                                             "class_names") if k in real.attrs}
        xyxy, conf, cls = real.xyxy, real.confidence, real.class_id
        rows = real.media_rows(real.object_media_id)
        widths, heights = real.media_width[rows], real.media_height[rows]
        rerank_dims = real.rerank_dims
        rerank = real.projection(rerank_dims) if rerank_dims is not None else None
    rng = np.random.default_rng(args.seed)
    n, n_img = args.objects, args.images
    if n < n_img:
        raise SystemExit("--objects must be >= --images (every image holds at least one object)")
    source_id = rng.integers(0, n_real, n)
    image_of = np.sort(np.concatenate([np.arange(n_img), rng.integers(0, n_img, n - n_img)]))
    std = feats.std(0, keepdims=True)
    first = np.searchsorted(image_of, np.arange(n_img + 1))
    dims = parse_dims(args.dims)
    projections = [make_projection("random", d, 0).fit(feats[:1]) for d in dims if d != rerank_dims]
    if rerank is not None:  # the real index's rerank projection (objsearch.rerank), so searches rerank as they would
        projections.append(rerank)
    config = {**attrs.get("config", {}), "dims": [d for d in dims if d != rerank_dims], "projection": "random",
              "seed": 0, "synthetic": True, "rerank_dims": rerank_dims}
    attrs.update(config=config, synthetic=True, base_dir="/synthetic", state="ready",
                 description=f"SYNTHETIC: {n} objects over {n_img} images made from the {n_real} real objects of "
                             f"{source.name} (features + {args.noise} std noise); not real images")
    writer = CatalogWriter.create(args.output, attrs=attrs, n_features=feats.shape[1], projections=projections,
                                  overwrite=True, fsync=False)
    try:
        for i in range(n_img):
            sl = slice(first[i], first[i + 1])
            src = source_id[sl]
            noise = args.noise * std * rng.standard_normal((len(src), feats.shape[1]), dtype=np.float32)
            dets = Detections(xyxy[src], conf[src], cls[src], feats[src] + noise)
            # as large as the largest source image, so every copied box lies inside it (an index checks that)
            media = MediaRef(path=f"synthetic/{i:06d}.jpg", width=int(widths[src].max()),
                             height=int(heights[src].max()))
            writer.add(MediaRecord(media, dets, [thumbs[s] for s in src]))
            if (i + 1) % args.commit == 0:
                writer.commit()
        writer.commit()
    finally:
        writer.close()
    size = args.output.stat().st_size
    print(f"SYNTHETIC index {args.output}: {n} objects, {n_img} images, dims {dims}, from {n_real} real objects; "
          f"{size / 1e9:.2f} GB ({size / n / 1e3:.2f} kB per object); {time.perf_counter() - t0:.0f} s")
    stack.close()


if __name__ == "__main__":
    main()
