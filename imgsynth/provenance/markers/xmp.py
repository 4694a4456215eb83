"""The XMP packet every generated image carries: IPTC's "trained algorithmic media" plus imgsynth's own fields.

The packet follows the XMP specification (part 1, RDF/XML; part 3, embedding in PNG: an uncompressed
``iTXt`` chunk with keyword ``XML:com.adobe.xmp``) and IPTC's Photo Metadata Standard, whose
``Iptc4xmpExt:DigitalSourceType`` with the value :data:`TRAINED_ALGORITHMIC_MEDIA` is what
Content-Credentials viewers, exiftool and stock sites read as "made by a generative model".

imgsynth's fields (namespace :data:`IMGSYNTH_NS`, prefix ``imgsynth``) say which generator made the image:
``generatorKind``, ``pipeline``, ``weightsSha256``, ``seed`` (the image's own seed), ``generation``,
``label``. None depends on where the set is written, which worker computed the image or how the work was
sharded, and the packet holds no time, so a set stays byte-identical across backends and reruns. The set
id is not among them: it is a hash over the images' bytes (marker included), so no image can hold it;
``imgsynth audit --against`` finds it from the weights and seed (or the bytes, or the pixels).

Reading (:func:`parse_xmp`) is bounded: at most :data:`MAX_XMP_BYTES`, no DOCTYPE or entity (refused before
parsing, so nothing is ever expanded or fetched), element depth at most :data:`MAX_DEPTH`, checked while the
text is parsed incrementally.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Mapping
from xml.sax.saxutils import quoteattr

XMP_KEYWORD = "XML:com.adobe.xmp"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
# Other IPTC digital source types that also mean "a model made or changed this".
SYNTHETIC_SOURCE_TYPES = frozenset({
    TRAINED_ALGORITHMIC_MEDIA,
    "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia",
    "http://cv.iptc.org/newscodes/digitalsourcetype/algorithmicMedia",
    "http://cv.iptc.org/newscodes/digitalsourcetype/compositeSynthetic",
})
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
IMGSYNTH_NS = "https://github.com/imgsynth/imgsynth/ns/xmp/1.0/"
# imgsynth's fields, in the order they are written.
FIELDS = ("generatorKind", "pipeline", "weightsSha256", "seed", "generation", "label", "watermark")

MAX_XMP_BYTES = 1 << 20  # a real packet is a few kB; Adobe's own are under 64 kB
MAX_DEPTH = 32  # xmpmeta / RDF / Description / property / Bag / li ... stays under ten


class XmpError(ValueError):
    """An XMP packet that cannot be read within the bounds (malformed, too large, too deep, with a DOCTYPE)."""


def xmp_packet(fields: Mapping[str, object], *, creator_tool: str = "imgsynth") -> str:
    """The XMP packet of a generated image: the IPTC digital source type, ``xmp:CreatorTool`` and imgsynth's
    ``fields`` (names from :data:`FIELDS`; None values are left out), as attributes of one rdf:Description.

    Deterministic: the same fields give the same text (fixed order, no dates, no instance ids).
    """
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown imgsynth XMP fields {unknown}; known: {list(FIELDS)}")
    properties = [f"Iptc4xmpExt:DigitalSourceType={quoteattr(TRAINED_ALGORITHMIC_MEDIA)}",
                  f"xmp:CreatorTool={quoteattr(creator_tool)}"]
    properties += [f"imgsynth:{name}={quoteattr(str(fields[name]))}" for name in FIELDS
                   if fields.get(name) is not None]
    attributes = "\n    ".join(properties)
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
            f' <rdf:RDF xmlns:rdf="{RDF_NS}">\n'
            '  <rdf:Description rdf:about=""\n'
            f'    xmlns:Iptc4xmpExt="{IPTC_EXT_NS}"\n'
            f'    xmlns:xmp="{XMP_NS}"\n'
            f'    xmlns:imgsynth="{IMGSYNTH_NS}"\n'
            f'    {attributes}/>\n'
            ' </rdf:RDF>\n'
            '</x:xmpmeta>\n'
            '<?xpacket end="r"?>')


@dataclass(frozen=True)
class XmpFacts:
    """What a packet says: the IPTC digital source type (if any) and imgsynth's fields (if any)."""

    digital_source_type: str | None = None
    creator_tool: str | None = None
    imgsynth: Mapping[str, str] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        """The digital source type is one of IPTC's "made by an algorithm" values."""
        return self.digital_source_type in SYNTHETIC_SOURCE_TYPES


def parse_xmp(text: str | bytes, *, max_bytes: int = MAX_XMP_BYTES, max_depth: int = MAX_DEPTH) -> XmpFacts:
    """The facts of an XMP packet, read within bounds; :class:`XmpError` for anything else.

    A property may be written as an attribute of ``rdf:Description`` or as a child element (both are
    RDF/XML); ``DigitalSourceType`` may also be an ``rdf:resource`` (as IPTC's examples write it).
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if len(data) > max_bytes:
        raise XmpError(f"XMP packet of {len(data)} bytes, over the {max_bytes}-byte limit")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise XmpError("XMP packet declares a DOCTYPE or entities; refused unread")
    parser = ElementTree.XMLPullParser(events=("start", "end"))
    depth = 0
    source_type = creator = None
    ours: dict[str, str] = {}
    source_key = f"{{{IPTC_EXT_NS}}}DigitalSourceType"
    creator_key = f"{{{XMP_NS}}}CreatorTool"
    resource_key = f"{{{RDF_NS}}}resource"
    try:
        for start in range(0, len(data), 1 << 14):
            parser.feed(data[start:start + (1 << 14)])
            for event, element in parser.read_events():
                if event == "end":
                    depth -= 1
                    if element.tag == source_key and source_type is None:
                        source_type = (element.get(resource_key) or element.text or "").strip() or None
                    elif element.tag == creator_key and creator is None:
                        creator = (element.text or "").strip() or None
                    elif element.tag.startswith(f"{{{IMGSYNTH_NS}}}") and element.text:
                        ours.setdefault(element.tag.split("}", 1)[1], element.text.strip())
                    element.clear()
                    continue
                depth += 1
                if depth > max_depth:
                    raise XmpError(f"XMP packet nested deeper than {max_depth} elements")
                for key, value in element.attrib.items():
                    if key == source_key:
                        source_type = source_type or value
                    elif key == creator_key:
                        creator = creator or value
                    elif key.startswith(f"{{{IMGSYNTH_NS}}}"):
                        ours.setdefault(key.split("}", 1)[1], value)
        parser.close()
    except ElementTree.ParseError as exc:
        raise XmpError(f"malformed XMP packet ({exc})") from None
    return XmpFacts(source_type, creator, ours)


__all__ = ["FIELDS", "IMGSYNTH_NS", "MAX_XMP_BYTES", "SYNTHETIC_SOURCE_TYPES", "TRAINED_ALGORITHMIC_MEDIA",
           "XMP_KEYWORD", "XmpError", "XmpFacts", "parse_xmp", "xmp_packet"]
