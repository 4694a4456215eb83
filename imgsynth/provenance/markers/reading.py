"""Every synthetic-content marker of one image file, read within bounds and never raising.

Metadata is read by Pillow with its own text-chunk limits (``PngImagePlugin.MAX_TEXT_CHUNK`` per chunk,
``MAX_TEXT_MEMORY`` in all; left as Pillow sets them), the XMP packet by
:func:`~imgsynth.provenance.markers.xmp.parse_xmp` (size, depth, no DOCTYPE), the C2PA manifest by
c2pa-python offline, the watermark by invisible-watermark's decoder when the image is large enough. A file
that defeats one reader is reported (``problem``), and the other markers are still looked for.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Mapping

from PIL import Image

from imgsynth.image_files import MAX_PIXELS
from imgsynth.provenance.markers.c2pa_signing import C2paFacts, read_c2pa
from imgsynth.provenance.markers.watermark import WatermarkFacts
from imgsynth.provenance.markers.xmp import XmpError, XmpFacts, parse_xmp

MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "TIFF": "image/tiff", "GIF": "image/gif",
        "BMP": "image/bmp", "AVIF": "image/avif", "HEIF": "image/heif"}


@dataclass
class FileMarkers:
    """What one file carries; ``image`` is the decoded image (None when it could not be decoded)."""

    xmp: XmpFacts | None = None
    c2pa: C2paFacts | None = None
    watermark: WatermarkFacts | None = None
    problems: list[str] = field(default_factory=list)
    image: Image.Image | None = None

    @property
    def synthetic(self) -> bool:
        """Any marker says a model made the image (a C2PA manifest counts whatever its validation)."""
        return bool((self.xmp is not None and self.xmp.synthetic)
                    or (self.c2pa is not None and (self.c2pa.synthetic or self.c2pa.software_agent == "imgsynth"))
                    or (self.watermark is not None and self.watermark.name is not None))

    @property
    def imgsynth(self) -> Mapping[str, str]:
        """imgsynth's own fields, from the XMP packet (or the C2PA manifest when the packet is gone)."""
        if self.xmp is not None and self.xmp.imgsynth:
            return self.xmp.imgsynth
        if self.c2pa is not None:
            return {k: str(v) for k, v in self.c2pa.imgsynth.items() if not isinstance(v, (list, dict))}
        return {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def read_markers(data: bytes, *, watermark: bool = True, c2pa: bool = True,
                 max_pixels: int = MAX_PIXELS) -> FileMarkers:
    """The markers in an image file's bytes (see the module docstring); never raises for bad data."""
    found = FileMarkers()
    image = None
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            found.problems.append(f"{width}x{height} pixels, over the limit of {max_pixels}")
            image = None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for hostile headers and chunk limits
        found.problems.append(f"unreadable image ({_first_line(exc)})")
        image = None
    mime = MIME.get(image.format or "", "image/png") if image is not None else "image/png"
    if image is not None:
        packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
        if packet:
            try:
                found.xmp = parse_xmp(packet)
            except XmpError as exc:
                found.problems.append(f"XMP: {exc}")
        try:
            image.load()
            found.image = image
        except Exception as exc:  # noqa: BLE001
            found.problems.append(f"unreadable pixels ({_first_line(exc)})")
    if c2pa:
        try:
            found.c2pa = read_c2pa(data, mime)
        except Exception as exc:  # noqa: BLE001 - belt and braces: read_c2pa already reports its own failures
            found.problems.append(f"C2PA: {_first_line(exc)}")
    if watermark and found.image is not None:
        try:
            from imgsynth.provenance.markers.watermark import detect

            found.watermark = detect(found.image)
        except Exception as exc:  # noqa: BLE001
            found.problems.append(f"watermark: {_first_line(exc)}")
    return found


__all__ = ["FileMarkers", "read_markers"]
