"""Issue 25, item 4: `imgsynth audit` on any folder: per-class contamination from the markers alone."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from imgsynth.audit import audit
from imgsynth.imageset import encode_png
from imgsynth.provenance.markers.xmp import xmp_packet


def _folder(root: Path, marked: dict[str, int], per_class: int = 100) -> Path:
    rng = np.random.default_rng(0)
    from PIL import Image

    for label, count in marked.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8))
            packet = xmp_packet({"generatorKind": "gaussian", "seed": i}) if i < count else None
            (root / label / f"{i:03d}.png").write_bytes(encode_png(image, packet))
    return root


def test_a_folder_with_0_10_50_marked_per_class_reads_0_10_50_percent(tmp_path, run_cli):
    root = _folder(tmp_path / "scraped", {"clean": 0, "some": 10, "half": 50})
    report = audit(root, watermarks=False)
    table = {row["class"]: row for row in report.per_class()}
    assert {name: table[name]["share"] for name in ("clean", "some", "half")} == {"clean": 0.0, "some": 0.1,
                                                                                  "half": 0.5}
    assert table["all"]["images"] == 300 and table["all"]["iptc"] == 60 and table["all"]["c2pa"] == 0

    code, out, err = run_cli("audit", root, "--out", tmp_path / "audit.csv", "--strict")
    assert code == 1 and "synthetic image(s) found" in err and "Traceback" not in err
    assert "10.0%" in out and "50.0%" in out
    with open(tmp_path / "audit.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 300
    assert {"file_name", "class", "c2pa", "iptc_source_type", "watermark", "synthetic"} <= set(rows[0])
    marked = {(r["class"], r["file_name"]) for r in rows if r["synthetic"] == "True"}
    assert marked == {(c, f"{c}/{i:03d}.png") for c, n in (("some", 10), ("half", 50)) for i in range(n)}


def test_strict_passes_a_clean_folder(tmp_path, run_cli):
    root = _folder(tmp_path / "clean", {"a": 0}, per_class=5)
    code, out, err = run_cli("audit", root, "--strict")
    assert code == 0, err
    assert "synthetic share: 0.0%" in out


def test_importing_a_folder_counts_its_marked_images(tmp_path, run_cli):
    root = _folder(tmp_path / "source", {"a": 3, "b": 0}, per_class=6)
    code, _, err = run_cli("data", "import", f"folder:{root}", tmp_path / "imported", "--size", "8")
    assert code == 0, err
    assert "3 of 12 images carry synthetic-content markers" in err and "imported as real data" in err
    from imgsynth.imageset import ImageSet

    for part in ("train", "test"):
        manifest = ImageSet.open(tmp_path / "imported" / part).manifest
        assert manifest["source_markers"] == {"images": 12, "marked": 3, "c2pa": 0, "iptc": 3, "watermark": 0}


def test_a_marker_without_its_reader_installed_is_said_not_looked_for(tmp_path, run_cli, monkeypatch):
    """Without c2pa-python or invisible-watermark the audit cannot see those markers; an empty column must not
    read as "none found", so the report names what was not looked for and the extra that adds it."""
    from imgsynth.provenance.markers import c2pa_signing, watermark

    root = _folder(tmp_path / "scraped", {"a": 2}, per_class=3)
    assert audit(root).not_checked == []  # the test extra installs both readers
    monkeypatch.setattr(c2pa_signing, "available", lambda: False)
    monkeypatch.setattr(watermark, "available", lambda: False)
    report = audit(root)
    assert [line.split(":")[0] for line in report.not_checked] == ["C2PA manifests", "invisible watermarks"]
    assert audit(root, watermarks=False).not_checked == [report.not_checked[0]]  # watermarks not asked for
    code, out, err = run_cli("audit", root)
    assert code == 0, err
    assert "not looked for" in out and "pip install 'imgsynth[c2pa]'" in out
    assert "pip install 'imgsynth[watermark]'" in out
