"""The export seam: a format registered from this file alone works through the real `imgsynth data export`."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from imgsynth.atomic_files import atomic_path
from imgsynth.errors import ImageSetError
from imgsynth.exports import EXPORT_FORMATS, ExportFormat, export
from imgsynth.imageset import ImageSet
from imgsynth.registry import RegistryError

LABELS_CSV = "labels.csv"


def write_labels_csv(image_set: ImageSet, out: Path) -> list[Path]:
    """A throwaway format: one row per image with its label and the sha256 of the bytes it was read as."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LABELS_CSV
    if path.exists():
        raise ImageSetError(f"{path}: already exists; remove it or choose another folder for the export")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        rows = csv.writer(handle)
        rows.writerow(["file_name", "label", "sha256"])
        for index, record in enumerate(image_set.records):
            rows.writerow([record.file_name, record.label, hashlib.sha256(image_set.read_bytes(index)).hexdigest()])
    return [path]


@pytest.fixture
def labels_csv():
    with EXPORT_FORMATS.registered("labels-csv", ExportFormat(write=write_labels_csv)) as entry:
        yield entry


def test_a_format_registered_from_a_test_exports_through_the_cli(run_cli, digits_sets, labels_csv, tmp_path):
    _, test = digits_sets
    out = tmp_path / "csv-export"
    code, printed, err = run_cli("data", "export", test.root, out, "--format", "labels-csv")
    assert code == 0, err
    assert printed.split() == [str(out / LABELS_CSV)]
    with open(out / LABELS_CSV, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["file_name"], r["label"], r["sha256"]) for r in rows] == \
        [(r.file_name, r.label, r.sha256) for r in test.records]
    assert sorted(p.name for p in out.iterdir()) == [LABELS_CSV]  # no temporary file left beside it


def test_a_format_without_a_default_needs_out_and_one_with_a_default_uses_it(run_cli, digits_sets, labels_csv,
                                                                              tmp_path):
    _, test = digits_sets
    code, _, err = run_cli("data", "export", test.root, "--format", "labels-csv")
    assert code == 2 and "error: export --format labels-csv needs an OUT folder" in err

    copy = ImageSet.open(test.root)
    beside = tmp_path / "beside"
    with EXPORT_FORMATS.registered("labels-beside", ExportFormat(write=write_labels_csv,
                                                                 default_out=lambda s: beside)):
        assert export(copy, "labels-beside") == [beside / LABELS_CSV]
    assert "labels-beside" not in EXPORT_FORMATS  # a scoped entry is gone afterwards


def test_an_unknown_format_names_every_registered_one(run_cli, digits_sets, labels_csv, tmp_path):
    _, test = digits_sets
    code, _, err = run_cli("data", "export", test.root, tmp_path / "x", "--format", "zip")
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("error: unknown export format 'zip'; registered: ")
    assert line.removeprefix("error: unknown export format 'zip'; registered: ").split(", ") == \
        ["parquet", "webdataset", "croissant", "labels-csv"]
    assert not (tmp_path / "x").exists()


def test_a_taken_name_is_refused_naming_both_writers(labels_csv):
    with pytest.raises(RegistryError, match=r"export format 'parquet' is already registered as "
                                            r"imgsynth\.exports\.parquet:PARQUET; refusing to replace it"):
        EXPORT_FORMATS.register("parquet", ExportFormat(write=write_labels_csv))
    with pytest.raises(RegistryError, match="export format 'labels-csv' is already registered"):
        EXPORT_FORMATS.register("labels-csv", ExportFormat(write=write_labels_csv, default_out=lambda s: s.root))
    EXPORT_FORMATS.register("labels-csv", ExportFormat(write=write_labels_csv))  # the same entry again is no conflict
    assert EXPORT_FORMATS.target("parquet") == "imgsynth.exports.parquet:PARQUET"
    assert EXPORT_FORMATS["labels-csv"] == labels_csv


def test_the_help_lists_the_built_in_formats(run_cli):
    code, printed, _ = run_cli("data", "export", "--help")
    assert code == 0
    for name in ("parquet", "webdataset", "croissant"):
        assert name in printed
