"""Provenance: content hashes, software versions, licenses and the lineage graph.

The set id is a hash over the sorted (image sha256, label) pairs, so it names the content alone:
the same pixels with the same labels give the same id however and wherever they were written.
Each manifest's ``parents`` point (by id and relative path) at the sets it came from, ending in
source entries ``{"id": "source:<name>", "kind": "source", "license": ...}``; ``lineage`` walks them.

One module per concept: :mod:`~imgsynth.provenance.hashing`, :mod:`~imgsynth.provenance.software`,
:mod:`~imgsynth.provenance.licenses`, :mod:`~imgsynth.provenance.lineage`. The Croissant description
of a set, which reads all of them, is an export format: :mod:`imgsynth.exports.croissant`.
"""

from __future__ import annotations

from imgsynth.provenance.hashing import HASH_CHUNK, content_id, sha256_bytes, sha256_file
from imgsynth.provenance.licenses import (FROM_SCRATCH, LICENSE_FAMILIES, LICENSES, PERMISSIVE, RESTRICTED,
                                          UNKNOWN, classify_license, license_record, model_license,
                                          read_card_license)
from imgsynth.provenance.lineage import Lineage, LineageNode, lineage
from imgsynth.provenance.software import software_versions

__all__ = [
    "FROM_SCRATCH", "HASH_CHUNK", "LICENSES", "LICENSE_FAMILIES", "PERMISSIVE", "RESTRICTED", "UNKNOWN",
    "Lineage", "LineageNode", "classify_license", "content_id", "license_record", "lineage", "model_license",
    "read_card_license", "sha256_bytes", "sha256_file", "software_versions",
]
