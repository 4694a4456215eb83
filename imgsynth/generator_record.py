"""The manifest's ``generator`` field: one type, one spelling per field, and the one reader of old spellings.

Every generator writes ``GeneratorRecord(...).to_dict()``: ``kind`` (the registry's name for the generator,
e.g. ``conditional``, ``text2image``, ``gaussian``), ``pipeline`` (the class that made the images),
``model_path`` (where the model was read from; a Hub id when it is not local), ``weights_sha256`` (the
denoiser's or fitted model's weights), ``seed`` (the job's base seed) and the kind's own sampling settings
(steps, guidance, sampler, options, …) as further keys. Sets written before this type spelled some of these
differently (``weights_hash``; ``pipeline_class``, ``name`` or ``class`` for the pipeline; no ``kind``;
``model_id``, ``pretrained``, ``base_model`` … for the model);
:func:`generator_record` reads either, so every reader of the field (resuming, lineage, audit, Croissant)
goes through it and never guesses among spellings itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

IDENTITY_FIELDS = ("kind", "pipeline", "model_path", "weights_sha256", "seed")
# Old spelling -> the one spelling, for the identity fields (sets written before GeneratorRecord).
OLD_SPELLINGS = {"weights_hash": "weights_sha256", "pipeline_class": "pipeline", "class": "pipeline"}
# Other spellings of the model a record names (other tools' sets, hand-written manifests) -> ``model``.
MODEL_SPELLINGS = ("model_id", "pretrained", "base_model", "pretrained_model_name_or_path")
# What old records' pipeline names mean as registry kinds.
KIND_OF_PIPELINE = {"ClassConditionalDiffusion": "conditional", "GaussianGenerator": "gaussian",
                    "KdeGenerator": "kde"}


@dataclass(frozen=True)
class GeneratorRecord:
    """What made a generated set (see the module docstring); ``settings`` are the kind's other fields."""

    kind: str
    pipeline: str
    model_path: str | None = None
    weights_sha256: str | None = None
    seed: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON object: the identity fields first, then the settings (which may not reuse them)."""
        clash = sorted(set(self.settings) & (set(IDENTITY_FIELDS) | set(OLD_SPELLINGS)))
        if clash:
            raise ValueError(f"generator settings {clash} would shadow the record's own fields")
        return {"kind": self.kind, "pipeline": self.pipeline, "model_path": self.model_path,
                "weights_sha256": self.weights_sha256, "seed": self.seed, **dict(self.settings)}


def generator_record(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """A manifest's ``generator`` field in the one spelling, whichever version wrote it (empty for none).

    Old records: ``weights_hash`` becomes ``weights_sha256``; ``pipeline_class`` / ``class`` become
    ``pipeline``; a text-to-image record's ``name: "text2image"`` becomes ``kind``; a missing ``kind`` is
    read from the pipeline name where it is one imgsynth wrote. Other keys are kept as they are.
    """
    if not stored:
        return {}
    record = dict(stored)
    for old, new in OLD_SPELLINGS.items():
        if old in record:
            value = record.pop(old)
            record.setdefault(new, value)
    if "kind" not in record:
        name = record.get("name")
        if name == "text2image":
            record.pop("name")
            record["kind"] = "text2image"
        else:
            record["kind"] = KIND_OF_PIPELINE.get(str(record.get("pipeline") or name or ""), "")
    if "pipeline" not in record:
        record["pipeline"] = str(record.pop("name", "") or "")
    for old in MODEL_SPELLINGS:
        if old in record:
            value = record.pop(old)
            record.setdefault("model", value)
    return record


def generator_model(stored: Mapping[str, Any] | None) -> str | None:
    """The model a set's generator names: the id or path the user gave (``model``), else where it was read."""
    record = generator_record(stored)
    found = record.get("model") or record.get("model_path")
    return str(found) if found else None


def generator_name(stored: Mapping[str, Any] | None) -> str:
    """What to call a set's generator in messages and reports: its pipeline, else its kind, else ''."""
    record = generator_record(stored)
    return str(record.get("pipeline") or record.get("kind") or "")
