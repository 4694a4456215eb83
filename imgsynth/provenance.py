"""Provenance: content hashes, software versions, licenses, the lineage graph and Croissant export.

The set id is a hash over the sorted (image sha256, label) pairs, so it names the content alone:
the same pixels with the same labels give the same id however and wherever they were written.
Each manifest's ``parents`` point (by id and relative path) at the sets it came from, ending in
source entries ``{"id": "source:<name>", "kind": "source", "license": ...}``; ``lineage`` walks them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

from imgsynth.generator_record import generator_model, generator_name, generator_record
from urllib.parse import quote

HASH_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_id(items: Iterable[tuple[str, str]]) -> str:
    """Hash of the sorted (sha256, label) pairs: the ImageSet id, independent of order and file names."""
    digest = hashlib.sha256()
    for sha, label in sorted(items):
        digest.update(f"{sha}\t{label}\n".encode())
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    """Versions of the interpreter and the libraries whose behaviour changes the pixels or numbers."""
    versions = {"python": platform.python_version()}
    for package in ("imgsynth", "torch", "torchvision", "diffusers", "transformers", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def license_record(value: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """Normalise a license given as a name, a record or nothing ("unknown") into a record."""
    if value is None:
        return {"name": "unknown"}
    if isinstance(value, str):
        return {"name": value.strip() or "unknown"}
    record = dict(value)
    record.setdefault("name", "unknown")
    return record


# --------------------------------------------------------------------------------------------- licenses

# The license name generators record for a model they trained from random init on imgsynth sets.
FROM_SCRATCH = "from-scratch"
PERMISSIVE = "permissive"
RESTRICTED = "restricted"
UNKNOWN = "unknown"

# License names (lower-case SPDX ids, or the ids Hugging Face cards use) and what they mean for a set
# that trains models or is derived from the licensed thing. "restricted" is anything that limits
# training, derivative works or their use; it is a flag for a human to read the terms, not legal advice.
LICENSES: dict[str, tuple[str, str]] = {
    "apache-2.0": (PERMISSIVE, "Apache 2.0: use, modify and redistribute with attribution and notice"),
    "mit": (PERMISSIVE, "MIT: use, modify and redistribute with attribution"),
    "bsd-2-clause": (PERMISSIVE, "BSD 2-clause: attribution"),
    "bsd-3-clause": (PERMISSIVE, "BSD 3-clause: attribution"),
    "cc0-1.0": (PERMISSIVE, "public-domain dedication"),
    "public-domain": (PERMISSIVE, "public domain"),
    "pddl": (PERMISSIVE, "ODC public-domain dedication"),
    "unlicense": (PERMISSIVE, "public-domain dedication"),
    "cc-by-2.0": (PERMISSIVE, "attribution required"),
    "cc-by-3.0": (PERMISSIVE, "attribution required"),
    "cc-by-4.0": (PERMISSIVE, "attribution required"),
    "odc-by": (PERMISSIVE, "attribution required"),
    "cdla-permissive-2.0": (PERMISSIVE, "attribution of the data; results are unrestricted"),
    "cc-by-sa-3.0": (PERMISSIVE, "share-alike: adapted material must carry the same license"),
    "cc-by-sa-4.0": (PERMISSIVE, "share-alike: adapted material must carry the same license"),
    FROM_SCRATCH: (PERMISSIVE, "weights trained from scratch on the set's ancestors, whose own licenses apply"),
    "other": (RESTRICTED, "custom terms ('other'): read the card before training on or sharing derivatives"),
    "proprietary": (RESTRICTED, "proprietary terms"),
    "deepfloyd-if-license": (RESTRICTED, "DeepFloyd IF license: non-commercial research use only"),
    "flux-1-dev-non-commercial-license": (RESTRICTED, "FLUX.1 [dev] license: outputs usable, model and "
                                          "derivatives non-commercial only"),
    "sai-nc-community": (RESTRICTED, "Stability AI non-commercial research community license"),
    "stabilityai-nc-research-community": (RESTRICTED, "Stability AI non-commercial research community license"),
    "stabilityai-ai-community": (RESTRICTED, "Stability AI community license: commercial use capped by revenue, "
                                 "acceptable-use policy applies"),
}
# Families matched by prefix, checked in order after the exact names above.
LICENSE_FAMILIES: tuple[tuple[str, str], ...] = (
    ("cc-by-nc", "Creative Commons non-commercial: no commercial use of the data or its derivatives"),
    ("cc-by-nd", "Creative Commons no-derivatives: adapted material (including generated sets) may not be shared"),
    ("creativeml-openrail", "OpenRAIL-M: use-based restrictions that every derivative and output user must follow"),
    ("bigscience-openrail", "OpenRAIL-M: use-based restrictions carried to derivatives"),
    ("bigcode-openrail", "OpenRAIL-M: use-based restrictions carried to derivatives"),
    ("openrail", "OpenRAIL: use-based restrictions carried to derivatives"),
    ("stabilityai-", "Stability AI license: restrictions on commercial use and on training other models"),
    ("llama", "Llama community license: acceptable-use policy and limits on improving other models"),
    ("gemma", "Gemma terms of use: prohibited-use policy carried to derivatives"),
)


def classify_license(license: Mapping[str, Any] | str | None) -> dict[str, str]:
    """Look a license up in the table: ``{"name", "status": permissive|restricted|unknown, "reason"}``.

    Names not in the table count as unknown (the warning says so), as do "unknown" and missing ones.
    """
    name = license_record(license)["name"]
    key = str(name).strip().lower().replace(" ", "-")
    if key in LICENSES:
        status, reason = LICENSES[key]
    elif any(key.startswith(prefix) for prefix, _ in LICENSE_FAMILIES):
        status, reason = RESTRICTED, next(r for p, r in LICENSE_FAMILIES if key.startswith(p))
    elif "non-commercial" in key or "noncommercial" in key:
        status, reason = RESTRICTED, "non-commercial terms"
    elif key in ("", "unknown", "none"):
        status, reason = UNKNOWN, "no license recorded: the terms for training and derivatives are unknown"
    else:
        status, reason = UNKNOWN, "not in imgsynth's license table (imgsynth.provenance.LICENSES): check its terms"
    return {"name": str(name), "status": status, "reason": reason}


def read_card_license(folder: str | Path) -> dict[str, Any] | None:
    """The license a Hugging Face style card or config in ``folder`` declares, or None.

    Looks, in order, at ``README.md`` YAML front matter (``license:``, and ``license_name`` /
    ``license_link`` when the license is ``other``), then ``model_index.json`` and ``config.json``.
    """
    folder = Path(folder)
    card = folder / "README.md"
    if card.is_file():
        meta = _front_matter(card.read_text(encoding="utf-8", errors="replace"))
        license = meta.get("license")
        if isinstance(license, list):
            license = license[0] if license else None
        if license:
            record: dict[str, Any] = {"name": str(license), "from": f"{card} front matter"}
            if str(license).lower() == "other" and meta.get("license_name"):
                record["name"] = str(meta["license_name"])
            if meta.get("license_link"):
                record["link"] = str(meta["license_link"])
            return record
    for config_name in ("model_index.json", "config.json"):
        config = folder / config_name
        if config.is_file():
            try:
                values = json.loads(config.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(values, dict) and values.get("license"):
                return {"name": str(values["license"]), "from": str(config)}
    return None


def _front_matter(text: str) -> dict[str, Any]:
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    import yaml

    try:
        values = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return values if isinstance(values, dict) else {}


def model_license(model_path: str | Path, license: str | None = None) -> dict[str, Any]:
    """The license record of a model: from its card metadata, else ``license`` (``--license``), else unknown.

    ``model_path`` is a local folder (a diffusers pipeline, a sub-model, a LoRA), a weights file inside
    one, or a Hub id already in the local Hugging Face cache (never downloaded). Generators store the
    result as ``generator["license"]`` so that ``imgsynth lineage`` can warn about it; a generator
    that names a model (``generator["model"]`` …) without a license is warned about as unknown. A
    model trained from random init on imgsynth sets records ``{"name": FROM_SCRATCH}``: its data's
    licenses are already in the lineage.
    """
    path = Path(model_path)
    folder = path.parent if path.is_file() else path
    # The folder itself, then its parent: a sub-model (unet/, a LoRA's checkpoint-N/) of a carded pipeline.
    folders = [folder, folder.parent]
    found = None
    for folder in folders:
        if folder.is_dir():
            found = read_card_license(folder)
            if found:
                break
    if found is None and not path.exists():
        found = _cached_hub_card_license(str(model_path))
    record: dict[str, Any] = {"model": str(model_path)}
    if found is not None:
        record.update(found)
        if license and license.strip().lower() != found["name"].lower():
            record["user_declared"] = license
    elif license:
        record.update(name=license, **{"from": "--license"})
    else:
        record.update(name="unknown", **{"from": "no license in the model card or config"})
    return record


def _cached_hub_card_license(repo_id: str) -> dict[str, Any] | None:
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ("README.md", "model_index.json"):
        cached = try_to_load_from_cache(repo_id, name)
        if isinstance(cached, str):
            record = read_card_license(Path(cached).parent)
            if record:
                return record
    return None


# --------------------------------------------------------------------------------------------- lineage

@dataclass
class LineageNode:
    """A set, a source of real data, or a parent that could not be read."""

    key: str
    kind: str
    path: str | None = None
    license: dict[str, Any] = field(default_factory=dict)
    generator: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    num_images: int | None = None
    parents: list[str] = field(default_factory=list)
    problem: str | None = None

    def label(self) -> str:
        if self.kind == "source":
            return f"{self.key}  ({self.path})  license {self.license.get('name', 'unknown')}"
        if self.problem:
            return f"{self.key[:12]}  {self.kind}  {self.path}  !! {self.problem}"
        parts = [f"{self.key[:12]}  {self.kind}", f"{self.num_images} images" if self.num_images else "",
                 self.path or "", f"license {self.license.get('name', 'unknown')}"]
        model = generator_model(self.generator)
        if self.generator:
            name = generator_name(self.generator) or "generator"
            gen_license = self.generator.get("license")
            gen = f"by {name}" + (f" from {model}" if model else "")
            if gen_license:
                gen += f" ({license_record(gen_license)['name']})"
            parts.append(gen)
        return "  ".join(p for p in parts if p)


@dataclass
class Lineage:
    """The graph of sets a set came from, back to the real sources, with license warnings."""

    root: str
    nodes: dict[str, LineageNode]
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def sources(self) -> list[LineageNode]:
        return [n for n in self.nodes.values() if n.kind == "source"]

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "nodes": [asdict(n) for n in self.nodes.values()],
                "sources": [n.key for n in self.sources], "warnings": self.warnings, "problems": self.problems}

    def render(self) -> str:
        """A text tree from the set back to its sources; a node reached twice is printed once."""
        lines: list[str] = []
        shown: set[str] = set()

        def walk(key: str, prefix: str, last: bool, top: bool) -> None:
            node = self.nodes[key]
            branch = "" if top else ("└── " if last else "├── ")
            again = key in shown and node.parents
            lines.append(prefix + branch + node.label() + ("  (see above)" if again else ""))
            if again:
                return
            shown.add(key)
            child_prefix = prefix + ("" if top else ("    " if last else "│   "))
            for i, parent in enumerate(node.parents):
                walk(parent, child_prefix, i == len(node.parents) - 1, False)

        walk(self.root, "", True, True)
        return "\n".join(lines)


def lineage(path: str | Path) -> Lineage:
    """Walk ``parents`` from the set at ``path`` back to its real-data sources.

    Parent paths are resolved relative to the child set's folder, so run folders can move. A parent
    that is missing, unreadable or replaced by a different set becomes a node with a ``problem``
    (and an entry in ``problems``); the walk never crashes on it. License warnings cover every
    source, every generator model and any set whose own license is restricted.
    """
    root_path = Path(path).absolute()
    manifest, problem = _read_manifest(root_path)
    if manifest is None:
        raise FileNotFoundError(f"{root_path}: {problem}")
    nodes: dict[str, LineageNode] = {}
    result = Lineage(root=manifest["id"], nodes=nodes)
    pending = [(root_path, manifest)]
    while pending:
        set_path, set_manifest = pending.pop()
        node = _set_node(set_path, set_manifest)
        if node.key in nodes:
            continue
        nodes[node.key] = node
        for entry in set_manifest.get("parents") or []:
            parent, parent_manifest = _parent_node(set_path, entry)
            node.parents.append(parent.key)
            if parent.problem:
                result.problems.append(f"{set_path / 'imageset.json'}: parent {parent.problem}")
            if parent_manifest is None:
                nodes.setdefault(parent.key, parent)
            else:
                pending.append((Path(parent.path), parent_manifest))
    result.warnings = _license_warnings(nodes)
    return result


def _read_manifest(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    manifest_path = path / "imageset.json"
    if not path.is_dir():
        return None, "no such ImageSet folder"
    if not manifest_path.is_file():
        return None, "no imageset.json (not a finished ImageSet)"
    from imgsynth.errors import ImageSetError
    from imgsynth.set_schema import manifest_problems, parse_json

    try:
        manifest = parse_json(manifest_path.read_bytes(), str(manifest_path))
    except ImageSetError as exc:
        return None, f"imageset.json: {str(exc).removeprefix(f'{manifest_path}: ')}"
    problems = manifest_problems(manifest)
    if problems:
        return None, f"imageset.json: {problems[0]}"
    return manifest, None


def _set_node(path: Path, manifest: Mapping[str, Any]) -> LineageNode:
    return LineageNode(key=manifest["id"], kind=manifest.get("kind", "?"), path=str(path),
                       license=license_record(manifest.get("license")),
                       generator=generator_record(manifest.get("generator")), created=manifest.get("created"),
                       num_images=manifest.get("num_images"))


def _parent_node(child: Path, entry: Mapping[str, Any]) -> tuple[LineageNode, dict[str, Any] | None]:
    """A finished node (a source, or a parent with a ``problem``) and None; or, for a readable parent
    set still to be walked, a stub node and that set's manifest."""
    parent_id = str(entry.get("id", "?"))
    if entry.get("kind") == "source" or parent_id.startswith("source:"):
        return LineageNode(key=parent_id, kind="source", path=str(entry.get("path", "")),
                           license=license_record(entry.get("license"))), None
    if not entry.get("path"):
        return LineageNode(key=f"missing:{parent_id}", kind="missing",
                           problem=f"{parent_id[:12]} records no path"), None
    parent_path = (child / entry["path"]).resolve()
    manifest, problem = _read_manifest(parent_path)
    if manifest is None:
        return LineageNode(key=f"missing:{parent_id}", kind="missing", path=str(parent_path),
                           problem=f"{parent_id[:12]} at {parent_path}: {problem}"), None
    if manifest["id"] != parent_id:
        return LineageNode(key=f"changed:{parent_id}", kind="changed", path=str(parent_path),
                           problem=f"{parent_id[:12]} at {parent_path}: the folder now holds a different set "
                                   f"({manifest['id'][:12]})"), None
    return LineageNode(key=parent_id, kind="set", path=str(parent_path)), manifest


