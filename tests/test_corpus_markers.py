"""Corpus (issue 25): hostile metadata in files `imgsynth audit` reads. Each file is one line of the audit's
table (a row of its CSV with the problem, or the marker's verdict), never a traceback, within the corpus's time
and memory limits (``cli_checks.run_limited``: 2 GiB of private memory, 30 s)."""

from __future__ import annotations

import csv
import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_checks import TIME_LIMIT, run_limited, tree_digest
from PIL import Image

from imgsynth.imageset import encode_png
from imgsynth.provenance.markers.xmp import xmp_packet


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _with_chunks(extra: list[bytes]) -> bytes:
    """A valid 8x8 PNG with ``extra`` chunks inserted after IHDR."""
    plain = encode_png(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)))
    ihdr_end = 8 + 12 + 13
    return plain[:ihdr_end] + b"".join(extra) + plain[ihdr_end:]


def _xmp_chunk(text: bytes, compressed: bool = False) -> bytes:
    body = zlib.compress(text) if compressed else text
    return _chunk(b"iTXt", b"XML:com.adobe.xmp\0" + (b"\1\0" if compressed else b"\0\0") + b"\0\0" + body)


def _broken_signature() -> bytes:
    from c2pa_test_chain import make_chain
    import tempfile

    from imgsynth.provenance.markers.c2pa_signing import C2paCredentials, sign_png

    with tempfile.TemporaryDirectory() as folder:
        chain, key = make_chain(Path(folder))
        data = bytearray(sign_png(encode_png(Image.new("L", (8, 8), 9), xmp_packet({"seed": 1})),
                                  C2paCredentials(str(chain), str(key)), {"seed": 1}, title="x.png"))
    start = data.index(b"caBX") + 4
    end = start + int.from_bytes(data[start - 8:start - 4], "big")
    data[end - 40] ^= 0xFF  # a byte of the COSE signature, at the end of the manifest store
    data[end:end + 4] = zlib.crc32(bytes(data[start - 4:end])).to_bytes(4, "big")  # a well-formed chunk still
    return bytes(data)


CASES = {
    "malformed-xmp": lambda: _with_chunks([_xmp_chunk(b"<x:xmpmeta><rdf:RDF><unclosed></x:xmpmeta>")]),
    "entity-xmp": lambda: _with_chunks([_xmp_chunk(b'<!DOCTYPE x [<!ENTITY a "' + b"a" * 1000 + b'">]><x>&a;&a;</x>')]),
    "huge-xmp": lambda: _with_chunks([_xmp_chunk(b"<x>" + b"a" * (8 << 20) + b"</x>")]),
    "compressed-bomb-xmp": lambda: _with_chunks([_xmp_chunk(b"<x>" + b"a" * (16 << 20) + b"</x>", compressed=True)]),
    "deep-xmp": lambda: _with_chunks([_xmp_chunk(b"<a>" * 50_000 + b"</a>" * 50_000)]),
    "thousands-of-text-chunks": lambda: _with_chunks([_chunk(b"tEXt", b"k%d\0value" % i) for i in range(5_000)]),
    "broken-c2pa-signature": _broken_signature,
    "not-an-image": lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
}
EXPECTED = {"malformed-xmp": "malformed XMP", "entity-xmp": "DOCTYPE", "huge-xmp": "",
            "compressed-bomb-xmp": "", "deep-xmp": "deeper", "thousands-of-text-chunks": None,
            "broken-c2pa-signature": "invalid", "not-an-image": "unreadable image"}


@pytest.fixture(scope="module")
def started() -> None:
    """Start the harness's fork server (torch, the CLI) before any case is timed: its start is not a case's cost."""
    run_limited("--help")


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_metadata_is_one_line_of_the_audit(name, tmp_path, started):
    folder = tmp_path / "folder" / "cls"
    folder.mkdir(parents=True)
    (folder / f"{name}.png").write_bytes(CASES[name]())
    (folder / "fine.png").write_bytes(encode_png(Image.new("L", (8, 8), 3)))
    before = tree_digest(tmp_path / "folder")
    ran = run_limited("audit", tmp_path / "folder", "--out", tmp_path / "audit.csv", timeout=60)
    assert ran.code == 0, ran.err
    assert "Traceback" not in ran.err + ran.out and ran.seconds < TIME_LIMIT
    assert tree_digest(tmp_path / "folder") == before
    with open(tmp_path / "audit.csv", newline="", encoding="utf-8") as handle:
        rows = {Path(r["file_name"]).name: r for r in csv.DictReader(handle)}
    assert set(rows) == {f"{name}.png", "fine.png"}
    row = rows[f"{name}.png"]
    if name == "broken-c2pa-signature":
        assert row["c2pa"] == "invalid" and row["synthetic"] == "True"
    elif EXPECTED[name] is None:
        assert row["problem"] == "" and row["synthetic"] == "False"
    else:
        assert row["problem"] and EXPECTED[name] in row["problem"], row
        assert f"{name}.png: " in ran.out  # the table's line for it
    assert rows["fine.png"]["problem"] == ""


@pytest.mark.parametrize("case", ["not-pem", "wrong-key"])
def test_bad_signing_credentials_are_refused_before_any_work(case, tmp_path, started):
    from c2pa_test_chain import make_chain
    from cli_checks import assert_refused_within_limits, leftovers

    from imgsynth.pipelines.base import build_kind
    from imgsynth.sources import import_source

    train, _ = import_source("gaussian:per_class=10", tmp_path / "real", size=4, mode="L")
    model = build_kind("gaussian").fit(train, tmp_path / "model", seed=0, progress=False)
    chain, key = make_chain(tmp_path / "credentials")
    if case == "not-pem":
        chain.write_text("not a certificate\n", encoding="utf-8")
        needle = "not a PEM certificate chain"
    else:
        _, key = make_chain(tmp_path / "other")  # a key that did not sign this chain's certificate
        needle = "c2pa cannot sign with this certificate chain and key"
    before = tree_digest(tmp_path / "model")
    ran = run_limited("generate", model, tmp_path / "out", "--per-class", "2", "--c2pa-cert", chain,
                      "--c2pa-key", key)
    assert_refused_within_limits(ran, needle, str(chain))
    assert tree_digest(tmp_path / "model") == before and not leftovers(tmp_path)
    assert not (tmp_path / "out").exists()
