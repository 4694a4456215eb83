"""Contamination audit: which images of a set or of any folder are synthetic, by the markers they carry and,
given known sets, by matching them exactly or approximately.

**Markers** (no reference needed; :mod:`imgsynth.provenance.markers`): a C2PA manifest (``valid``,
``invalid`` or ``unverifiable`` offline), an IPTC digital source type in the XMP metadata
(``trainedAlgorithmicMedia`` and its kin; imgsynth writes it into every generated PNG, with the generator
kind, weights sha256 and seed), and a known invisible watermark (imgsynth's, and the fixed message Stable
Diffusion XL pipelines embed). Each marker proves only that it is there: metadata can be stripped and
watermarks cropped or compressed away, so an unmarked image may still be synthetic.

**Known sets** (``against``, optional):

Known generated images are collected from ``against``: an ImageSet (with every set in its lineage,
walked through ``parents``) or a folder such as a run folder (every ImageSet below it, with their
lineages). An image of those sets counts as generated when its set has kind ``generated`` or its
metadata row names a ``generator`` (curated and mixed sets keep that column from their parents).

Every image audited is then matched:

* **exact**: its content sha256 (the PNG bytes, as in ``metadata.jsonl``) is a known generated
  image's, or its decoded pixels are identical to one (the same image encoded differently);
* **approximate**: its nearest known generated image in a perceptual space has cosine similarity
  ≥ ``threshold``. The default space, ``pixels:8``, is the image in grayscale resized with
  antialiasing to 8×8, mean-centred and scaled to unit length (see ``imgsynth.curation.similarity``):
  JPEG re-encoding and resizing by a pixel change it very little, while distinct images stay apart.
  On the embedded digits, real–real nearest neighbours reach 0.997 at most (6 of 1,797 above 0.995),
  and JPEG + one-pixel resized copies stay above 0.998, so the default threshold is 0.995; see
  benchmarks/README.md ("Curation and audit") for the measurement. Other datasets may need another
  threshold: ``imgsynth audit`` prints the distribution to choose one.

The report lists every image (CSV) and the synthetic share per class: an image is ``synthetic`` when any
marker or match says so. The audited path is an ImageSet (classes are its labels; bytes checked against its
metadata) or any folder of image files (classes are the first-level sub-folders).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from imgsynth.atomic_files import atomic_path
from imgsynth.errors import ImageSetError as _ImageSetError
from imgsynth.image_files import read_regular_file
from imgsynth.provenance.markers.reading import FileMarkers, read_markers
from imgsynth.provenance.markers.xmp import SYNTHETIC_SOURCE_TYPES
from imgsynth.curation.similarity import Extractor, as_numpy, nearest_neighbours, normalize_rows, resolve_embedding
from imgsynth.generator_record import generator_name, generator_record
from imgsynth.imageset import KINDS, MANIFEST, ImageSet, ImageSetError, ImageSetWriter, Sample
from imgsynth.provenance import lineage

DEFAULT_EMBEDDING = "pixels:8"
DEFAULT_THRESHOLD = 0.995
EXACT, APPROXIMATE, NONE = "exact", "approximate", "none"


@dataclass(frozen=True)
class KnownImage:
    """A generated image the audit knows about, and where it was found."""

    sha256: str
    set_id: str
    set_path: str
    file_name: str
    label: str
    generator: str
    generation: Any


@dataclass(frozen=True)
class AuditRow:
    """One image of the audited set and what it matched (the CSV columns, in order)."""

    file_name: str
    label: str
    sha256: str
    match: str  # exact | approximate | none
    evidence: str  # sha256 | pixels | similarity | ""
    similarity: float  # to the nearest known generated image (1.0 for exact copies)
    declared_generated: bool  # the audited set's own metadata says this image is generated
    known_set_id: str
    known_set_path: str
    known_file: str
    generator: str
    generation: Any
    # Markers found in the file itself (empty when absent), then the verdict.
    class_name: str = ""  # the CSV's ``class``: the label, or the first sub-folder of a folder
    c2pa: str = ""  # valid | invalid | unverifiable | ""
    c2pa_detail: str = ""
    iptc_source_type: str = ""  # the XMP DigitalSourceType's last path part (trainedAlgorithmicMedia, ...)
    watermark: str = ""  # imgsynth | sdxl | ""
    xmp_generator: str = ""  # imgsynth's XMP fields: generator kind, weights sha256, seed
    xmp_weights_sha256: str = ""
    xmp_seed: str = ""
    marker_set_id: str = ""  # a known set whose generator weights and image seed are the XMP's
    synthetic: bool = False
    problem: str = ""


# The CSV's column names: the row's fields, ``class_name`` written as ``class``.
CSV_COLUMNS = tuple("class" if f.name == "class_name" else f.name for f in fields(AuditRow))
MARKERS = ("c2pa", "iptc", "watermark")


def _marked(row: AuditRow, marker: str) -> bool:
    if marker == "c2pa":
        return bool(row.c2pa)
    if marker == "iptc":
        return bool(row.iptc_source_type) and row.iptc_source_type in {t.rsplit("/", 1)[-1]
                                                                      for t in SYNTHETIC_SOURCE_TYPES}
    return bool(row.watermark)


@dataclass
class AuditReport:
    """Every image's verdict, the known sets used and the settings; per-class summary and CSV."""

    target: str
    target_id: str
    embedding: str
    threshold: float
    known_sets: list[dict[str, Any]]
    known_images: int
    classes: list[str] = field(default_factory=list)
    rows: list[AuditRow] = field(default_factory=list)
    # Markers no reader was installed for: their columns are empty because nobody looked, not because none
    # was found, and the summary says so.
    not_checked: list[str] = field(default_factory=list)

    def per_class(self) -> list[dict[str, Any]]:
        """Per class (in the set's class order, then ``all``): images, images with each marker, exact and
        approximate matches, synthetic images (any marker or match), their share, unreadable files."""
        classes = list(dict.fromkeys([*self.classes, *(r.class_name for r in self.rows)]))
        table = []
        for name in [*classes, "all"]:
            members = [r for r in self.rows if name == "all" or r.class_name == name]
            counts = Counter(r.match for r in members)
            synthetic = sum(r.synthetic for r in members)
            table.append({"class": name, "images": len(members),
                          **{marker: sum(_marked(r, marker) for r in members) for marker in MARKERS},
                          "exact": counts[EXACT], "approximate": counts[APPROXIMATE], "synthetic": synthetic,
                          "share": synthetic / len(members) if members else 0.0,
                          "problems": sum(bool(r.problem) for r in members)})
        return table

    def summary(self) -> str:
        """A short text summary: what was searched, totals, and the synthetic share per class."""
        total = self.per_class()[-1]
        ident = f", id {self.target_id[:12]}" if self.target_id else ""
        lines = [f"audit of {self.target} ({total['images']} images{ident})",
                 f"known generated images: {self.known_images} from {len(self.known_sets)} set(s)"
                 if self.known_sets else "known generated images: none given (--against); markers only",
                 f"markers: C2PA {total['c2pa']}   IPTC/XMP {total['iptc']}   watermark {total['watermark']}   "
                 f"exact copies: {total['exact']}   approximate ({self.embedding} similarity ≥ "
                 f"{self.threshold:g}): {total['approximate']}   synthetic share: {total['share']:.1%}",
                 "", f"{'class':>12}  {'images':>6}  {'c2pa':>5}  {'iptc':>5}  {'wmark':>5}  {'exact':>5}  "
                     f"{'approx':>6}  {'synth':>5}  {'share':>6}"]
        for row in self.per_class():
            lines.append(f"{row['class'] or '(top)':>12}  {row['images']:>6}  {row['c2pa']:>5}  {row['iptc']:>5}  "
                         f"{row['watermark']:>5}  {row['exact']:>5}  {row['approximate']:>6}  {row['synthetic']:>5}  "
                         f"{row['share']:>6.1%}")
        if self.not_checked:
            lines += ["", "not looked for (their columns say nothing about these images):"]
            lines += [f"  {reason}" for reason in self.not_checked]
        troubled = [r for r in self.rows if r.problem]
        if troubled:
            lines += ["", f"{len(troubled)} file(s) could not be read in full (their other markers were still "
                          "looked for):"]
            lines += [f"  {r.file_name}: {r.problem}" for r in troubled]
        unmatched = np.asarray([r.similarity for r in self.rows if r.match == NONE], dtype=float)
        if len(unmatched) and self.known_images:
            q = np.quantile(unmatched, [0.5, 0.99, 1.0])
            lines += ["", f"unmatched images' nearest similarity: median {q[0]:.4f}, 99th percentile "
                          f"{q[1]:.4f}, max {q[2]:.4f} (threshold {self.threshold:g})"]
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike) -> Path:
        """One row per audited image with the columns of :class:`AuditRow`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            for row in self.rows:
                values = asdict(row)
                values["class"] = values.pop("class_name")
                values["similarity"] = f"{row.similarity:.6f}"
                writer.writerow(values)
        return path


# --------------------------------------------------------------------------------------------- known sets

def find_sets(against: Sequence[ImageSet | str | os.PathLike]) -> list[ImageSet]:
    """Every readable ImageSet named by ``against`` (sets, or folders holding sets) and in their lineages.

    Sets are returned once each (by id), generated sets first, then by path, so a known image is
    attributed to the set that generated it rather than to a later copy.
    """
    if not against:
        raise ValueError("audit needs at least one --against run folder or ImageSet")
    roots: list[Path] = []
    for entry in against:
        path = entry.root if isinstance(entry, ImageSet) else Path(entry)
        if (path / MANIFEST).is_file():
            roots.append(path)
        elif path.is_dir():
            found = sorted(p.parent for p in path.rglob(MANIFEST)
                           if not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise ValueError(f"{path}: no ImageSet (folder with {MANIFEST}) inside; not a run folder or a set")
            roots.extend(found)
        else:
            raise FileNotFoundError(f"{path}: no such run folder or ImageSet")
    sets: dict[str, ImageSet] = {}
    for root in roots:
        for node in lineage(root).nodes.values():
            if node.kind not in KINDS or not node.path or node.key in sets:
                continue
            try:
                sets[node.key] = ImageSet.open(node.path)
            except ImageSetError:
                continue  # lineage already reports unreadable parents; the audit uses what it can read
    return sorted(sets.values(), key=lambda s: (s.kind != "generated", str(s.root)))


def is_generated(image_set: ImageSet, index: int) -> bool:
    """Whether an image is generated by its set's own account: kind ``generated`` or a ``generator`` column."""
    return image_set.kind == "generated" or bool(image_set.records[index].extra.get("generator"))