def _license_warnings(nodes: Mapping[str, LineageNode]) -> list[str]:
    """One line per restricted or unknown license met on the way back to the sources."""
    warnings: list[str] = []

    def check(subject: str, license: Any, include_unknown: bool = True) -> None:
        verdict = classify_license(license)
        if verdict["status"] == RESTRICTED or (verdict["status"] == UNKNOWN and include_unknown):
            line = f"{subject} is licensed {verdict['name']!r} ({verdict['status']}): {verdict['reason']}"
            if line not in warnings:
                warnings.append(line)

    for node in nodes.values():
        if node.kind == "source":
            check(f"source {node.key} ({node.path})", node.license)
        elif node.problem is None:
            where = f"set {node.key[:12]} ({node.path})"
            model = generator_model(node.generator)
            if "license" in node.generator:
                check(f"model {model or '?'} used by {where}", node.generator["license"])
            elif model:
                check(f"model {model} used by {where}", None)
            # A derived set's own "unknown" or "mixed" record says nothing beyond its ancestors;
            # a set without parents is where the chain starts, so its license is the source's.
            name = str(node.license.get("name", "unknown")).lower()
            if not node.parents:
                check(f"{where}, which records no parents,", node.license)
            elif name not in ("unknown", "mixed"):
                check(where, node.license, include_unknown=False)
    return warnings


# --------------------------------------------------------------------------------------------- croissant

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


def croissant_metadata(image_set: Any, folder: str | Path | None = None) -> dict[str, Any]:
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
        from imgsynth.errors import ImageSetError

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


def _metadata_columns(records: Any) -> list[tuple[str, str]]:
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


def write_croissant(image_set: Any, out: str | Path | None = None) -> Path:
    """Write :func:`croissant_metadata` as JSON to ``out`` (default ``<set>/croissant.json``), atomically.

    ``out`` (a file, or a folder to hold ``croissant.json``) must be in the set's folder or a folder
    above it. An existing file is left alone when it already holds this description and refused
    otherwise, as the other exports refuse to write over anything.
    """
    from imgsynth.errors import ImageSetError
    from imgsynth.locking import folder_lock

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
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    return out
