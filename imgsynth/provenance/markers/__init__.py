"""Provenance that travels inside each image file: what imgsynth writes into generated PNGs, and reads back.

One module per marker: :mod:`~imgsynth.provenance.markers.xmp` (the IPTC digital source type and imgsynth's
fields, in every generated PNG), :mod:`~imgsynth.provenance.markers.c2pa_signing` (signed C2PA content
credentials, on request), :mod:`~imgsynth.provenance.markers.watermark` (an invisible DWT-DCT watermark, on
request) and :mod:`~imgsynth.provenance.markers.reading` (every marker of any image file, bounded). The one
PNG writer, :func:`imgsynth.imageset.png.encode_generated`, applies them in order: watermark (pixels), PNG with
the XMP packet, then the C2PA signature over those bytes. Heavy libraries (c2pa, invisible-watermark) load
only when a marker that needs them is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from imgsynth.provenance.markers.c2pa_signing import C2paCredentials


@dataclass(frozen=True)
class Marking:
    """The opt-in marks of a generated set, beyond the XMP packet every generated image carries.

    ``watermark``: embed imgsynth's invisible watermark where the image can carry it (changes pixels).
    ``c2pa``: sign every image's C2PA manifest with these credentials. Plain data, so a job carries it to
    every worker, and every worker marks the same way.
    """

    watermark: bool = False
    c2pa: C2paCredentials | None = None

    @property
    def any(self) -> bool:
        return self.watermark or self.c2pa is not None

    def identity(self) -> dict[str, Any]:
        """What an unfinished write records, so a write is never resumed with other marks."""
        return {"watermark": self.watermark, "c2pa": None if self.c2pa is None else self.c2pa.identity()}

    @classmethod
    def of(cls, *, watermark: bool = False, c2pa_cert: str | None = None, c2pa_key: str | None = None,
           tsa_url: str | None = None) -> Marking:
        """From the command line's or a recipe's ``[provenance]`` values; both or neither of cert and key."""
        if (c2pa_cert is None) != (c2pa_key is None):
            raise ValueError("C2PA signing needs both a certificate chain and a private key "
                             "(--c2pa-cert and --c2pa-key; [provenance] c2pa_cert and c2pa_key)")
        if tsa_url is not None and c2pa_cert is None:
            raise ValueError("a timestamp authority (tsa_url) applies only to C2PA signing; give --c2pa-cert/--c2pa-key")
        credentials = None if c2pa_cert is None else C2paCredentials(str(c2pa_cert), str(c2pa_key), tsa_url)
        return cls(watermark=watermark, c2pa=credentials)


def image_fields(generator: Mapping[str, Any], *, seed: int | None, label: str,
                 extra: Mapping[str, Any]) -> dict[str, Any]:
    """imgsynth's XMP fields of one generated image, from its set's generator record and its own row."""
    from imgsynth.generator_record import generator_record

    record = generator_record(dict(generator))
    generation = extra.get("generation")
    return {"generatorKind": record.get("kind"), "pipeline": record.get("pipeline"),
            "weightsSha256": record.get("weights_sha256"), "seed": seed,
            "generation": generation, "label": label}


__all__ = ["C2paCredentials", "Marking", "image_fields"]