def _generator_name(image_set: ImageSet, index: int) -> str:
    column = image_set.records[index].extra.get("generator")
    if column:
        return str(column)
    g = generator_record(image_set.manifest.get("generator"))
    return generator_name(g) or str(g.get("model") or "")


def known_generated_images(sets: Iterable[ImageSet], exclude: Iterable[str] = ()) -> list[tuple[KnownImage, ImageSet, int]]:
    """Distinct (by sha256) generated images of ``sets``, skipping sets whose id is in ``exclude``."""
    excluded = set(exclude)
    seen: set[str] = set()
    known = []
    for image_set in sets:
        if image_set.id in excluded:
            continue
        for i, record in enumerate(image_set.records):
            if record.sha256 in seen or not is_generated(image_set, i):
                continue
            seen.add(record.sha256)
            known.append((KnownImage(record.sha256, image_set.id, str(image_set.root), record.file_name,
                                     record.label, _generator_name(image_set, i),
                                     record.extra.get("generation")), image_set, i))
    return known


def pixel_hash(image: Image.Image) -> str:
    """sha256 of the decoded pixels (mode, size, bytes): equal for the same image encoded differently."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def scan_images(image_set: ImageSet, indices: Sequence[int], extractor: Extractor,
                batch_size: int = 256) -> tuple[np.ndarray, list[str]]:
    """Unit-length embeddings and pixel hashes of the images at ``indices``, decoding each image once."""
    features, hashes = [], []
    for start in range(0, len(indices), batch_size):
        images = [image_set.load_image(i) for i in indices[start:start + batch_size]]
        hashes.extend(pixel_hash(image) for image in images)
        features.append(as_numpy(extractor.extract(images)))
    if not features:
        return np.zeros((0, 1), dtype=np.float32), []
    return normalize_rows(np.concatenate(features)), hashes


# --------------------------------------------------------------------------------------------- audit

@dataclass
class _Target:
    """One file audited: where it is, its class, its bytes' hash, markers, and (while scanned) its image."""

    file_name: str
    label: str
    sha256: str = ""
    declared_generated: bool = False
    markers: FileMarkers = field(default_factory=FileMarkers)


