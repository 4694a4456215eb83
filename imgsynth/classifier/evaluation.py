"""Scoring a classifier on a labeled set: accuracy, per-class accuracy, macro-F1 and the confusion matrix.

Trained on generated data and scored on real test data this is the Classification Accuracy Score (CAS,
Ravuri & Vinyals, 2019). Classes are matched by name, never by index, so the two sets may list their
classes in different orders.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from imgsynth.atomic_files import atomic_path
from imgsynth.classifier.architectures import ClassifierError
from imgsynth.classifier.checkpoint import LoadedClassifier, load_classifier
from imgsynth.classifier.inference import predict
from imgsynth.imageset import ImageSet

REPORT = "report.json"
CONFUSION_CSV = "confusion.csv"
CONFUSION_PNG = "confusion.png"


@dataclass
class ClassifierReport:
    """Scores of one classifier on one test set.

    ``confusion[i, j]`` counts test images of ``classes[i]`` predicted as ``classes[j]`` (classifier's class
    order). ``per_class_accuracy`` (recall) covers the classes present in the test set; macro-F1 averages
    the F1 of those classes, since F1 of a class with no test images is undefined.
    """

    accuracy: float
    per_class_accuracy: dict[str, float]
    macro_f1: float
    confusion: np.ndarray
    classes: list[str]
    missing_classes: list[str]
    n: int
    per_class_f1: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
    test_set: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n": self.n, "classes": self.classes,
                "missing_classes": self.missing_classes, "per_class_accuracy": self.per_class_accuracy,
                "per_class_f1": self.per_class_f1, "confusion": self.confusion.tolist(),
                "checkpoint": self.checkpoint, "test_set": self.test_set}


def classification_scores(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict[str, Any]:
    """Confusion matrix, accuracy, per-class recall and F1, and macro-F1 over the classes present in ``y_true``.

    Returns a dict with ``confusion`` (K×K int64, rows true), ``accuracy``, ``present`` (class indices with
    support), ``recall`` and ``f1`` (arrays over all K, NaN where a class has no support) and ``macro_f1``.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"need two equal-length, non-empty label vectors, got {y_true.shape} and {y_pred.shape}")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} holds labels outside 0..{num_classes - 1}")
    confusion = np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    true_positive = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = np.flatnonzero(support)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, true_positive / support, np.nan)
        # F1 = 2TP / (2TP + FP + FN); its denominator is positive for every present class.
        f1 = np.where(support > 0, 2 * true_positive / (support + predicted), np.nan)
    return {"confusion": confusion, "accuracy": float(true_positive.sum() / len(y_true)), "present": present,
            "recall": recall, "f1": f1, "macro_f1": float(f1[present].mean())}


def labels_by_name(classifier: LoadedClassifier, test_set: ImageSet) -> np.ndarray:
    """The test set's labels as indices into the classifier's classes, matched by name."""
    known = {name: i for i, name in enumerate(classifier.classes)}
    counts = test_set.counts
    unknown = [c for c in test_set.classes if counts.get(c, 0) > 0 and c not in known]
    if unknown:
        raise ClassifierError(f"{test_set.root}: test classes {unknown} are unknown to the classifier "
                              f"{classifier.path} (trained on {classifier.classes}); class lists must match by name")
    return np.array([known[record.label] for record in test_set.records], dtype=np.int64)


def evaluate_classifier(checkpoint: str | os.PathLike | LoadedClassifier, test_set: ImageSet | str | os.PathLike,
                        out_dir: str | os.PathLike | None = None, batch_size: int = 256) -> ClassifierReport:
    """Score a classifier on a labeled set; with ``out_dir``, also write report.json, confusion.csv and .png.

    A test class the classifier does not know is an error naming it; classifier classes absent from the
    test set are listed in ``missing_classes``.
    """
    classifier = load_classifier(checkpoint)
    if not isinstance(test_set, ImageSet):
        test_set = ImageSet.open(test_set)
    y_true = labels_by_name(classifier, test_set)
    y_pred, _ = predict(classifier, test_set, batch_size=batch_size)
    scores = classification_scores(y_true, y_pred, len(classifier.classes))
    present = set(scores["present"].tolist())
    report = ClassifierReport(
        accuracy=scores["accuracy"],
        per_class_accuracy={c: float(scores["recall"][i]) for i, c in enumerate(classifier.classes) if i in present},
        macro_f1=scores["macro_f1"],
        confusion=scores["confusion"],
        classes=list(classifier.classes),
        missing_classes=[c for i, c in enumerate(classifier.classes) if i not in present],
        n=len(y_true),
        per_class_f1={c: float(scores["f1"][i]) for i, c in enumerate(classifier.classes) if i in present},
        checkpoint=str(classifier.path) if classifier.path else None,
        test_set={"id": test_set.id, "path": str(test_set.root), "kind": test_set.kind},
    )
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def write_report(report: ClassifierReport, out_dir: str | os.PathLike) -> Path:
    """Write report.json, confusion.csv (rows true, columns predicted) and confusion.png into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    with open(out / CONFUSION_CSV, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true\\predicted", *report.classes])
        for name, row in zip(report.classes, report.confusion.tolist()):
            writer.writerow([name, *row])
    plot_confusion(report, out / CONFUSION_PNG)
    return out


def plot_confusion(report: ClassifierReport, path: Path) -> None:
    """Row-normalised confusion matrix (recall per cell) with counts written in when the matrix is small."""
    # A bare Figure (Agg canvas for PNG), never pyplot: a notebook's backend and figure list stay as they were.
    from matplotlib.figure import Figure

    k = len(report.classes)
    support = report.confusion.sum(axis=1, keepdims=True)
    rates = np.divide(report.confusion, support, out=np.zeros(report.confusion.shape), where=support > 0)
    side = min(12.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if k <= 30:
        ax.set_xticks(range(k), report.classes, rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), report.classes)
        for i in range(k):
            for j in range(k):
                if report.confusion[i, j]:
                    ax.text(j, i, str(report.confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {report.accuracy:.3f} · macro-F1 {report.macro_f1:.3f} · n={report.n}")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
