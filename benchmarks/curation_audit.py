"""Curation and audit: the numbers behind the audit's feature space and threshold, and the dedup thresholds.

Run: ``python benchmarks/curation_audit.py [--model DIR] [--classifier DIR] [--work DIR]``

Tables printed (all on the embedded UCI digits at 16 px, offline, CPU):

1. Real–real nearest neighbours: how close distinct real digits get, per feature space.
2. Copies: how close an image stays to its JPEG re-encoded, one-pixel resized copy, per perturbation.
3. Audit on contaminated sets with known ground truth (real held-out digits + exact copies + perturbed
   copies of generated images), for two generators: a rotation stand-in and the class-conditional
   diffusion model (``digits16-cpu``, trained here unless ``--model`` is given). imgsynth's
   ``pixels:8`` correlation is compared side by side with the reference perceptual hash, pHash
   (imagehash's algorithm: 32×32 grayscale, 2-D DCT, 8×8 low band against its median, 64 bits;
   Hamming distance), re-implemented here with scipy.
4. Search speed: imgsynth's chunked ``nearest_neighbours`` against scikit-learn's brute-force
   ``NearestNeighbors(metric="cosine")`` on the same vectors (identical answers checked).
5. Dedup: the fraction of real digits (no planted copies) each threshold would drop, per embedding,
   to choose thresholds that remove copies rather than ordinary same-class variation.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

from imgsynth.audit import audit, contaminated_set, perturb
from imgsynth.curation import PixelEmbedding, greedy_dedup, nearest_neighbours
from imgsynth.curation.similarity import embed_images, resolve_embedding
from imgsynth.imageset import ImageSet, ImageSetWriter, Sample
from imgsynth.sources import import_source

R = Image.Resampling


def phash_bits(image: Image.Image) -> np.ndarray:
    """imagehash.phash: 32×32 grayscale (LANCZOS), 2-D DCT-II, 8×8 low band > its median → 64 bits."""
    pixels = np.asarray(image.convert("L").resize((32, 32), R.LANCZOS), dtype=np.float64)
    low = dctn(pixels, type=2, norm=None)[:8, :8]
    return (low > np.median(low)).ravel()


def hamming_min(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    q, r = queries.astype(np.int16), references.astype(np.int16)
    distances = q.sum(1, keepdims=True) + r.sum(1)[None] - 2 * (q @ r.T)
    return distances.min(axis=1)


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")


def real_neighbours(images: list[Image.Image]) -> None:
    rows = []
    for size in (8, 16):
        x = PixelEmbedding(size).extract(images)
        sims = x @ x.T - 2 * np.eye(len(x), dtype=np.float32)
        nn = sims.max(axis=1)
        q = np.quantile(nn, [0.5, 0.99, 0.999, 1.0])
        rows.append([f"pixels:{size} cosine", *map(float, q), int((nn >= 0.995).sum())])
    q16 = np.stack([phash_bits(i) for i in images]).astype(np.int16)
    dist = q16.sum(1, keepdims=True) + q16.sum(1)[None] - 2 * (q16 @ q16.T)
    np.fill_diagonal(dist, 999)
    nn_d = dist.min(axis=1)
    rows.append(["pHash Hamming (lower = closer)", *map(float, np.quantile(nn_d, [0.5, 0.01, 0.001, 0.0])),
                 f"{int((nn_d <= 4).sum())} (≤4 bits)"])
    table(f"1. Real–real nearest neighbours ({len(images)} digits)",
          ["feature", "median", "99th pct", "99.9th pct", "max", "images ≥ 0.995"], rows)


def copy_similarity(images: list[Image.Image]) -> None:
    embed = PixelEmbedding(8)
    x = embed.extract(images)
    bits = np.stack([phash_bits(i) for i in images])
    rows = []
    for quality in (50, 75, 95):
        for resize_by in (1, -1):
            for name, resample in (("bicubic (PIL default)", R.BICUBIC), ("bilinear", R.BILINEAR),
                                   ("lanczos", R.LANCZOS), ("nearest", R.NEAREST)):
                copies = [perturb(i, quality, resize_by, resample) for i in images]
                y = embed.extract(copies)
                sims = (x * y).sum(axis=1)
                hb = np.stack([phash_bits(c) for c in copies])
                ham = (bits != hb).sum(axis=1)
                rows.append([quality, f"{resize_by:+d}", name, float(sims.min()), float(np.quantile(sims, 0.01)),
                             int(ham.max()), float(np.quantile(ham, 0.99))])
    table("2. Image vs its perturbed copy (JPEG quality, resize by ±1 px, filter)",
          ["JPEG q", "resize", "filter", "pixels:8 min", "pixels:8 1st pct", "pHash max bits",
           "pHash 99th pct"], rows)


def rotation_generator(train: ImageSet, out: Path, n: int = 600) -> ImageSet:
    angles = np.random.default_rng(0).uniform(-15, 15, size=len(train))
    writer = ImageSetWriter(out, train.classes, kind="generated", generator={"pipeline": "rotation-stand-in"})
    writer.write_all(Sample(train.load_image(i).rotate(float(angles[i]), resample=R.BICUBIC), train.records[i].label,
                            seed=i, extra={"generator": "rotation"}) for i in range(n))
    return writer.finalize()


def conditional_samples(train: ImageSet, work: Path, model: Path | None) -> ImageSet:
    from imgsynth.pipelines import conditional

    if model is None:
        model = work / "model"
        if not conditional.is_model_dir(model):
            t0 = time.perf_counter()
            conditional.train(train, model, conditional.preset("digits16-cpu", seed=0), progress=False)
            print(f"(trained digits16-cpu in {time.perf_counter() - t0:.0f}s)")
    return conditional.sample(model, work / "conditional-samples", 100, seed=0, progress=False)


def score(report, mixed: ImageSet, threshold_note: str) -> list[object]:
    truth = {r.file_name: r.extra["audit_truth"] for r in mixed.records}
    exact = [r for r in report.rows if truth[r.file_name] == "exact"]
    flagged = {r.file_name for r in report.rows if r.match == "approximate"}
    perturbed = {n for n, t in truth.items() if t == "perturbed"}
    tp = len(flagged & perturbed)
    real_flagged = sum(1 for r in report.rows if truth[r.file_name] == "real" and r.match != "none")
    return [threshold_note, f"{sum(r.match == 'exact' for r in exact)}/{len(exact)}",
            float(tp / len(perturbed)), float(tp / max(1, len(flagged))), real_flagged]


def phash_score(mixed: ImageSet, generated: ImageSet, max_bits: int) -> list[object]:
    truth = [r.extra["audit_truth"] for r in mixed.records]
    known_sha = {r.sha256 for r in generated.records}
    bits_known = np.stack([phash_bits(generated.load_image(i)) for i in range(len(generated))])
    bits = np.stack([phash_bits(mixed.load_image(i)) for i in range(len(mixed))])
    nearest = hamming_min(bits, bits_known)
    exact = [r.sha256 in known_sha for r in mixed.records]
    flagged = [(d <= max_bits) and not e for d, e in zip(nearest, exact)]
    perturbed = [t == "perturbed" for t in truth]
    tp = sum(f and p for f, p in zip(flagged, perturbed))
    real_flagged = sum(f for f, t in zip(flagged, truth) if t == "real")
    return [f"pHash ≤ {max_bits} bits (reference)", f"{sum(e for e, t in zip(exact, truth) if t == 'exact')}/"
            f"{truth.count('exact')}", float(tp / sum(perturbed)), float(tp / max(1, sum(flagged))), real_flagged]


def audit_tables(train: ImageSet, test: ImageSet, work: Path, model: Path | None) -> None:
    generators = {"rotation stand-in": rotation_generator(train, work / "rotation")}
    try:
        generators["conditional digits16-cpu"] = conditional_samples(train, work, model)
    except ImportError as exc:  # the generator is optional for this benchmark
        print(f"(conditional generator unavailable: {exc})")
    rows = []
    for name, generated in generators.items():
        for label, resample in (("bicubic", R.BICUBIC), ("nearest", R.NEAREST)):
            mixed = _mixed(test, generated, work / f"mixed-{name.split()[0]}-{label}", resample)
            t0 = time.perf_counter()
            report = audit(mixed, [generated])
            seconds = time.perf_counter() - t0
            rows.append([name, label, *score(report, mixed, "pixels:8 ≥ 0.995"),
                         f"{(len(mixed) + len(generated)) / seconds:.0f} img/s"])
            for bits in (4, 8):
                rows.append([name, label, *phash_score(mixed, generated, bits), ""])
            for threshold in (0.99, 0.997):
                report = audit(mixed, [generated], threshold=threshold)
                rows.append([name, label, *score(report, mixed, f"pixels:8 ≥ {threshold}"), ""])
    table("3. Audit on contaminated sets: 359 real held-out digits + 100 exact + 240 JPEG(50/75/90) ±1 px copies",
          ["generator", "resize filter", "matcher", "exact found", "approx recall", "approx precision",
           "real images flagged", "speed"], rows)


def _mixed(test: ImageSet, generated: ImageSet, out: Path, resample: Image.Resampling) -> ImageSet:
    return contaminated_set(test, generated, out, exact=100, perturbed=240, seed=1, resample=resample)


def search_speed() -> None:
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    rows = []
    for n_query, n_ref, dim in ((2000, 20000, 64), (5000, 50000, 64)):
        q = rng.normal(size=(n_query, dim)).astype(np.float32)
        r = rng.normal(size=(n_ref, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        r /= np.linalg.norm(r, axis=1, keepdims=True)
        t0 = time.perf_counter()
        index, _ = nearest_neighbours(q, r)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        reference = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(r).kneighbors(q)[1][:, 0]
        theirs = time.perf_counter() - t0
        rows.append([f"{n_query} × {n_ref} × {dim}", f"{ours:.2f}s", f"{theirs:.2f}s",
                     f"{(index == reference).mean():.4f}"])
        x = np.concatenate([r[:5000], r[:500] + 0.01 * rng.normal(size=(500, dim)).astype(np.float32)])
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        t0 = time.perf_counter()
        kept, _, _ = greedy_dedup(x, 0.99)
        rows.append([f"greedy_dedup {len(x)} × {dim}", f"{time.perf_counter() - t0:.2f}s", "",
                     f"dropped {int((~kept).sum())} of 500 planted"])
    table("4. Search speed: chunked nearest_neighbours vs scikit-learn brute force (same answers)",
          ["size", "imgsynth", "scikit-learn", "agreement"], rows)


def dedup_rates(train: ImageSet, classifier: Path | None) -> None:
    spaces = ["pixels:8", "pixels:16"] + ([f"domain:{classifier}"] if classifier else [])
    thresholds = (0.9, 0.95, 0.98, 0.99, 0.995)
    rows = []
    labels = np.asarray(train.labels)
    for space in spaces:
        x = embed_images(train, resolve_embedding(space))
        fractions = []
        for threshold in thresholds:
            dropped = sum(int((~greedy_dedup(x[labels == c], threshold)[0]).sum()) for c in np.unique(labels))
            fractions.append(float(dropped / len(train)))
        rows.append([space.split(":")[0] if space.startswith("domain") else space, *fractions])
    table(f"5. Dedup: fraction of the {len(train)} real training digits dropped (within class)",
          ["embedding", *[f"≥ {t}" for t in thresholds]], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a trained conditional model dir (default: train one)")
    parser.add_argument("--classifier", type=Path, help="a classifier checkpoint for the domain dedup row")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="imgsynth-bench-"))
    train, test = import_source("digits", work / "digits", size=16, test_fraction=0.2, seed=0)
    everything = [train.load_image(i) for i in range(len(train))] + [test.load_image(i) for i in range(len(test))]
    real_neighbours(everything)
    copy_similarity(everything)
    audit_tables(train, test, work, args.model)
    search_speed()
    classifier = args.classifier
    if classifier is None:
        try:
            from imgsynth.classifier import ClassifierConfig, train_classifier

            classifier = work / "classifier"
            if not (classifier / "classifier.json").is_file():
                train_classifier(train, classifier, ClassifierConfig(epochs=4, seed=0), progress=False)
        except ImportError:
            classifier = None
    dedup_rates(train, classifier)


if __name__ == "__main__":
    main()
