"""What several commands' flags share: a flag under its former name, ``key=value`` option pairs, the
``--resize-mode`` option of the commands that extract features, and the provenance flags of the commands that
generate (``imgsynth generate`` and its ``accelerate launch`` form)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import typer

from imgsynth.assignments import parse_assignments
from imgsynth.metrics.extractors.registry import DEFAULT_RESIZE_MODE, RESIZE_MODES
from imgsynth.notes import Note

if TYPE_CHECKING:
    from imgsynth.provenance.markers import Marking

T = TypeVar("T")

# Provenance inside each file (imgsynth.provenance.markers); the XMP marker is always written.
WATERMARK_OPTION = typer.Option(False, "--watermark", help="Embed imgsynth's invisible DWT-DCT watermark "
                                "(invisible-watermark, as SDXL pipelines do) in RGB images of at least 256 px; "
                                "changes pixel values slightly.")
C2PA_CERT_OPTION = typer.Option(None, "--c2pa-cert", help="Sign a C2PA manifest into every image with this PEM "
                                "certificate chain (ES256; needs imgsynth\\[c2pa]).")
C2PA_KEY_OPTION = typer.Option(None, "--c2pa-key", help="The PEM private key of --c2pa-cert.")
C2PA_TSA_OPTION = typer.Option(None, "--c2pa-tsa", help="A timestamp authority URL for C2PA signatures (default: "
                               "none, signing is offline).")


def marking_flags(watermark: bool, c2pa_cert: Optional[Path], c2pa_key: Optional[Path],
                  c2pa_tsa: Optional[str]) -> "Marking":
    """The marks the provenance flags ask for, their C2PA credentials checked before any model loads."""
    from imgsynth.provenance.markers import Marking

    marking = Marking.of(watermark=watermark, c2pa_cert=None if c2pa_cert is None else str(c2pa_cert),
                         c2pa_key=None if c2pa_key is None else str(c2pa_key), tsa_url=c2pa_tsa)
    if marking.c2pa is not None:
        marking.c2pa.check()
    return marking


def renamed_flag(old: str, old_value: T | None, new: str, new_value: T | None) -> T | None:
    """The value of a flag given under its former name ``old`` (with a note) or its name ``new``; both is an
    error naming them."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ValueError(f"{old} is the former name of {new}; give one of them")
    warnings.warn(f"{old} is now called {new}; {old} still works", Note, stacklevel=2)
    return old_value


def option_pairs(pairs: list[str], flag: str = "--option") -> dict[str, object]:
    """``key=value`` pairs (values read as TOML, bare words as strings) for a kind's options; a malformed pair
    (no ``=``, a value too long or too deeply nested) is one ``error:`` line naming ``flag`` (a ``ValueError``:
    the pairs are read in the command's body, where a usage error would print a usage box instead)."""
    try:
        return parse_assignments(pairs)
    except ValueError as exc:
        raise ValueError(f"{flag} {exc}") from None


def _known_resize_mode(value: Optional[str]) -> Optional[str]:
    # A ValueError, not typer.BadParameter: one ``error:`` line instead of a usage box, before anything loads.
    if value is not None and value not in RESIZE_MODES:
        raise ValueError(f"--resize-mode {value!r} is not a resize mode; choose one of {', '.join(RESIZE_MODES)}")
    return value


def resize_mode_option() -> Any:
    """``--resize-mode clean|pytorch-fid|torch-fidelity`` (None when not given: the extractor's default), for
    every command that extracts features: ``resize_mode: Optional[str] = resize_mode_option()``, then pass
    it to ``create_extractor(..., resize_mode=resize_mode)``."""
    return typer.Option(
        None, "--resize-mode", callback=_known_resize_mode, metavar="|".join(RESIZE_MODES),
        help=f"How inception resizes images to 299 px, as the tool whose FID numbers you want to reproduce "
             f"does: clean (clean-fid's PIL bicubic; the default), pytorch-fid (its bilinear tensor resize) or "
             f"torch-fidelity (its TensorFlow-1 bilinear resize). For inception; default "
             f"{DEFAULT_RESIZE_MODE}.")
