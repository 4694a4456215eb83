"""Signed C2PA content credentials for generated images (optional: ``pip install 'imgsynth[c2pa]'``).

:func:`sign_png` embeds a C2PA manifest, signed with the user's certificate chain and private key, in a PNG
(a ``caBX`` chunk, written by c2pa-python, the Content Authenticity Initiative's own library): a
``c2pa.created`` action with the IPTC digital source type "trained algorithmic media" and imgsynth as the
software agent, and an ``org.imgsynth.image`` assertion with the image's generator fields, the ids of the
set's parents (the training set) and, when one was embedded, the invisible watermark's method and message
(C2PA's own ``c2pa.watermarked`` action would need a registered soft-binding algorithm, which
invisible-watermark's DWT-DCT is not). Signing is
offline: no timestamp authority is contacted unless one is named (``tsa_url``), and no thumbnail is
embedded. ECDSA signatures and C2PA instance ids are random, so signed images differ from run to run
(their pixels do not).

:func:`read_c2pa` reads and validates a manifest offline (no remote manifest or OCSP fetch) and says apart:
``valid`` (signature and content hashes check; whether the signer is on a trust list is another question,
see ``trusted``), ``invalid`` (the image or the manifest was changed after signing, or the signature does
not check) and ``unverifiable`` (the manifest is remote, or cannot be checked without a network).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from imgsynth.provenance.markers.xmp import TRAINED_ALGORITHMIC_MEDIA

# What a PEM file of a certificate chain or a key may weigh: a long chain is a few kB.
MAX_PEM_BYTES = 1 << 20
OFFLINE_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
                    "builder": {"thumbnail": {"enabled": False}}}
VALID, INVALID, UNVERIFIABLE = "valid", "invalid", "unverifiable"


class C2paUnavailable(RuntimeError):
    """c2pa-python is not installed (``pip install 'imgsynth[c2pa]'``)."""


def _c2pa() -> Any:
    try:
        import c2pa
    except ImportError:
        raise C2paUnavailable("C2PA signing needs c2pa-python: pip install 'imgsynth[c2pa]'") from None
    return c2pa


@dataclass(frozen=True)
class C2paCredentials:
    """A signing certificate chain (PEM, the signer's certificate first) and its private key (PEM, ES256:
    an ECDSA P-256 key), and optionally a timestamp authority's URL (None: sign offline)."""

    cert: str
    key: str
    tsa_url: str | None = None

    def pems(self) -> tuple[str, str]:
        """The chain's and the key's PEM text, read with a size bound; a ``ValueError`` naming a bad file."""
        texts = []
        for path, what in ((self.cert, "certificate chain"), (self.key, "private key")):
            file = Path(path)
            if not file.is_file():
                raise ValueError(f"{file}: no such {what} file (--c2pa-cert/--c2pa-key)")
            if file.stat().st_size > MAX_PEM_BYTES:
                raise ValueError(f"{file}: over {MAX_PEM_BYTES} bytes; not a PEM {what}")
            text = file.read_bytes().decode("ascii", errors="replace")
            if "-----BEGIN" not in text:
                raise ValueError(f"{file}: not a PEM {what} (no '-----BEGIN' line)")
            texts.append(text)
        return texts[0], texts[1]

    def identity(self) -> dict[str, str | None]:
        """What a set records about its signer: the chain's sha256 (never the key) and the TSA."""
        chain, _ = self.pems()
        return {"cert_sha256": hashlib.sha256(chain.encode()).hexdigest(), "tsa_url": self.tsa_url}

    def check(self) -> None:
        """Refuse before any work: files unreadable, c2pa-python missing, or a chain and key it cannot sign
        with (signs a 1-pixel PNG once)."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("L", (1, 1)).save(buffer, format="PNG")
        try:
            sign_png(buffer.getvalue(), self, {"generatorKind": "check"}, title="check.png")
        except C2paUnavailable:
            raise
        except Exception as exc:
            raise ValueError(f"{self.cert}, {self.key}: c2pa cannot sign with this certificate chain and key "
                             f"({str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}); C2PA "
                             "needs an ES256 (P-256) end-entity certificate that is not a CA, with "
                             "digitalSignature key usage and an extended key usage such as emailProtection, "
                             "followed by its issuing CA") from None


def manifest_definition(fields: Mapping[str, Any], *, title: str, parents: Sequence[str] = (),
                        watermark: Mapping[str, Any] | None = None, version: str = "") -> dict[str, Any]:
    """The C2PA manifest definition of one generated image (what c2pa-python's Builder takes)."""
    agent = {"name": "imgsynth", **({"version": version} if version else {})}
    actions = [{"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                                      "softwareAgent": agent}]
    image = {k: v for k, v in fields.items() if v is not None}
    return {"claim_generator_info": [agent], "title": title, "format": "image/png",
            "assertions": [{"label": "c2pa.actions", "data": {"actions": actions}},
                           {"label": "org.imgsynth.image",
                            "data": {**image, "parent_set_ids": list(parents),
                                     **({"watermark": dict(watermark)} if watermark else {})}}]}


def sign_png(png: bytes, credentials: C2paCredentials, fields: Mapping[str, Any], *, title: str,
             parents: Sequence[str] = (), watermark: Mapping[str, Any] | None = None) -> bytes:
    """``png`` with a signed C2PA manifest embedded (see the module docstring)."""
    c2pa = _c2pa()
    from imgsynth.provenance.software import software_versions

    chain, key = credentials.pems()
    definition = manifest_definition(fields, title=title, parents=parents, watermark=watermark,
                                     version=str(software_versions().get("imgsynth", "")))
    context = c2pa.Context.from_dict(OFFLINE_SETTINGS)
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain.encode(), key.encode(),
                                                        credentials.tsa_url))
    with c2pa.Builder(definition, context=context) as builder:
        out = io.BytesIO()
        builder.sign(signer, "image/png", io.BytesIO(png), out)
    return out.getvalue()


@dataclass(frozen=True)
class C2paFacts:
    """What an image's C2PA manifest store says, validated offline."""

    state: str  # valid | invalid | unverifiable
    detail: str = ""
    trusted: bool = False
    digital_source_type: str | None = None
    software_agent: str | None = None
    imgsynth: Mapping[str, Any] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        from imgsynth.provenance.markers.xmp import SYNTHETIC_SOURCE_TYPES

        return self.digital_source_type in SYNTHETIC_SOURCE_TYPES


def available() -> bool:
    """Whether c2pa-python is installed (``pip install 'imgsynth[c2pa]'``); without it no manifest is read."""
    import importlib.util

    return importlib.util.find_spec("c2pa") is not None


def read_c2pa(data: bytes, mime: str = "image/png") -> C2paFacts | None:
    """The C2PA manifest of an image's bytes, validated offline; None when there is none (or c2pa-python is
    missing: the audit then says C2PA was not looked for)."""
    try:
        c2pa = _c2pa()
    except C2paUnavailable:
        return None
    try:
        context = c2pa.Context.from_dict(OFFLINE_SETTINGS)
        with c2pa.Reader(mime, io.BytesIO(data), context=context) as reader:
            if not reader.is_embedded():
                return C2paFacts(UNVERIFIABLE, f"remote manifest at {reader.get_remote_url()} (not fetched offline)")
            state = reader.get_validation_state()
            store = json.loads(reader.json())
    except Exception as exc:  # noqa: BLE001 - c2pa raises many types; the audit reports, never crashes
        name = type(exc).__name__
        message = str(exc).splitlines()[0][:200] if str(exc) else name
        if "ManifestNotFound" in name or "ManifestNotFound" in message or "no JUMBF" in message:
            return None
        if "RemoteManifest" in name or "remote" in message.lower():
            return C2paFacts(UNVERIFIABLE, message)
        return C2paFacts(INVALID, f"unreadable manifest ({message})")
    active = (store.get("manifests") or {}).get(store.get("active_manifest") or "", {})
    source_type = agent = None
    ours: dict[str, Any] = {}
    for assertion in active.get("assertions") or []:
        label, content = assertion.get("label", ""), assertion.get("data") or {}
        if label.startswith("c2pa.actions"):
            for action in content.get("actions") or []:
                if action.get("action") == "c2pa.created":
                    source_type = action.get("digitalSourceType")
                    software = action.get("softwareAgent")
                    agent = software.get("name") if isinstance(software, dict) else software
        elif label == "org.imgsynth.image" and isinstance(content, dict):
            ours = content
    failures = [entry.get("code", "") for entry in ((store.get("validation_results") or {}).get("activeManifest")
                                                     or {}).get("failure", [])]
    if state == "Invalid" or (state is None and failures):
        return C2paFacts(INVALID, ", ".join(failures) or "validation failed", False, source_type, agent, ours)
    if state in ("Valid", "Trusted"):
        return C2paFacts(VALID, "" if state == "Trusted" else "signer not on a trust list", state == "Trusted",
                         source_type, agent, ours)
    return C2paFacts(UNVERIFIABLE, f"validation state {state!r}", False, source_type, agent, ours)


__all__ = ["C2paCredentials", "C2paFacts", "C2paUnavailable", "INVALID", "UNVERIFIABLE", "VALID", "available",
           "manifest_definition", "read_c2pa", "sign_png"]