def _image_suffixes() -> set[str]:
    return {ext.lower() for ext in Image.registered_extensions()}


def _target_files(target: ImageSet | Path) -> list[tuple[str, str, bool]]:
    """(file name relative to the target, class, declared generated) of every image audited, in order."""
    if isinstance(target, ImageSet):
        return [(r.file_name, r.label, is_generated(target, i)) for i, r in enumerate(target.records)]
    suffixes = _image_suffixes()
    found = []
    for path in sorted(target.rglob("*")):
        relative = path.relative_to(target)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in suffixes:
            continue
        if path.is_symlink() or not path.is_file():
            continue  # a folder audit reads regular files only, and never leaves the folder through a link
        found.append((relative.as_posix(), relative.parts[0] if len(relative.parts) > 1 else "", False))
    return found


def _read_target(target: ImageSet | Path, index: int, file_name: str, real_root: str,
                 folders: set[str]) -> tuple[bytes | None, str]:
    try:
        if isinstance(target, ImageSet):
            return target.read_bytes(index), ""
        return read_regular_file(target, file_name, real_root, folders), ""
    except (_ImageSetError, OSError) as exc:
        return None, str(exc).splitlines()[0][:300]


def audit(target: ImageSet | str | os.PathLike, against: Sequence[ImageSet | str | os.PathLike] = (), *,
          threshold: float = DEFAULT_THRESHOLD, embedding: str | Extractor = DEFAULT_EMBEDDING,
          batch_size: int = 256, watermarks: bool = True) -> AuditReport:
    """Every image of ``target`` (an ImageSet or any folder of images): its markers, and, when ``against``
    names known sets, its match among their generated images.

    Exact matches (sha256 or identical pixels) come first; the rest are approximate when their nearest known
    generated image in ``embedding`` space has cosine similarity ≥ ``threshold``. The audited set itself is
    never one of the known sets (its own generated images are reported in the ``declared_generated`` column
    instead). Raises ``ValueError`` when ``against`` is given but holds no generated image. A file that cannot
    be read is one row with its ``problem``, never an exception. ``watermarks``: decode watermarks (the
    slowest marker) too.
    """
    if not isinstance(target, ImageSet):
        path = Path(target)
        if (path / MANIFEST).is_file():
            target = ImageSet.open(path)
        elif not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder or ImageSet to audit")
        else:
            target = path.absolute()
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity and must lie in [-1, 1], got {threshold}")
    extractor = resolve_embedding(embedding)
    target_id = target.id if isinstance(target, ImageSet) else ""
    sets: list[ImageSet] = []
    known: list[tuple[KnownImage, ImageSet, int]] = []
    if against:
        sets = find_sets(against)
        known = known_generated_images(sets, exclude=[target_id])
        if not known:
            raise ValueError(f"no generated images found in {[str(getattr(a, 'root', a)) for a in against]} "
                             f"({len(sets)} set(s) read, none of kind 'generated' or with a 'generator' column)")
    by_sha = {k.sha256: n for n, (k, _, _) in enumerate(known)}
    by_seed: dict[tuple[str, str], str] = {}  # (weights sha256, image seed) -> set id, for the XMP fields
    for k, image_set, i in known:
        weights = generator_record(image_set.manifest.get("generator")).get("weights_sha256")
        seed = image_set.records[i].seed
        if weights and seed is not None:
            by_seed.setdefault((str(weights), str(seed)), k.set_id)
    if known:
        known_features, known_hashes = _scan_known(known, extractor, batch_size)
    else:
        known_features, known_hashes = np.zeros((0, 1), dtype=np.float32), []
    by_pixels: dict[str, int] = {}
    for n, digest in enumerate(known_hashes):
        by_pixels.setdefault(digest, n)

    root = target.root if isinstance(target, ImageSet) else target
    real_root, folders = os.path.realpath(root), set()
    files = _target_files(target)
    rows: list[AuditRow] = []
    for start in range(0, len(files), batch_size):
        batch: list[_Target] = []
        for index in range(start, min(start + batch_size, len(files))):
            file_name, label, declared = files[index]
            data, problem = _read_target(target, index, file_name, real_root, folders)
            item = _Target(file_name, label, declared_generated=declared)
            if data is None:
                item.markers.problems.append(problem)
            else:
                item.sha256 = hashlib.sha256(data).hexdigest()
                item.markers = read_markers(data, watermark=watermarks)
            batch.append(item)
        decoded = [n for n, item in enumerate(batch) if item.markers.image is not None]
        features = np.zeros((len(batch), known_features.shape[1]), dtype=np.float32)
        hashes = [""] * len(batch)
        if known and decoded:
            images = [batch[n].markers.image for n in decoded]
            embedded = normalize_rows(as_numpy(extractor.extract(images)))
            for n, row in zip(decoded, embedded):
                features[n] = row
                hashes[n] = pixel_hash(batch[n].markers.image)
        nearest, similarity = (nearest_neighbours(features, known_features) if known
                               else (np.zeros(len(batch), dtype=int), np.zeros(len(batch))))
        for n, item in enumerate(batch):
            rows.append(_row(item, known, by_sha, by_pixels, by_seed, int(nearest[n]),
                             float(similarity[n]) if item.markers.image is not None else 0.0, hashes[n], threshold))
            item.markers.image = None  # one batch of images in memory at a time
    return AuditReport(target=str(root), target_id=target_id, embedding=extractor.id, threshold=threshold,
                       known_sets=[{"id": s.id, "path": str(s.root), "kind": s.kind} for s in sets
                                   if s.id != target_id],
                       known_images=len(known),
                       classes=target.classes if isinstance(target, ImageSet) else [], rows=rows,
                       not_checked=unread_markers(watermarks))


