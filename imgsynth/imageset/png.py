"""Deterministic PNG encoding: equal pixels always give equal bytes, so equal images get equal hashes.

The one PNG writer. Generated images also carry their provenance inside the file
(:mod:`imgsynth.provenance.markers`): an XMP packet in an ``iTXt`` chunk, written before the pixel data and
uncompressed (as the XMP specification asks), so the pixel chunks are exactly those of the unmarked image;
optionally an invisible watermark (in the pixels) and a signed C2PA manifest (a ``caBX`` chunk).
"""

from __future__ import annotations

import io
from typing import Any, Mapping

from PIL import Image, PngImagePlugin

from imgsynth.provenance.markers import Marking
from imgsynth.provenance.markers.xmp import XMP_KEYWORD, xmp_packet


def encode_png(image: Image.Image, xmp: str | None = None) -> bytes:
    """Encode deterministically: fixed compression, no metadata chunks but the XMP packet ``xmp`` (if given),
    so equal pixels (and equal packets) give equal bytes."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    info = None
    if xmp is not None:
        info = PngImagePlugin.PngInfo()
        info.add_itxt(XMP_KEYWORD, xmp, lang="", tkey="", zip=False)
    image.save(buffer, format="PNG", optimize=False, compress_level=6, pnginfo=info)
    return buffer.getvalue()


def encode_generated(image: Image.Image, fields: Mapping[str, Any], marking: Marking = Marking(), *,
                     title: str = "image.png", parents: tuple[str, ...] = ()) -> tuple[bytes, dict[str, Any] | None]:
    """A generated image's PNG with its markers: the watermark when ``marking`` asks and the image can carry
    it, the XMP packet of ``fields``, the C2PA signature when ``marking`` has credentials. Returns the bytes
    and the watermark's record (None when none was embedded)."""
    mark = None
    if marking.watermark:
        from imgsynth.provenance.markers import watermark

        if watermark.why_not_watermarkable(image) is None:
            image = watermark.embed(image)
            mark = watermark.record()
    packet_fields = dict(fields)
    if mark is not None:
        packet_fields["watermark"] = f"{mark['method']}:{mark['message']}"
    data = encode_png(image, xmp_packet(packet_fields))
    if marking.c2pa is not None:
        from imgsynth.provenance.markers.c2pa_signing import sign_png

        data = sign_png(data, marking.c2pa, fields, title=title, parents=parents, watermark=mark)
    return data, mark
