"""Images for tests, made in memory: a small real PNG, its data URL, a PNG header followed by
garbage, and a valid PNG declaring 30,000 x 30,000 pixels in ~110 KB (1-bit rows of zeros,
compressed a row at a time, so building it never holds the 900 MB it would decode to)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image


def png(width: int = 8, height: int = 8, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{b64(data)}"


def garbage_png() -> bytes:
    """The PNG signature and the start of a header, then bytes that are no image."""
    return png()[:16] + b"this is not the rest of a PNG file" * 8


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(side: int = 30_000) -> bytes:
    """A valid 1-bit grayscale PNG of side x side pixels, all black."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