def unread_markers(watermarks: bool = True) -> list[str]:
    """The markers this installation cannot look for, each with the extra that adds its reader."""
    from imgsynth.provenance.markers import c2pa_signing, watermark

    missing = []
    if not c2pa_signing.available():
        missing.append("C2PA manifests: c2pa-python is not installed (pip install 'imgsynth[c2pa]')")
    if watermarks and not watermark.available():
        missing.append("invisible watermarks: invisible-watermark is not installed (pip install 'imgsynth[watermark]')")
    return missing


def _row(item: _Target, known: Sequence[tuple[KnownImage, ImageSet, int]], by_sha: dict[str, int],
         by_pixels: dict[str, int], by_seed: dict[tuple[str, str], str], hit: int, sim: float, digest: str,
         threshold: float) -> AuditRow:
    match, evidence = NONE, ""
    if known:
        if item.sha256 in by_sha:
            match, evidence, hit, sim = EXACT, "sha256", by_sha[item.sha256], 1.0
        elif digest and (pixels := by_pixels.get(digest)) is not None:
            match, evidence, hit, sim = EXACT, "pixels", pixels, 1.0
        elif item.markers.image is not None and sim >= threshold:
            match, evidence = APPROXIMATE, "similarity"
    k = known[hit][0] if known else None
    markers = item.markers
    ours = markers.imgsynth
    source = markers.xmp.digital_source_type if markers.xmp is not None else None
    if source is None and markers.c2pa is not None:
        source = markers.c2pa.digital_source_type
    marker_set = by_seed.get((ours.get("weightsSha256", ""), ours.get("seed", "")), "")
    return AuditRow(item.file_name, item.label, item.sha256, match, evidence, round(sim, 6) if known else 0.0,
                   item.declared_generated, k.set_id if k else "", k.set_path if k else "",
                   k.file_name if k else "", k.generator if k else "", k.generation if k else None,
                   class_name=item.label, c2pa=markers.c2pa.state if markers.c2pa is not None else "",
                   c2pa_detail=markers.c2pa.detail if markers.c2pa is not None else "",
                   iptc_source_type=(source or "").rsplit("/", 1)[-1],
                   watermark=(markers.watermark.name or "") if markers.watermark is not None else "",
                   xmp_generator=ours.get("generatorKind", ""), xmp_weights_sha256=ours.get("weightsSha256", ""),
                   xmp_seed=ours.get("seed", ""), marker_set_id=marker_set,
                   synthetic=match != NONE or markers.synthetic or bool(marker_set),
                   problem="; ".join(markers.problems))


