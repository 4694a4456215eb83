"""The lineage graph: the sets a set came from, back to its real-data sources, with license warnings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from imgsynth.errors import ImageSetError
from imgsynth.generator_record import generator_model, generator_name, generator_record
from imgsynth.provenance.licenses import RESTRICTED, UNKNOWN, classify_license, license_record
from imgsynth.set_schema import manifest_problems, parse_json


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
