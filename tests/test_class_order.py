"""One class order for every reader: the manifest, ImageSet, ImageFolder, Hugging Face, parquet, WebDataset.

Each reader's label for each image is compared, image by image (matched by content hash), with the
index the manifest's ``classes`` list gives the metadata row's class name, read from the files
directly. Classes are given out of sorted order throughout, so a reader that numbered them as
given, or as a source listed them, would disagree.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsynth.exports import export_parquet, export_webdataset, imagefolder_features
from imgsynth.imageset import ImageSet, ImageSetWriter, Sample, concatenate, verify

CLASSES = ["kitchen", "bedroom", "bathroom"]  # deliberately not sorted


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rgb_noise(rng: np.random.Generator, size: int = 8) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def written_set(root: Path, per_class: int = 3) -> ImageSet:
    """A mixed set: real rows carry no generator columns, generated rows a typed set of them."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(per_class):
        for label in CLASSES:
            extra = {} if i == 0 else {"generation": i, "guidance_scale": 3.5, "steps": 4, "prompt": f"a {label}",
                                       "caption_fields": {"room": label, "style": "photo"}}
            samples.append(Sample(rgb_noise(rng), label, f"a {label}", 10 * i + len(label), f"{label}-{i}", extra))
    writer = ImageSetWriter(root, CLASSES, kind="mixed")
    writer.write_all(samples, shard_size=4)
    return writer.finalize()


def make_old_style(image_set: ImageSet, order: list[str]) -> ImageSet:
    """Rewrite a set's manifest as sets written before classes were sorted: classes (and counts) in
    ``order``, no display order, no dataset card. The id covers hashes and class names only, so it holds."""
    path = image_set.root / "imageset.json"
    manifest = json.loads(path.read_text())
    manifest.pop("display_order", None)
    manifest["classes"] = list(order)
    manifest["counts"] = {c: manifest["counts"][c] for c in order}
    path.write_text(json.dumps(manifest, indent=2))
    (image_set.root / "README.md").unlink()
    return ImageSet.open(image_set.root)


def manifest_indices(root: Path) -> dict[str, int]:
    """sha256 → label index, from imageset.json and metadata.jsonl as a reader of the files sees them."""
    classes = json.loads((root / "imageset.json").read_text())["classes"]
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    indices = {r["sha256"]: classes.index(r["label"]) for r in rows}
    assert len({(r["sha256"], r["label"]) for r in rows}) == len(indices), "an image listed under two classes"
    return indices


# --------------------------------------------------------------------------------------------- readers

def imagefolder_labels(root: Path) -> dict[str, int]:
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root / "images"))
    return {sha(Path(path).read_bytes()): target for path, target in folder.samples}


def imageset_labels(root: Path) -> dict[str, int]:
    image_set = ImageSet.open(root)
    return {sha(image_set.read_bytes(i)): image_set[i][1] for i in range(len(image_set))}


def hf_labels(loaded, classes: list[str]) -> dict[str, int]:
    import datasets

    assert isinstance(loaded.features["label"], datasets.ClassLabel), loaded.features["label"]
    assert loaded.features["label"].names == classes
    raw = loaded.cast_column("image", datasets.Image(decode=False))
    return {sha(Path(row["image"]["path"]).read_bytes()): row["label"] for row in raw}


def hf_card_labels(root: Path, cache: Path) -> dict[str, int]:
    """``datasets.load_dataset(SET)``: the local-folder form, which reads the set's dataset card."""
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(root), split="train", cache_dir=str(cache))
    return hf_labels(loaded, ImageSet.open(root).classes)


def hf_imagefolder_labels(root: Path, cache: Path) -> dict[str, int]:
    """``load_dataset("imagefolder", data_dir=SET)``: the packaged form reads no card; it takes features=."""
    datasets = pytest.importorskip("datasets")
    image_set = ImageSet.open(root)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(root), split="train", cache_dir=str(cache),
                                   features=imagefolder_features(image_set))
    return hf_labels(loaded, image_set.classes)


