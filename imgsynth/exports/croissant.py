"""The Croissant export: a Croissant 1.1 JSON-LD description of a set, with its lineage in PROV-O terms.

Croissant (MLCommons) describes a dataset's files and record sets so that loaders such as
``mlcroissant`` read it without code of its own; its RAI and PROV-O fields carry where the images came
from. The description reads the set (:mod:`imgsynth.imageset`) and its provenance
(:mod:`imgsynth.provenance`), which is why it lives here, above both.
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from imgsynth.atomic_files import write_text_atomic
from imgsynth.errors import ImageSetError
from imgsynth.exports.formats import ExportFormat
from imgsynth.generator_record import generator_model, generator_name, generator_record
from imgsynth.imageset import ImageRecord, ImageSet
from imgsynth.locking import folder_lock
from imgsynth.provenance import (FROM_SCRATCH, Lineage, classify_license, license_record, lineage, sha256_bytes,
                                 sha256_file)

CROISSANT_CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
CROISSANT_FILE = "croissant.json"
# The JSON-LD context of the Croissant 1.1 specification (appendix 1), with schema.org spelled https as
# mlcroissant writes and reads it, plus the PROV-O prefix of the provenance terms (spec: "Provenance").
CROISSANT_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "prov": "http://www.w3.org/ns/prov#",
    "dct": "http://purl.org/dc/terms/",
    "annotation": "cr:annotation",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "excludes": "cr:excludes",
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "readLines": "cr:readLines",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sdVersion": "cr:sdVersion",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
    "unArchive": "cr:unArchive",
    "value": "cr:value",
}
_CROISSANT_TYPES = {bool: "sc:Boolean", int: "sc:Integer", float: "sc:Float", str: "sc:Text"}
# License names that name no terms of their own but defer to the set's ancestors.
_DEFERRING_LICENSES = frozenset({"", "unknown", "generated", "mixed", FROM_SCRATCH})
# Node ids: absolute IRIs, so that no reader resolves them against the file's location.
_URN = "urn:imgsynth:"


def croissant_metadata(image_set: ImageSet, folder: str | Path | None = None) -> dict[str, Any]:
    """A Croissant 1.1 JSON-LD description of an opened ImageSet, to be stored in ``folder`` (default: the set).

    File paths are relative to ``folder``, which must be the set's folder or one above it: Croissant
    readers resolve paths against the JSON-LD's own folder (and mlcroissant finds a FileSet's files only
    below it), so the description keeps working from any working directory and when the folder moves.
    Distribution: ``metadata.jsonl`` and ``imageset.json`` with sha256, the PNGs as a FileSet. Record
    sets: ``classes`` (the enumeration that defines label indices), ``images`` (content, path and label
    from the files) and ``samples`` (the metadata rows joined to their images on ``file_name``, so each
    record holds the image with its label and caption). ``license`` lists every license met on the way
    back to the real sources; ``prov:wasDerivedFrom`` names the parents, ``prov:wasGeneratedBy`` the
    sampling activity with the generator as its agent; RAI fields tell the whole chain in prose.
    """
    root = Path(image_set.root).absolute()
    folder = root if folder is None else Path(folder).absolute()
    prefix = _croissant_prefix(root, folder)
    manifest = image_set.manifest
    graph = lineage(root)
    kind = manifest.get("kind", "real")
    synthetic = kind in ("generated", "curated") or any(n.generator for n in graph.nodes.values())
    counts = ", ".join(f"{c}: {n}" for c, n in manifest.get("counts", {}).items())
    distribution = [
        {"@type": "cr:FileObject", "@id": "metadata.jsonl", "name": "metadata.jsonl",
         "description": "One JSON row per image: file_name, label, caption, seed, sha256 and generator fields.",
         "contentUrl": prefix + "metadata.jsonl", "encodingFormat": "application/jsonlines",
         "sha256": sha256_file(root / "metadata.jsonl")},
        {"@type": "cr:FileObject", "@id": "imageset.json", "name": "imageset.json",
         "description": "The imgsynth manifest: id, classes, counts, parents, generator, config, software.",
         "contentUrl": prefix + "imageset.json", "encodingFormat": "application/json",
         "sha256": sha256_file(root / "imageset.json")},
        {"@type": "cr:FileSet", "@id": "image-files", "name": "image-files",
         "description": "PNG images, one folder per class (torchvision ImageFolder layout).",
         "encodingFormat": "image/png", "includes": glob.escape(prefix) + "images/*/*.png"},
    ]
    classes_record = {
        "@type": "cr:RecordSet", "@id": "classes", "name": "classes", "dataType": "sc:Enumeration",
        "description": "The class names, in the order that defines label indices.",
        "key": {"@id": "classes/name"},
        "field": [{"@type": "cr:Field", "@id": "classes/name", "name": "name", "dataType": "sc:Text"},
                  {"@type": "cr:Field", "@id": "classes/index", "name": "index", "dataType": "sc:Integer"}],
        "data": [{"classes/name": c, "classes/index": i} for i, c in enumerate(image_set.classes)],
    }
    files = {"fileSet": {"@id": "image-files"}}
    images_record = {
        "@type": "cr:RecordSet", "@id": "images", "name": "images", "key": {"@id": "images/file_name"},
        "description": "One record per PNG file: its content, its path in the set and the class folder it is in.",
        "field": [
            _croissant_field("images", "image", "sc:ImageObject", {**files, "extract": {"fileProperty": "content"}}),
            # The path relative to the set root, the spelling of metadata.jsonl's file_name.
            _croissant_field("images", "file_name", "sc:Text", {
                **files, "extract": {"fileProperty": "fullpath"},
                "transform": {"regex": f"^{re.escape(prefix)}(images/[^/]+/[^/]+\\.png)$"}}),
            # From "filepath", not "fullpath" like file_name: mlcroissant merges fields that share one
            # file property and would apply this regex to file_name too. No "references" to classes
            # here: mlcroissant's join would apply the regex a second time, to its own output.
            _croissant_field("images", "label", "sc:Text", {
                **files, "extract": {"fileProperty": "filepath"},
                "transform": {"regex": "^(?:.*/)?images/([^/]+)/[^/]+\\.png$"}}),
        ],
    }
    # mlcroissant joins a record set on its first field with "references" only, so file_name (the
    # join with the images) comes before label (whose reference to the classes documents the enumeration).
    sample_fields = [_croissant_field("samples", "image", "sc:ImageObject", {"field": {"@id": "images/image"}})]
    for column, data_type in _metadata_columns(image_set.records):
        entry = _croissant_field("samples", column, data_type, {"fileObject": {"@id": "metadata.jsonl"},
                                                               "extract": {"column": column}})
        if column == "file_name":
            entry["references"] = {"field": {"@id": "images/file_name"}}
        if column == "label":
            entry["dataType"] = [data_type, "cr:Label"]
            entry["references"] = {"field": {"@id": "classes/name"}}
        sample_fields.append(entry)
    samples_record = {"@type": "cr:RecordSet", "@id": "samples", "name": "samples",
                      "description": "One record per image: the image, its label, caption, seed, sha256 and "
                                     "generator fields (metadata.jsonl joined to the files on file_name).",
                      "key": {"@id": "samples/file_name"}, "field": sample_fields}
    parents = [_croissant_parent(entry, graph) for entry in manifest.get("parents") or []]
    description = (f"imgsynth ImageSet ({kind}) of {manifest.get('num_images', len(image_set.records))} labeled "
                   f"images, {len(image_set.classes)} classes ({counts}); id {manifest['id']}.")
    document: dict[str, Any] = {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "@id": f"{_URN}imageset:{manifest['id']}",
        "conformsTo": CROISSANT_CONFORMS_TO,
        "name": f"{root.name}-{manifest['id'][:12]}",
        "description": description,
        "identifier": manifest["id"],
        "version": "1.0.0",
        "dateCreated": manifest.get("created"),
        "datePublished": manifest.get("created"),
        "citeAs": f"@misc{{imgsynth_{manifest['id'][:12]}, title={{{root.name}}}, "
                  f"note={{imgsynth ImageSet {manifest['id']}}}}}",
        "license": _croissant_licenses(graph),
        "keywords": ["image classification", "synthetic data" if synthetic else "real data", "imgsynth"],
        "distribution": distribution,
        "recordSet": [classes_record, images_record, samples_record],
        "prov:wasDerivedFrom": parents,
        "rai:dataCollection": _collection_story(graph),
        "rai:dataCollectionType": ["Synthetic"] + (["Secondary Data analysis"] if kind == "mixed" else [])
        if synthetic else ["Secondary Data analysis"],
        "rai:dataCollectionRawData": "; ".join(f"{n.key} ({n.path}), license {n.license.get('name', 'unknown')}"
                                              for n in graph.sources) or "no real source recorded",
        "rai:dataPreprocessingProtocol": _preprocessing_story(manifest),
        "rai:dataLimitations": _limitations(synthetic, graph),
        "rai:dataUseCases": ["Research on training with synthetic images and on model collapse",
                             "Training and evaluating image classifiers and generators"],
    }
    generator = generator_record(manifest.get("generator"))
    if generator:
        activity, agent = _croissant_generation(manifest, generator, parents)
        document["prov:wasGeneratedBy"] = activity
        document["prov:wasAttributedTo"] = {"@id": agent}
    return {key: value for key, value in document.items() if value is not None}


def _croissant_prefix(root: Path, folder: Path, where: Path | None = None) -> str:
    """The set root as a path prefix relative to ``folder`` ('' when they are the same folder); an error
    naming ``where`` (default ``folder``) when the set is not inside it."""
    try:
        relative = root.resolve().relative_to(folder.resolve())
    except ValueError:
        raise ImageSetError(
            f"{where or folder}: a Croissant file for the set {root} must be written in the set's folder or a folder "
            "above it: readers find the files from the JSON-LD's own folder, and mlcroissant only looks below "
            f"it (e.g. {root / CROISSANT_FILE})") from None
    text = relative.as_posix()
    return "" if text == "." else text + "/"


def _croissant_field(record_set: str, name: str, data_type: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"@type": "cr:Field", "@id": f"{record_set}/{name}", "name": name, "dataType": data_type,
            "source": source}


def _croissant_parent(entry: Mapping[str, Any], graph: Lineage) -> dict[str, Any]:
    """A parent set or real source as a ``prov:Entity`` (not ``sc:Dataset``: a nested Dataset node would
    read as a second Croissant dataset), with its license when one is known."""
    parent_id = str(entry.get("id"))
    is_source = entry.get("kind") == "source" or parent_id.startswith("source:")
    parent = {"@type": "prov:Entity", "@id": _entity_iri(parent_id, is_source), "identifier": parent_id,
              "name": str(entry.get("path") or parent_id)}
    node = graph.nodes.get(parent_id)
    license = entry.get("license") or (node.license if node is not None else None)
    if license and str(license_record(license)["name"]).lower() not in _DEFERRING_LICENSES:
        parent["license"] = license_record(license)["name"]
    return parent


def _entity_iri(set_id: str, is_source: bool) -> str:
    # Source ids ("source:digits", "source:folder:My photos") carry their own "source:" prefix.
    return _URN + quote(set_id if is_source else f"imageset:{set_id}", safe=":/._-~")


def _croissant_generation(manifest: Mapping[str, Any], generator: Mapping[str, Any],
                          parents: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The ``prov:Activity`` that made the set, associated with the generator as a ``prov:SoftwareAgent``
    (named after its pipeline and model, with the model's license), and the agent's id."""
    record = json.dumps(generator, sort_keys=True, default=str)
    name = generator_name(generator) or "generator"
    model = generator_model(generator)
    agent: dict[str, Any] = {"@type": "prov:SoftwareAgent", "@id": f"{_URN}generator:{sha256_bytes(record.encode())}",
                             "prov:label": name + (f" ({model})" if model else ""), "description": record}
    if generator.get("license"):
        agent["license"] = license_record(generator["license"])["name"]
    count = manifest.get("num_images", "the")
    # A curated subset keeps its parent's generator record: its images were sampled, then selected.
    made = (f"imgsynth sampled {count} images from {agent['prov:label']}" if manifest.get("kind") == "generated"
            else f"imgsynth kept {count} images ({manifest.get('kind')}) sampled from {agent['prov:label']}")
    activity: dict[str, Any] = {
        "@type": "prov:Activity", "@id": f"{_URN}activity:{manifest['id']}", "prov:label": made,
        "prov:wasAssociatedWith": agent,
        "prov:used": [{"@id": parent["@id"]} for parent in parents],
    }
    if manifest.get("created"):
        activity["prov:endedAtTime"] = manifest["created"]
    return activity, agent["@id"]


