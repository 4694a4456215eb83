"""Issue 25, item 1: every generated PNG says so inside the file (IPTC digital source type and imgsynth's fields
in an XMP iTXt chunk), pixels unchanged; the marker travels with a copied-out image and curated subsets;
imported real images are left unmarked."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from imgsynth.audit import audit
from imgsynth.imageset import ImageSet
from imgsynth.pipelines.base import build_kind
from imgsynth.provenance.markers.xmp import XmpError, parse_xmp, xmp_packet

IPTC_TAM = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, read by the PNG specification (not by the code under test), CRCs checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, position = [], 8
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind, body = data[position + 4:position + 8], data[position + 8:position + 8 + length]
        assert int.from_bytes(data[position + 8 + length:position + 12 + length], "big") == zlib.crc32(kind + body)
        found.append((kind, body))
        position += 12 + length
    return found


@pytest.fixture(scope="module")
def sampled(small_digits, tmp_path_factory) -> tuple[ImageSet, object]:
    root = tmp_path_factory.mktemp("xmp")
    kind = build_kind("gaussian", {"shard_size": 8})
    model = kind.fit(small_digits, root / "model", seed=0, progress=False)
    job = kind.job(model, per_class=2, seed=3, generation=2)
    return kind.sample(model, root / "set", per_class=2, seed=3, generation=2, progress=False), job


def test_the_marker_is_an_uncompressed_xmp_itxt_before_the_pixels(sampled):
    image_set, _ = sampled
    for index, record in enumerate(image_set.records):
        chunks = _chunks(image_set.read_bytes(index))
        kinds = [kind for kind, _ in chunks]
        itxt = [body for kind, body in chunks if kind == b"iTXt"]
        assert len(itxt) == 1 and kinds.index(b"iTXt") < kinds.index(b"IDAT")
        keyword, rest = itxt[0].split(b"\0", 1)
        assert keyword == b"XML:com.adobe.xmp" and rest[:2] == b"\0\0"  # compression flag and method: none
        packet = rest[2:].split(b"\0", 2)[2].decode("utf-8")  # after the (empty) language tag and translated key
        assert IPTC_TAM in packet and f'imgsynth:seed="{record.seed}"' in packet
        assert 'imgsynth:generatorKind="gaussian"' in packet and 'imgsynth:generation="2"' in packet
        assert image_set.manifest["generator"]["weights_sha256"] in packet


def test_pixels_are_those_the_generator_made(sampled):
    """The marker changes no pixel: the decoded images are the job's own images, value for value (so every
    metric computed from them is unchanged)."""
    image_set, job = sampled
    job.spec(image_set.root)
    job.load()
    made = job.generate(job.work())
    by_name = {Path(r.file_name).stem: i for i, r in enumerate(image_set.records)}
    for sample in made:
        stored = np.asarray(image_set.load_image(by_name[sample.image_id]))
        assert np.array_equal(stored, np.asarray(sample.image))


def test_a_copy_renamed_and_resaved_losslessly_is_still_identified(sampled, tmp_path, run_cli):
    image_set, _ = sampled
    folder = tmp_path / "scraped" / "photos"
    folder.mkdir(parents=True)
    original = image_set.read_bytes(5)
    with Image.open(io.BytesIO(original)) as image:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", image.info["xmp"])  # a tool that keeps metadata, another encoder
        image.save(folder / "holiday.png", compress_level=9, pnginfo=info)
    assert (folder / "holiday.png").read_bytes() != original
    (folder / "real.png").write_bytes(_plain_png())
    alone = audit(tmp_path / "scraped")
    rows = {r.file_name: r for r in alone.rows}
    copy = rows["photos/holiday.png"]
    assert copy.synthetic and copy.iptc_source_type == "trainedAlgorithmicMedia" and copy.class_name == "photos"
    assert copy.xmp_generator == "gaussian" and copy.xmp_seed == str(image_set.records[5].seed)
    assert copy.xmp_weights_sha256 == image_set.manifest["generator"]["weights_sha256"]
    assert not rows["photos/real.png"].synthetic
    known = {r.file_name: r for r in audit(tmp_path / "scraped", [image_set.root]).rows}
    assert known["photos/holiday.png"].marker_set_id == image_set.id
    assert known["photos/holiday.png"].known_set_id == image_set.id and known["photos/holiday.png"].match == "exact"
    code, out, err = run_cli("audit", tmp_path / "scraped", "--against", image_set.root)
    assert code == 0, err
    assert "IPTC/XMP 1" in out and "50.0%" in out


def _plain_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_subsets_keep_the_bytes_and_real_imports_are_left_unmarked(sampled, small_digits, tmp_path):
    image_set, _ = sampled
    curated = image_set.subset([0, 3], tmp_path / "curated", kind="curated")
    assert [curated.read_bytes(i) for i in range(2)] == [image_set.read_bytes(0), image_set.read_bytes(3)]
    assert all(kind != b"iTXt" for kind, _ in _chunks(small_digits.read_bytes(0)))
    assert "markers" not in small_digits.manifest and "markers" in image_set.manifest


def test_the_packet_reader_is_bounded():
    facts = parse_xmp(xmp_packet({"generatorKind": "k", "seed": 1}))
    assert facts.synthetic and facts.imgsynth == {"generatorKind": "k", "seed": "1"}
    with pytest.raises(XmpError, match="DOCTYPE"):
        parse_xmp('<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    with pytest.raises(XmpError, match="deeper"):
        parse_xmp("<a>" * 1000 + "</a>" * 1000)
    with pytest.raises(XmpError, match="limit"):
        parse_xmp("<a>" + "x" * (2 << 20) + "</a>")
    with pytest.raises(XmpError, match="malformed"):
        parse_xmp("<x:xmpmeta><unclosed></x:xmpmeta>")
