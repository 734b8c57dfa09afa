"""Bit flips in a small real index (real detector output), seen through `query --json` and the stored thumbnails:
every flip is harmless (identical output) or refused (exit 3, one line), never a silently different answer.

The catalog's own fuzz (tests/test_catalog.py) runs on synthetic data; this one runs the command line on an index
that ``analyze`` wrote. Flips are drawn with a fixed seed from the bytes that are not inside /objects/features
chunks (``query`` never reads the raw features, so flips there say nothing about it)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from support import record

from objsearch.types import StageTimes

ROOT = Path(__file__).resolve().parents[2]
BUS = ROOT.parent / "shared" / "data" / "samples" / "bus.jpg"
SEED = 20240611
N_FLIPS = 200


class _SameImageDetector:
    """The real detector, with its answer for the one query image cached: the query side is the same for every
    flip, so only the index differs (and the 200 runs take seconds, not minutes)."""

    def __init__(self, detector):
        self._detector = detector
        self._cache = {}

    def __getattr__(self, name):
        return getattr(self._detector, name)

    def __call__(self, image, conf=None, timings=None):
        key = (image.shape, hash(image[::7, ::7].tobytes()), conf)
        if key not in self._cache:
            stage = StageTimes()
            self._cache[key] = (self._detector(image, conf=conf, timings=stage), stage)
        dets, stage = self._cache[key]
        if timings is not None:
            vars(timings).update(vars(stage))
        return dets


def _chunk_ranges(path: Path, name: str) -> list[tuple[int, int]]:
    with h5py.File(path, "r") as f:
        ds = f[name]
        return [(info.byte_offset, info.byte_offset + info.size)
                for info in (ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks()))]


def _answer(result) -> dict:
    out = json.loads(result.stdout)
    out.pop("timings_ms")
    return out


def _thumbnails(path: Path) -> dict[int, bytes]:
    from objsearch.catalog import Catalog

    with Catalog(path) as c:
        return {int(i): c.thumbnail(int(i)) for i in c.object_id}


def test_bit_flips_are_harmless_or_refused(tiny_index, cli, shared_detector, tmp_path, monkeypatch):
    import objsearch.provenance as provenance
    from objsearch.errors import IndexFileError

    cached = _SameImageDetector(shared_detector)
    monkeypatch.setattr(provenance, "load_detector", lambda cfg, weights=None: cached)
    args = ("query", BUS, "-k", 4, "--json", "-i")
    base = cli(*args, tiny_index)
    assert base.exit_code == 0, base.output
    expected, expected_thumbs = _answer(base), _thumbnails(tiny_index)
    assert expected["objects"] and all(len(o["neighbors"]) == 4 for o in expected["objects"])

    data = tiny_index.read_bytes()
    skip = np.zeros(len(data), bool)
    for start, end in _chunk_ranges(tiny_index, "objects/features"):
        skip[start:end] = True
    positions = np.flatnonzero(~skip)
    rng = np.random.default_rng(SEED)
    flipped = tmp_path / "flipped.h5"
    outcomes = collections.Counter()
    different = []
    for n, pos in enumerate(rng.choice(positions, N_FLIPS, replace=False)):
        bit = int(rng.integers(8))
        damaged = bytearray(data)
        damaged[pos] ^= 1 << bit
        flipped.write_bytes(bytes(damaged))
        for side in ("lock", "undo", "journal"):
            flipped.with_name(f"{flipped.name}.{side}").unlink(missing_ok=True)
        result = cli(*args, flipped)
        assert "Traceback" not in result.output, (pos, bit, result.output)
        if result.exit_code == 3:
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (pos, bit, result.stderr)
            outcomes["refused"] += 1
            continue
        assert result.exit_code == 0, (pos, bit, result.exit_code, result.output)
        if _answer(result) != expected:
            different.append((int(pos), bit))
            continue
        try:  # the answer is the same; the thumbnails it would show must be too, or be refused
            same_thumbs = _thumbnails(flipped) == expected_thumbs
        except IndexFileError:
            outcomes["harmless answer, thumbnails refused"] += 1
            continue
        if not same_thumbs:
            different.append((int(pos), bit))
            continue
        outcomes["harmless"] += 1
    print(f"{N_FLIPS} bit flips (seed {SEED}) in {len(positions)} bytes outside feature chunks: {dict(outcomes)}")
    assert not different, f"flips that changed an answer silently (byte, bit): {different}"
    assert sum(outcomes.values()) == N_FLIPS
    assert outcomes["refused"] > 0 and outcomes["harmless"] > 0  # the fuzz reached both kinds of byte
    for outcome, count in outcomes.items():
        for _ in range(count):
            record(f"bit flip {outcome}")
