"""Invisible watermarks: embedding imgsynth's, and recognising imgsynth's and Stable Diffusion XL's.

The method is invisible-watermark's DWT-DCT (``imwatermark``), the one diffusers' SDXL pipelines apply
(``StableDiffusionXLWatermarker``): 48 bits hidden in the DCT of the chroma channels' wavelet bands. It needs
an RGB image of at least 256 × 256 pixels (invisible-watermark refuses smaller ones; SDXL skips them), and,
being in the colour channels, a grayscale image cannot carry it. A watermark changes pixel values (slightly),
so it is opt-in (``--watermark``).

Recognising is a decode of 48 bits compared with each known message; a message counts as present when at
most :data:`MAX_BIT_ERRORS` bits differ (a random image matches a given 48-bit message that closely with
probability about 5e-8). It is fragile: on the textures of benchmarks/bench_audit_markers.py a JPEG at
quality 90 already removes it (16 of 48 bits wrong, typically), and resizing or cropping do too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from PIL import Image

METHOD = "dwtDct"
MIN_SIDE = 256
# imgsynth's 48-bit message: the ASCII bytes "imgsyn".
IMGSYNTH_MESSAGE = int.from_bytes(b"imgsyn", "big")
# The fixed message of diffusers' StableDiffusionXLWatermarker (from Stability AI's generative-models).
SDXL_MESSAGE = 0b101100111110110010010000011110111011000110011110
KNOWN_MESSAGES: Mapping[str, int] = {"imgsynth": IMGSYNTH_MESSAGE, "sdxl": SDXL_MESSAGE}
BITS = 48
MAX_BIT_ERRORS = 6


def message_bits(message: int) -> list[int]:
    """The 48 bits of a message, most significant first (how SDXL's watermarker spells them)."""
    return [(message >> (BITS - 1 - i)) & 1 for i in range(BITS)]


def why_not_watermarkable(image: Image.Image) -> str | None:
    """Why ``image`` cannot carry the watermark (too small, not RGB), or None when it can."""
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        return f"{width}x{height} px is below the {MIN_SIDE} px the DWT-DCT watermark needs to survive"
    if image.mode != "RGB":
        return f"mode {image.mode}: the DWT-DCT watermark lives in the colour channels, which an {image.mode} image has not"
    return None


def record(message: int = IMGSYNTH_MESSAGE) -> dict[str, str | int]:
    """What a set's manifest and a C2PA manifest record about the watermark."""
    return {"method": METHOD, "library": "invisible-watermark", "bits": BITS, "message": f"{message:012x}"}


def embed(image: Image.Image, message: int = IMGSYNTH_MESSAGE) -> Image.Image:
    """``image`` (RGB, ≥ 256 px a side) with ``message`` embedded, as SDXL's watermarker embeds its own."""
    reason = why_not_watermarkable(image)
    if reason:
        raise ValueError(f"cannot watermark: {reason}")
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", message_bits(message))
    bgr = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[:, :, ::-1])
    marked = encoder.encode(bgr, METHOD)
    return Image.fromarray(np.ascontiguousarray(np.clip(marked, 0, 255).astype(np.uint8)[:, :, ::-1]), "RGB")


@dataclass(frozen=True)
class WatermarkFacts:
    """Which known message an image carries (None: none of them), and how many bits differed."""

    name: str | None
    bit_errors: int


def available() -> bool:
    """Whether invisible-watermark is installed (``pip install 'imgsynth[watermark]'``)."""
    import importlib.util

    return importlib.util.find_spec("imwatermark") is not None


def detect(image: Image.Image) -> WatermarkFacts | None:
    """The known watermark ``image`` carries, if any; None when the image cannot carry one (too small) or
    invisible-watermark is not installed (see :func:`available`)."""
    if min(image.size) < MIN_SIDE or not available():
        return None
    from imwatermark import WatermarkDecoder

    rgb = image.convert("RGB")
    bgr = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[:, :, ::-1])
    decoded = WatermarkDecoder("bits", BITS).decode(bgr, METHOD)
    bits = np.asarray(decoded, dtype=int)[:BITS]
    best_name, best_errors = None, BITS
    for name, message in KNOWN_MESSAGES.items():
        errors = int(np.sum(bits != np.asarray(message_bits(message))))
        if errors < best_errors:
            best_name, best_errors = name, errors
    return WatermarkFacts(best_name if best_errors <= MAX_BIT_ERRORS else None, best_errors)


__all__ = ["available", "IMGSYNTH_MESSAGE", "KNOWN_MESSAGES", "MAX_BIT_ERRORS", "METHOD", "MIN_SIDE", "SDXL_MESSAGE",
           "WatermarkFacts", "detect", "embed", "message_bits", "record", "why_not_watermarkable"]
