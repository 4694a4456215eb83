"""Provenance: content ids, the license table, model licenses from cards, lineage, Croissant export."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsynth.exports import CROISSANT_CONFORMS_TO, croissant_metadata, write_croissant
from imgsynth.imageset import ImageSet, ImageSetWriter, Sample, concatenate
from imgsynth.provenance import (LICENSES, classify_license, content_id, lineage, model_license, read_card_license,
                                 sha256_file)


def write(root: Path, seed: int, *, parents=(), kind="real", generator=None, license=None) -> ImageSet:
    rng = np.random.default_rng(seed)
    writer = ImageSetWriter(root, ["x", "y"], kind=kind, parents=parents, generator=generator, license=license)
    writer.write_all(Sample(Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)), label,
                            f"a {label}", i, f"{label}{i}", {"generation": 1} if kind == "generated" else {})
                     for i in range(2) for label in ("x", "y"))
    return writer.finalize()


SOURCE = {"id": "source:toy", "path": "toy", "kind": "source", "license": {"name": "CC-BY-4.0"}}


@pytest.fixture
def chain(tmp_path):
    """source:toy -> real -> gen1 (from a restricted model) -> gen2 (unknown model license); and mixed."""
    real = write(tmp_path / "run" / "real", 0, parents=[SOURCE], license={"name": "CC-BY-4.0"})
    gen1 = write(tmp_path / "run" / "gen_1", 1, parents=[real], kind="generated",
                 generator={"pipeline": "text2image", "model": "models/sd",
                            "license": {"name": "creativeml-openrail-m"}})
    gen2 = write(tmp_path / "run" / "gen_2", 2, parents=[gen1], kind="generated",
                 generator={"pipeline": "conditional", "model": "models/ddpm"})
    mixed = concatenate([real, gen2], tmp_path / "run" / "mixed")
    return {"real": real, "gen1": gen1, "gen2": gen2, "mixed": mixed}


# --------------------------------------------------------------------------------------------- hashes

def test_content_id_is_order_free_and_label_sensitive():
    pairs = [(hashlib.sha256(bytes([i])).hexdigest(), "a") for i in range(5)]
    assert content_id(pairs) == content_id(reversed(pairs))
    assert content_id(pairs) != content_id([(pairs[0][0], "b"), *pairs[1:]])
    expected = hashlib.sha256("".join(f"{s}\t{l}\n" for s, l in sorted(pairs)).encode()).hexdigest()
    assert content_id(pairs) == expected


# --------------------------------------------------------------------------------------------- licenses

@pytest.mark.parametrize("name, status", [
    ("apache-2.0", "permissive"), ("MIT", "permissive"), ("CC-BY-4.0", "permissive"), ("cc0-1.0", "permissive"),
    ("cc-by-nc-4.0", "restricted"), ("cc-by-nc-sa-4.0", "restricted"), ("cc-by-nd-4.0", "restricted"),
    ("creativeml-openrail-m", "restricted"), ("openrail++", "restricted"), ("bigscience-openrail-m", "restricted"),
    ("other", "restricted"), ("proprietary", "restricted"), ("llama3.1", "restricted"), ("llama2", "restricted"),
    ("stabilityai-ai-community", "restricted"), ("sai-nc-community", "restricted"),
    ("flux-1-dev-non-commercial-license", "restricted"), ("some-non-commercial-terms", "restricted"),
    ("unknown", "unknown"), (None, "unknown"), ("my-own-license", "unknown"), ("from-scratch", "permissive"),
])
def test_license_table(name, status):
    verdict = classify_license(name)
    assert verdict["status"] == status and verdict["reason"]


def test_unlisted_license_says_it_is_not_in_the_table():
    assert "not in imgsynth's license table" in classify_license("wtfpl")["reason"]
    assert all(status in ("permissive", "restricted") for status, _ in LICENSES.values())


def card(folder: Path, front_matter: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(f"---\n{front_matter}\n---\n# A model\n")
    return folder


def test_model_license_reads_hf_card_front_matter(tmp_path):
    model = card(tmp_path / "m", "library_name: diffusers\nlicense: creativeml-openrail-m\ntags: [a, b]")
    record = model_license(model)
    assert record["name"] == "creativeml-openrail-m" and "README.md front matter" in record["from"]
    (model / "unet").mkdir()
    (model / "unet" / "weights.safetensors").write_bytes(b"")
    assert model_license(model / "unet")["name"] == "creativeml-openrail-m"  # sub-model of a carded pipeline
    assert model_license(model / "unet" / "weights.safetensors")["name"] == "creativeml-openrail-m"


def test_model_license_other_uses_license_name_and_link(tmp_path):
    model = card(tmp_path / "flux", "license: other\nlicense_name: flux-1-dev-non-commercial-license\n"
                                    "license_link: LICENSE.md")
    record = model_license(model)
    assert record["name"] == "flux-1-dev-non-commercial-license" and record["link"] == "LICENSE.md"
    assert classify_license(record)["status"] == "restricted"


def test_model_license_from_model_index_then_option_then_unknown(tmp_path):
    pipeline = tmp_path / "pipe"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "X", "license": "apache-2.0"}))
    assert model_license(pipeline)["name"] == "apache-2.0"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "README.md").write_text("# no front matter\nlicense: mit\n")
    assert model_license(bare, license="mit") == {"model": str(bare), "name": "mit", "from": "--license"}
    assert model_license(bare)["name"] == "unknown"
    declared = model_license(pipeline, license="mit")
    assert declared["name"] == "apache-2.0" and declared["user_declared"] == "mit"


def test_model_license_of_an_uncached_hub_id_is_unknown():
    assert model_license("nobody/not-a-cached-model")["name"] == "unknown"


def test_dataset_card_license(tmp_path):
    assert read_card_license(card(tmp_path / "d", "license: cc-by-nc-4.0"))["name"] == "cc-by-nc-4.0"
    assert read_card_license(tmp_path) is None


# --------------------------------------------------------------------------------------------- lineage

def test_lineage_walks_back_to_the_source_and_warns(chain):
    graph = lineage(chain["gen2"].root)
    assert graph.root == chain["gen2"].id
    assert set(graph.nodes) == {chain["gen2"].id, chain["gen1"].id, chain["real"].id, "source:toy"}
    assert [s.key for s in graph.sources] == ["source:toy"]
    assert graph.nodes[chain["gen2"].id].parents == [chain["gen1"].id]
    assert any("model models/sd" in w and "creativeml-openrail-m" in w and "restricted" in w for w in graph.warnings)
    assert any("model models/ddpm" in w and "unknown" in w for w in graph.warnings)
    assert not any("source:toy" in w for w in graph.warnings)  # CC-BY-4.0 is fine
    assert graph.problems == []


def test_lineage_of_a_mixed_set_is_a_graph_printed_once_per_node(chain):
    graph = lineage(chain["mixed"].root)
    assert graph.nodes[chain["mixed"].id].parents == [chain["real"].id, chain["gen2"].id]
    text = graph.render()
    assert text.count(chain["real"].id[:12]) == 2 and "(see above)" in text
    assert text.count("source:toy") == 1


def test_lineage_cli_text_and_json(run_cli, chain):
    code, out, err = run_cli("lineage", chain["gen2"].root)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(chain["gen2"].id[:12]) and "generated" in lines[0] and "by conditional" in lines[0]
    assert "└── " + chain["gen1"].id[:12] in out and "source:toy  (toy)  license CC-BY-4.0" in out
    assert "warning: model models/sd used by set" in err and "creativeml-openrail-m" in err
    code, out, err = run_cli("lineage", chain["gen2"].root, "--json")
    data = json.loads(out)
    assert code == 0 and data["root"] == chain["gen2"].id and data["sources"] == ["source:toy"]
    assert len(data["warnings"]) == 2 and {n["key"] for n in data["nodes"]} >= {chain["real"].id, "source:toy"}
    assert run_cli("lineage", chain["gen2"].root, "--strict")[0] == 1
    assert run_cli("lineage", chain["real"].root, "--strict")[0] == 0


def test_lineage_reports_a_missing_parent_without_crashing(run_cli, chain):
    shutil.rmtree(chain["real"].root)
    code, out, err = run_cli("lineage", chain["gen1"].root)
    assert code == 0
    assert f"problem: {chain['gen1'].root / 'imageset.json'}: parent {chain['real'].id[:12]}" in err
    assert "no such ImageSet folder" in err and "!!" in out
    data = json.loads(run_cli("lineage", chain["gen1"].root, "--json")[1])
    assert data["problems"] and data["sources"] == []


def test_lineage_reports_a_parent_replaced_by_another_set(chain, tmp_path):
    shutil.rmtree(chain["real"].root)
    write(chain["real"].root, 99, parents=[SOURCE])
    graph = lineage(chain["gen1"].root)
    assert any("now holds a different set" in p for p in graph.problems)


def test_lineage_follows_moved_run_folders(chain, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "run"), moved)
    graph = lineage(moved / "gen_2")
    assert graph.problems == [] and "source:toy" in graph.nodes


def test_lineage_warns_about_restricted_or_unknown_sources(tmp_path):
    nc = write(tmp_path / "nc", 0, parents=[{**SOURCE, "license": {"name": "cc-by-nc-4.0"}}])
    assert any("source source:toy" in w and "non-commercial" in w for w in lineage(nc.root).warnings)
    orphan = write(tmp_path / "orphan", 1)
    assert any("records no parents" in w and "unknown" in w for w in lineage(orphan.root).warnings)


def test_lineage_accepts_a_model_trained_from_scratch(tmp_path):
    real = write(tmp_path / "real", 0, parents=[SOURCE], license={"name": "CC-BY-4.0"})
    gen = write(tmp_path / "gen", 1, parents=[real], kind="generated",
                generator={"pipeline": "conditional", "model": "gen/model", "license": {"name": "from-scratch"}})
    assert lineage(gen.root).warnings == []


def test_lineage_of_a_missing_set_is_a_clear_error(run_cli, tmp_path):
    code, _, err = run_cli("lineage", tmp_path / "nothing")
    assert code == 2 and f"error: {tmp_path / 'nothing'}: no such ImageSet folder" in err


# --------------------------------------------------------------------------------------------- croissant

def test_croissant_describes_files_records_and_synthetic_lineage(chain):
    gen1 = chain["gen1"]
    doc = croissant_metadata(gen1)
    assert doc["conformsTo"] == CROISSANT_CONFORMS_TO == "http://mlcommons.org/croissant/1.1"
    assert doc["@type"] == "sc:Dataset" and doc["@context"]["cr"] == "http://mlcommons.org/croissant/"
    assert doc["@context"]["rai"] == "http://mlcommons.org/croissant/RAI/"
    files = {d["@id"]: d for d in doc["distribution"]}
    assert files["metadata.jsonl"]["sha256"] == sha256_file(gen1.root / "metadata.jsonl")
    assert files["imageset.json"]["sha256"] == sha256_file(gen1.root / "imageset.json")
    assert files["image-files"]["@type"] == "cr:FileSet" and files["image-files"]["includes"] == "images/*/*.png"
    records = {r["@id"]: r for r in doc["recordSet"]}
    assert [row["classes/name"] for row in records["classes"]["data"]] == gen1.classes
    sample_fields = {f["name"]: f for f in records["samples"]["field"]}
    assert {"image", "file_name", "label", "caption", "seed", "sha256", "generation"} <= set(sample_fields)
    assert sample_fields["generation"]["dataType"] == "sc:Integer"
    assert sample_fields["label"]["references"] == {"field": {"@id": "classes/name"}}
    assert doc["rai:dataCollectionType"] == ["Synthetic"]
    assert doc["prov:wasDerivedFrom"][0]["identifier"] == chain["real"].id
    story = doc["rai:dataCollection"]
    assert "text2image" in story and "models/sd" in story and "creativeml-openrail-m" in story and "source:toy" in story
    assert any("creativeml-openrail-m" in note for note in doc["rai:dataLimitations"])
    assert doc["prov:wasGeneratedBy"]["prov:wasAssociatedWith"]["prov:label"] == "text2image (models/sd)"


def test_croissant_references_resolve(chain):
    doc = croissant_metadata(chain["mixed"])
    ids = {d["@id"] for d in doc["distribution"]}
    for record in doc["recordSet"]:
        ids.add(record["@id"])
        ids.update(f["@id"] for f in record["field"])
    for record in doc["recordSet"]:
        for f in record["field"]:
            source = f.get("source", {})
            for key in ("fileObject", "fileSet", "field"):
                if key in source:
                    assert source[key]["@id"] in ids
            if "references" in f:
                assert f["references"]["field"]["@id"] in ids
    assert json.loads(json.dumps(doc)) == doc


def test_croissant_of_a_real_set(chain):
    doc = croissant_metadata(chain["real"])
    assert doc["rai:dataCollectionType"] == ["Secondary Data analysis"]
    assert "source:toy" in doc["rai:dataCollectionRawData"] and "CC-BY-4.0" in doc["rai:dataCollectionRawData"]
    assert [work["name"] for work in doc["license"]] == ["CC-BY-4.0"] and "prov:wasGeneratedBy" not in doc


# rdflib (under mlcroissant) warns about its own use of ConjunctiveGraph when it parses JSON-LD.
RDFLIB_NOISE = pytest.mark.filterwarnings("ignore:ConjunctiveGraph is deprecated:DeprecationWarning")


def _mlcroissant_records(jsonld: Path, record_set: str) -> list[dict]:
    mlcroissant = pytest.importorskip("mlcroissant")
    dataset = mlcroissant.Dataset(jsonld=str(jsonld))
    assert not dataset.metadata.ctx.issues.errors and not dataset.metadata.ctx.issues.warnings
    return list(dataset.records(record_set=record_set))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@RDFLIB_NOISE
@pytest.mark.parametrize("where", ["in the set", "in a folder above it"])
def test_mlcroissant_reads_every_sample_of_an_exported_set_from_another_folder(chain, tmp_path, monkeypatch,
                                                                               caplog, where):
    run = chain["gen1"].root.parent
    out = chain["gen1"].root if where == "in the set" else run
    written = write_croissant(chain["gen1"], out)
    assert written == out / "croissant.json"
    # Move the whole tree, then read from an unrelated working directory: no path may depend on either.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    moved_set = ImageSet.open(moved / "gen_1")
    jsonld = moved / written.relative_to(run)
    with caplog.at_level("WARNING"):
        samples = _mlcroissant_records(jsonld, "samples")
        images = _mlcroissant_records(jsonld, "images")
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text  # no regex misses
    expected = {r.file_name: r for r in moved_set.records}
    assert sorted(_text(s["samples/file_name"]) for s in samples) == sorted(expected)
    for sample in samples:
        record = expected[_text(sample["samples/file_name"])]
        assert _text(sample["samples/label"]) == record.label
        assert _text(sample["samples/caption"]) == record.caption
        assert sample["samples/seed"] == record.seed and sample["samples/generation"] == 1
        path = moved_set.root / record.file_name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == _text(sample["samples/sha256"]) == record.sha256
        # mlcroissant hands out images as RGB; the pixels must be the set's own
        with Image.open(path) as stored:
            assert np.array_equal(np.asarray(sample["samples/image"]), np.asarray(stored.convert("RGB")))
    assert sorted((_text(i["images/file_name"]), _text(i["images/label"])) for i in images) == \
        sorted((r.file_name, r.label) for r in moved_set.records)


def test_croissant_export_refuses_a_different_file_and_a_folder_readers_cannot_use(run_cli, chain, tmp_path):
    gen1 = chain["gen1"]
    out = gen1.root / "croissant.json"
    out.write_text('{"@type": "sc:Dataset", "name": "someone else\'s"}\n')
    before = out.read_bytes()
    code, _, err = run_cli("data", "export", gen1.root, "--format", "croissant")
    assert code == 2 and f"error: {out}: already exists" in err and "Traceback" not in err
    assert out.read_bytes() == before
    out.unlink()
    code, printed, err = run_cli("data", "export", gen1.root, out, "--format", "croissant")
    assert code == 0, err
    first = out.read_bytes()
    # the same description again is not a conflict, and leaves the file as it was
    code, printed_again, err = run_cli("data", "export", gen1.root, out, "--format", "croissant")
    assert code == 0 and printed_again == printed and out.read_bytes() == first
    beside = tmp_path / "exports"
    beside.mkdir()
    code, _, err = run_cli("data", "export", gen1.root, beside / "gen1.json", "--format", "croissant")
    assert code == 2 and f"error: {beside / 'gen1.json'}: a Croissant file for the set {gen1.root}" in err
    assert list(beside.iterdir()) == []
    assert sorted(p.name for p in gen1.root.iterdir()) == sorted(["README.md", "croissant.json", "imageset.json",
                                                                 "images", "metadata.jsonl"])


def test_croissant_licenses_are_the_lineage_licenses_not_placeholders(chain, tmp_path):
    names = {key: [work["name"] for work in croissant_metadata(chain[key])["license"]] for key in chain}
    assert names["real"] == ["CC-BY-4.0"]
    assert sorted(names["gen1"]) == sorted(names["gen2"]) == sorted(names["mixed"]) == \
        ["CC-BY-4.0", "creativeml-openrail-m"]
    gen3 = write(tmp_path / "run" / "gen_3", 3, parents=[chain["gen2"]], kind="generated",
                 generator={"pipeline": "conditional", "model_path": "m", "license": "from-scratch"},
                 license={"name": "generated", "note": "the parent's license terms apply"})
    works = croissant_metadata(gen3)["license"]
    assert sorted(w["name"] for w in works) == ["CC-BY-4.0", "creativeml-openrail-m"]
    by_name = {w["name"]: w["description"] for w in works}
    assert "real data source:toy" in by_name["CC-BY-4.0"] and by_name["CC-BY-4.0"].startswith("permissive")
    assert "models/sd" in by_name["creativeml-openrail-m"] and by_name["creativeml-openrail-m"].startswith("restricted")
    # parents' licenses are carried on the parent entities too
    assert croissant_metadata(chain["gen1"])["prov:wasDerivedFrom"][0]["license"] == "CC-BY-4.0"
    # a source without a license leaves the terms open, and says so
    unlicensed = write(tmp_path / "other", 4, parents=[{"id": "source:mine", "path": "mine", "kind": "source"}])
    assert [w["name"] for w in croissant_metadata(unlicensed)["license"]] == ["unknown"]


@RDFLIB_NOISE
def test_croissant_provenance_uses_prov_o_terms(chain):
    from rdflib import RDF, Graph, Namespace, URIRef

    prov = Namespace("http://www.w3.org/ns/prov#")
    gen1, real = chain["gen1"], chain["real"]
    doc = croissant_metadata(gen1)
    assert doc["@context"]["prov"] == str(prov)
    # Parse as JSON-LD (rdflib, independently of mlcroissant) and read the PROV-O triples back.
    graph = Graph().parse(data=json.dumps(doc), format="json-ld", base=gen1.root.as_uri() + "/")
    dataset = URIRef(f"urn:imgsynth:imageset:{gen1.id}")
    parent = URIRef(f"urn:imgsynth:imageset:{real.id}")
    assert set(graph.objects(dataset, prov.wasDerivedFrom)) == {parent}
    assert (parent, RDF.type, prov.Entity) in graph
    (activity,) = graph.objects(dataset, prov.wasGeneratedBy)
    assert (activity, RDF.type, prov.Activity) in graph
    assert set(graph.objects(activity, prov.used)) == {parent}
    (agent,) = graph.objects(activity, prov.wasAssociatedWith)
    assert (agent, RDF.type, prov.SoftwareAgent) in graph
    assert set(graph.objects(dataset, prov.wasAttributedTo)) == {agent}
    assert "text2image" in str(next(graph.objects(agent, prov.label)))
    # a mixed set derives from both parents and was not sampled by a generator
    mixed = croissant_metadata(chain["mixed"])
    assert {p["identifier"] for p in mixed["prov:wasDerivedFrom"]} == {real.id, chain["gen2"].id}
    assert "prov:wasGeneratedBy" not in mixed
