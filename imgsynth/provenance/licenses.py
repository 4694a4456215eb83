"""Licenses: normalised records, the table that says what a license means for training, and the
license a model's card or config declares."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from imgsynth.structured_files import LimitExceeded, StructuredFileError, front_matter, read_card, read_json


def license_record(value: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """Normalise a license given as a name, a record or nothing ("unknown") into a record."""
    if value is None:
        return {"name": "unknown"}
    if isinstance(value, str):
        return {"name": value.strip() or "unknown"}
    record = dict(value)
    record.setdefault("name", "unknown")
    return record


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
        meta = _front_matter(card)
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
                values = read_json(config)
            except LimitExceeded:
                raise  # a bomb or a FIFO is refused, naming the file
            except StructuredFileError:
                continue  # a malformed config declares no license
            if isinstance(values, dict) and values.get("license"):
                return {"name": str(values["license"]), "from": str(config)}
    return None


def _front_matter(card: Path) -> dict[str, Any]:
    """A card's YAML front matter as a mapping ({} when it has none or it is malformed); a card past the
    reader's limits (size, nesting, an alias bomb) or one that is no regular file is refused naming it."""
    try:
        values = front_matter(read_card(card), str(card))
    except LimitExceeded:
        raise
    except StructuredFileError:
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