def _croissant_licenses(graph: Lineage) -> list[dict[str, str]]:
    """Every distinct license met on the way back to the real sources (sources, sets with terms of their
    own, generator models), each a schema.org CreativeWork saying what it covers and what it means.
    Placeholders such as "generated" name no terms and are skipped; "unknown" is kept where a source or
    an unreadable parent leaves the terms open."""
    covers: dict[str, tuple[str, list[str]]] = {}

    def add(license: Any, subject: str) -> None:
        name = str(license_record(license)["name"]).strip() or "unknown"
        subjects = covers.setdefault(name.lower(), (name, []))[1]
        if subject not in subjects:
            subjects.append(subject)

    for node in graph.nodes.values():
        if node.kind == "source":
            add(node.license, f"real data {node.key} ({node.path})")
        elif node.problem:
            add(None, f"a parent that could not be read ({node.problem})")
        else:
            if str(node.license.get("name", "unknown")).strip().lower() not in _DEFERRING_LICENSES:
                add(node.license, f"set {node.key[:12]} ({node.path})")
            model_license = node.generator.get("license")
            if model_license and str(license_record(model_license)["name"]).lower() not in _DEFERRING_LICENSES:
                add(model_license, f"model {generator_model(node.generator) or '?'} that generated set "
                                   f"{node.key[:12]}")
    if not covers:
        add(None, "the whole lineage (no license recorded)")
    works = []
    for name, subjects in covers.values():
        verdict = classify_license(name)
        works.append({"@type": "sc:CreativeWork", "name": name,
                      "description": f"{verdict['status']}: {verdict['reason']}; covers {'; '.join(subjects)}"})
    return works