def parquet_labels(root: Path, out: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    export_parquet(ImageSet.open(root), out)
    table = pq.read_table(out)
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["label"] == {"names": ImageSet.open(root).classes, "_type": "ClassLabel"}
    return {sha(row["image"]["bytes"]): row["label"] for row in table.to_pylist()}


def webdataset_labels(root: Path, out: Path) -> dict[str, int]:
    shards = export_webdataset(ImageSet.open(root), out, samples_per_shard=4)
    labels: dict[str, int] = {}
    try:
        import webdataset
    except ImportError:  # not a dependency: read the tars as WebDataset groups them, by key
        for shard in shards:
            members: dict[str, dict[str, bytes]] = {}
            with tarfile.open(shard) as tar:
                for member in tar:
                    key, _, suffix = member.name.partition(".")
                    members.setdefault(key, {})[suffix] = tar.extractfile(member).read()
            labels.update({sha(m["png"]): int(m["cls"]) for m in members.values()})
    else:
        for sample in webdataset.WebDataset([str(s) for s in shards], shardshuffle=False):
            labels[sha(sample["png"])] = int(sample["cls"])
    assert json.loads((out / "classes.json").read_text()) == ImageSet.open(root).classes
    return labels


# --------------------------------------------------------------------------------------------- sets

@pytest.fixture(params=["written", "imported-folder", "imported-hf"])
def unsorted_set(request, tmp_path, run_cli) -> ImageSet:
    """A set whose classes reached its writer out of sorted order, three ways."""
    if request.param == "written":
        return written_set(tmp_path / "set")
    if request.param == "imported-folder":
        # Code-point order puts capitals first ("Kitchen" < "bathroom"), as Python's sorted and ImageFolder do.
        rng = np.random.default_rng(1)
        for label in ("kitchen", "Kitchen", "bedroom", "bathroom"):
            (tmp_path / "photos" / label).mkdir(parents=True)
            for i in range(3):
                rgb_noise(rng, 10).save(tmp_path / "photos" / label / f"{i}.png")
        code, _, err = run_cli("data", "import", f"folder:{tmp_path / 'photos'}", tmp_path / "imported",
                               "--size", "8", "--mode", "RGB")
        assert code == 0, err
        return ImageSet.open(tmp_path / "imported" / "train")
    # A parquet source whose ClassLabel lists the classes out of sorted order.
    old = make_old_style(written_set(tmp_path / "old"), CLASSES)
    export_parquet(old, tmp_path / "source")
    code, _, err = run_cli("data", "import", f"hf:{tmp_path / 'source'}", tmp_path / "imported",
                           "--size", "8", "--mode", "RGB", "--test-fraction", "0.34")
    assert code == 0, err
    imported = ImageSet.open(tmp_path / "imported" / "train")
    assert imported.display_order == CLASSES  # the source's own order, kept for display
    return imported


def test_every_reader_gives_every_image_the_manifests_label_index(unsorted_set, tmp_path):
    root = unsorted_set.root
    expected = manifest_indices(root)
    assert unsorted_set.classes == sorted(unsorted_set.classes) and unsorted_set.class_order == "sorted"
    assert len(set(expected.values())) >= 3  # several classes, so a different numbering would show
    assert imageset_labels(root) == expected
    assert imagefolder_labels(root) == expected
    assert unsorted_set.imagefolder_difference() is None
    assert hf_card_labels(root, tmp_path / "cache-card") == expected
    assert hf_imagefolder_labels(root, tmp_path / "cache-folder") == expected
    assert parquet_labels(root, tmp_path / "pq") == expected
    assert webdataset_labels(root, tmp_path / "wds") == expected
    assert verify(root).ok, verify(root).problems


def test_text_to_image_generation_numbers_the_classes_asked_for_as_imagefolder_does(tiny_text2image, tmp_path,
                                                                                    run_cli):
    """The reported case: ``imgsynth generate TINY_T2I out --classes kitchen,bedroom,bathroom``."""
    code, _, err = run_cli("generate", tiny_text2image, tmp_path / "out", "--classes", ",".join(CLASSES),
                           "--per-class", "1", "--steps", "1", "--device", "cpu", "--no-progress")
    assert code == 0, err
    generated = ImageSet.open(tmp_path / "out")
    assert generated.classes == ["bathroom", "bedroom", "kitchen"] and generated.display_order == CLASSES
    expected = manifest_indices(generated.root)
    assert imagefolder_labels(generated.root) == expected
    assert hf_card_labels(generated.root, tmp_path / "cache") == expected
    assert webdataset_labels(generated.root, tmp_path / "wds") == expected


def test_the_given_order_is_kept_for_display_only(tmp_path, run_cli):
    s = written_set(tmp_path / "set")
    assert s.classes == ["bathroom", "bedroom", "kitchen"] and s.display_order == CLASSES
    assert s.manifest["display_order"] == CLASSES and list(s.counts) == s.classes
    code, out, err = run_cli("data", "info", s.root)
    assert code == 0, err
    assert "label index order sorted" in out and "display   kitchen, bedroom, bathroom" in out
    assert [line.split()[:2] for line in out.splitlines()[-3:]] == [["0", "bathroom"], ["1", "bedroom"],
                                                                    ["2", "kitchen"]]
    assert "note:" not in err


def test_parquet_extra_columns_keep_their_types_and_real_images_have_no_generation(tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    s = written_set(tmp_path / "set")
    export_parquet(s, tmp_path / "pq")
    schema = pq.read_schema(next((tmp_path / "pq").glob("*.parquet")))
    assert {name: schema.field(name).type for name in ("label", "seed", "generation", "steps", "guidance_scale",
                                                       "prompt")} == \
        {"label": pa.int64(), "seed": pa.int64(), "generation": pa.int64(), "steps": pa.int64(),
         "guidance_scale": pa.float64(), "prompt": pa.string()}
    assert schema.field("caption_fields").type == pa.struct([("room", pa.string()), ("style", pa.string())])
    frame = pd.read_parquet(tmp_path / "pq")
    assert str(frame["generation"].dtype) == "Int64" and str(frame["steps"].dtype) == "Int64"
    written = [next(r for r in s.records if r.sha256 == h).extra.get("generation") for h in frame["sha256"]]
    real = np.array([g is None for g in written])
    assert real.sum() == 3  # the real images of the mixed set: generation missing (<NA>), not NaN
    assert frame["generation"][real].isna().all() and frame["guidance_scale"][real].isna().all()
    assert frame["generation"][~real].tolist() == [g for g in written if g is not None]
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "pq"), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded.features["generation"] == datasets.Value("int64")
    assert list(loaded["generation"]) == written


# --------------------------------------------------------------------------------------------- old sets

def test_an_old_set_with_unsorted_classes_opens_verifies_and_says_its_order(tmp_path, run_cli):
    old = make_old_style(written_set(tmp_path / "set"), CLASSES)
    assert old.classes == CLASSES and old.class_order == "as written"
    # Its indices stay those it was written with, for ImageSet and every export alike.
    expected = manifest_indices(old.root)
    assert {old.records[i].label: old[i][1] for i in range(len(old))} == {"kitchen": 0, "bedroom": 1, "bathroom": 2}
    assert imageset_labels(old.root) == expected
    assert parquet_labels(old.root, tmp_path / "pq") == expected
    assert webdataset_labels(old.root, tmp_path / "wds") == expected
    assert hf_imagefolder_labels(old.root, tmp_path / "cache") == expected
    report = verify(old.root)
    assert report.ok, report.problems
    # ImageFolder cannot reproduce them, and the set says so.
    assert imagefolder_labels(old.root) != expected
    assert "order written" in old.imagefolder_difference()
    code, out, err = run_cli("data", "info", old.root)
    assert code == 0, err
    assert "label index order as written" in out and "ImageFolder numbers this set's classes differently" in err
    assert "display" not in out


def test_sets_derived_from_an_old_set_are_written_in_sorted_order(tmp_path):
    old = make_old_style(written_set(tmp_path / "set"), CLASSES)
    part = old.subset(range(0, len(old), 2), tmp_path / "part")
    assert part.classes == sorted(CLASSES) and part.display_order == CLASSES
    both = concatenate([old, part], tmp_path / "both")
    assert both.classes == sorted(CLASSES) and imagefolder_labels(both.root) == manifest_indices(both.root)


def test_sampling_a_model_fitted_on_an_old_set_maps_classes_by_name(tmp_path):
    """A generator knows its training set's classes; the set it writes indexes them sorted, by name."""
    from imgsynth.pipelines.base import build_kind

    rng = np.random.default_rng(2)
    brightness = {"kitchen": 200, "bedroom": 120, "bathroom": 40}
    writer = ImageSetWriter(tmp_path / "train", CLASSES)
    writer.write_all(Sample(Image.fromarray(np.clip(rng.normal(brightness[c], 5, (4, 4)), 0, 255).astype(np.uint8)),
                            c, image_id=f"{c}-{i}") for i in range(12) for c in CLASSES)
    train = make_old_style(writer.finalize(), CLASSES)
    generator = build_kind("gaussian")
    model = generator.fit(train, tmp_path / "model", seed=0, progress=False)
    samples = generator.sample(model, tmp_path / "samples", per_class=4, seed=0, progress=False)
    assert samples.classes == sorted(CLASSES) and imagefolder_labels(samples.root) == manifest_indices(samples.root)
    for i, record in enumerate(samples.records):
        assert abs(float(np.asarray(samples.load_image(i)).mean()) - brightness[record.label]) < 20
        assert samples[i][1] == samples.classes.index(record.label)


# --------------------------------------------------------------------------------------------- edges

def test_digit_classes_keep_their_indices(digits_sets):
    for s in digits_sets:
        assert s.classes == [str(d) for d in range(10)] and "display_order" not in s.manifest
        assert s.labels == [int(r.label) for r in s.records] and s.class_order == "sorted"
        assert s.imagefolder_difference() is None


def test_an_empty_class_before_others_is_where_imagefolder_differs(tmp_path):
    s = written_set(tmp_path / "set")
    no_bathroom = s.subset([i for i, r in enumerate(s.records) if r.label != "bathroom"], tmp_path / "a",
                           classes=CLASSES)
    assert no_bathroom.counts["bathroom"] == 0
    assert imagefolder_labels(no_bathroom.root) != manifest_indices(no_bathroom.root)
    assert "bathroom" in no_bathroom.imagefolder_difference()
    no_kitchen = s.subset([i for i, r in enumerate(s.records) if r.label != "kitchen"], tmp_path / "b",
                          classes=CLASSES)
    assert imagefolder_labels(no_kitchen.root) == manifest_indices(no_kitchen.root)
    assert no_kitchen.imagefolder_difference() is None


def test_verify_checks_the_dataset_card_against_the_manifest(tmp_path):
    s = written_set(tmp_path / "set")
    card = s.root / "README.md"
    text = card.read_text()
    card.write_text(text.replace("'0': bathroom", "'0': KITCHEN").replace("'2': kitchen", "'2': bathroom")
                    .replace("'0': KITCHEN", "'0': kitchen"))
    problems = [str(p) for p in verify(s.root).problems]
    assert problems == [f"{card}: declares label classes ['kitchen', 'bedroom', 'bathroom'], but imageset.json "
                        "has ['bathroom', 'bedroom', 'kitchen']; datasets would give images other label indices"]
    card.write_text("# my own notes about this set\n")  # a card of the user's is theirs
    assert verify(s.root).ok


def test_a_writer_refuses_duplicate_classes_in_any_order(tmp_path):
    from imgsynth.errors import ImageSetError

    with pytest.raises(ImageSetError, match="duplicate class names"):
        ImageSetWriter(tmp_path / "set", ["kitchen", "bathroom", "kitchen"])
    assert not (tmp_path / "set").exists() and not (tmp_path / ".set.partial").exists()
