"""Decoding bounds of objsearch.media that the web server relies on: a header declaring too many pixels is refused
before anything is decoded, also past Pillow's own decompression-bomb threshold (where Pillow reports only the pixel
count) and below OpenCV's (2^30 pixels, which would let a 20000 x 20000 PNG allocate 1.2 GB)."""

from __future__ import annotations

import struct
import time
import zlib

import pytest

from objsearch.errors import ImageReadError
from objsearch.media import decode_image


def png_bomb(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares width x height RGB pixels (the data is cut short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("side, shown", [(12000, "12000 x 12000 pixels"), (20000, "400 MP"), (65000, "4225 MP")])
def test_pixel_bombs_are_refused_from_the_header(side, shown):
    t0 = time.perf_counter()
    with pytest.raises(ImageReadError, match=f"{shown}.*more than the limit of 100 MP"):
        decode_image(png_bomb(side, side), "bomb.png")
    assert time.perf_counter() - t0 < 1.0  # nothing was decoded


def test_a_larger_limit_lets_pillow_bombs_through_to_the_decoder():
    """With max_pixels above the declared size the header check passes and the (cut) data fails to decode."""
    with pytest.raises(ImageReadError, match="cannot read image bomb.png") as info:
        decode_image(png_bomb(1000, 1000), "bomb.png", max_pixels=2_000_000)
    assert "more than the limit" not in str(info.value)