def _metadata_columns(records: Sequence[ImageRecord]) -> list[tuple[str, str]]:
    """(column, Croissant data type) of every metadata column with scalar values."""
    columns: dict[str, str] = {"file_name": "sc:Text", "label": "sc:Text", "caption": "sc:Text",
                               "seed": "sc:Integer", "sha256": "sc:Text"}
    for record in records:
        for key, value in record.extra.items():
            if key not in columns and value is not None and type(value) in _CROISSANT_TYPES:
                columns[key] = _CROISSANT_TYPES[type(value)]
    return list(columns.items())


def _collection_story(graph: Lineage) -> str:
    """The lineage as prose: each set, how it was made (generator, model, model license), its parents."""
    sentences = []
    for node in graph.nodes.values():
        if node.kind == "source":
            sentences.append(f"Source {node.key} ({node.path}) is real data licensed "
                             f"{node.license.get('name', 'unknown')}.")
        elif node.problem:
            sentences.append(f"A parent set could not be read: {node.problem}.")
        else:
            made = f"Set {node.key[:12]} ({node.kind}, {node.num_images} images)"
            if node.generator:
                model = generator_model(node.generator)
                made += f" was generated by {generator_name(node.generator) or 'a generator'}"
                if model:
                    made += f" using model {model}"
                if node.generator.get("license"):
                    made += f" (model license {license_record(node.generator['license'])['name']})"
            if node.parents:
                made += f"; it derives from {', '.join(p.removeprefix('missing:')[:16] for p in node.parents)}"
            sentences.append(made + ".")
    return " ".join(sentences)


