"""Deterministic PNG encoding: equal pixels always give equal bytes, so equal images get equal hashes."""

from __future__ import annotations

import io

from PIL import Image


def encode_png(image: Image.Image) -> bytes:
    """Encode deterministically: no metadata chunks, fixed compression, so equal pixels give equal bytes."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()