def _scan_known(known: Sequence[tuple[KnownImage, ImageSet, int]], extractor: Extractor,
                batch_size: int) -> tuple[np.ndarray, list[str]]:
    """Embeddings and pixel hashes of the known images, one set at a time, in ``known`` order."""
    by_set: dict[str, list[int]] = {}
    for n, (k, _, _) in enumerate(known):
        by_set.setdefault(k.set_id, []).append(n)
    features: list[np.ndarray] = [np.empty(0)] * len(known)
    hashes = [""] * len(known)
    for positions in by_set.values():
        image_set = known[positions[0]][1]
        rows, digests = scan_images(image_set, [known[n][2] for n in positions], extractor, batch_size)
        for n, row, digest in zip(positions, rows, digests):
            features[n], hashes[n] = row, digest
    return np.stack(features), hashes


# --------------------------------------------------------------------------------------------- calibration

def perturb(image: Image.Image, jpeg_quality: int = 75, resize_by: int = 1,
            resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """What a copy meets on the way: a JPEG round trip at ``jpeg_quality``, then a resize by ``resize_by`` px."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=jpeg_quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        copy = decoded.convert(image.mode)
    width, height = copy.size
    return copy.resize((width + resize_by, height + resize_by), resample)


def contaminated_set(real: ImageSet, generated: ImageSet, out: str | os.PathLike, *, exact: int, perturbed: int,
                     seed: int = 0, jpeg_qualities: Sequence[int] = (50, 75, 90),
                     resize_by: Sequence[int] = (1, -1),
                     resample: Image.Resampling = Image.Resampling.BICUBIC) -> ImageSet:
    """A set with known ground truth, to measure the audit (or choose a threshold) on your own data.

    It holds every image of ``real``, ``exact`` byte-identical copies of generated images and
    ``perturbed`` generated images passed through :func:`perturb` (cycling through the JPEG
    qualities and resizes, with the ``resample`` filter), drawn without overlap with a seeded generator. The ``audit_truth``
    column says which is which (``real`` / ``exact`` / ``perturbed``) and ``audit_source`` names
    the generated file a copy came from. Copies carry no ``generator`` column: like scraped data,
    they do not declare where they came from.
    """
    if exact + perturbed > len(generated):
        raise ValueError(f"{generated.root}: {exact} + {perturbed} copies asked for, the set has {len(generated)}")
    chosen = np.random.default_rng(seed).permutation(len(generated))[:exact + perturbed]
    classes = list(dict.fromkeys([*real.classes, *generated.classes]))
    writer = ImageSetWriter(out, classes, kind="mixed", parents=[real, generated],
                            config={"audit_calibration": {"exact": exact, "perturbed": perturbed, "seed": seed,
                                                          "jpeg_qualities": list(jpeg_qualities),
                                                          "resize_by": list(resize_by),
                                                          "resample": Image.Resampling(resample).name}})

    def samples() -> Iterable[Sample]:
        for i, record in enumerate(real.records):
            yield Sample(real.read_bytes(i), record.label, record.caption, image_id=f"real-{i:06d}",
                         extra={"audit_truth": "real", "audit_source": record.file_name})
        for n, g in enumerate(chosen.tolist()):
            record = generated.records[g]
            if n < exact:
                image: Image.Image | bytes = generated.read_bytes(g)
                truth = "exact"
            else:
                m = n - exact
                image = perturb(generated.load_image(g), jpeg_qualities[m % len(jpeg_qualities)],
                                resize_by[(m // len(jpeg_qualities)) % len(resize_by)], resample)
                truth = "perturbed"
            yield Sample(image, record.label, record.caption, image_id=f"{truth}-{n:06d}",
                         extra={"audit_truth": truth, "audit_source": record.file_name})

    writer.write_all(samples())
    return writer.finalize()


__all__ = ["CSV_COLUMNS", "AuditReport", "AuditRow", "KnownImage", "audit", "contaminated_set", "find_sets",
           "known_generated_images", "perturb", "DEFAULT_EMBEDDING", "DEFAULT_THRESHOLD"]