def _preprocessing_story(manifest: Mapping[str, Any]) -> str:
    config = manifest.get("config") or {}
    size = manifest.get("image_size")
    text = f"Images stored as deterministic PNG, mode {manifest.get('image_mode')}"
    if size:
        text += f", {size[0]}x{size[1]} pixels"
    if config:
        text += f"; configuration: {json.dumps(config, sort_keys=True, default=str)}"
    return text + "."


def _limitations(synthetic: bool, graph: Lineage) -> list[str]:
    notes = []
    if synthetic:
        notes.append("Images are model outputs, not observations; labels are the classes the generator was asked "
                     "for and were not checked by people. Training on synthetic data recursively can lose "
                     "diversity and rare modes (model collapse).")
    notes.extend(f"License: {w}" for w in graph.warnings)
    notes.extend(f"Lineage: {p}" for p in graph.problems)
    return notes


def write_croissant(image_set: ImageSet, out: str | Path | None = None) -> Path:
    """Write :func:`croissant_metadata` as JSON to ``out`` (default ``<set>/croissant.json``), atomically.

    ``out`` (a file, or a folder to hold ``croissant.json``) must be in the set's folder or a folder
    above it. An existing file is left alone when it already holds this description and refused
    otherwise, as the other exports refuse to write over anything.
    """
    out = Path(out) if out is not None else Path(image_set.root) / CROISSANT_FILE
    if out.is_dir():
        out = out / CROISSANT_FILE
    out = out.absolute()
    _croissant_prefix(Path(image_set.root).absolute(), out.parent, out)  # refuse before reading the set
    text = json.dumps(croissant_metadata(image_set, out.parent), indent=2, ensure_ascii=False) + "\n"
    with folder_lock(out):
        if out.exists() or out.is_symlink():
            if out.is_file() and not out.is_symlink() and out.read_bytes() == text.encode("utf-8"):
                return out
            raise ImageSetError(f"{out}: already exists; remove it or choose another file for the export")
        write_text_atomic(out, text)
    return out


def _write(image_set: ImageSet, out: Path) -> list[Path]:
    return [write_croissant(image_set, out)]


def _default_out(image_set: ImageSet) -> Path:
    return Path(image_set.root) / CROISSANT_FILE


CROISSANT = ExportFormat(write=_write, default_out=_default_out)
