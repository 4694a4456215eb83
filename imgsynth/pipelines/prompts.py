"""Class prompt banks (TOML) and reproducible, varied captions for text-to-image generation.

A bank describes each class by a definition, attributes and scene contexts, and shares pools of styles,
lighting and viewpoints (a class may override them); templates put one choice from each pool into a
sentence. Which choice an image gets is read off a hash of (base seed, class, image index, slot), so a
caption never depends on how work is batched, ordered or split, nor on the random-number library.
This follows what the synthetic-training-data literature found useful: class name plus definition
(Sariyildiz et al. 2023), backgrounds and scene context (ibid.; He et al. 2023), and style, lighting and
viewpoint diversity (Shipard et al. 2023). Captions can be rewritten by a local language model
(``CaptionRewriter``) for freer phrasing.

Shipped banks are package data (``imgsynth/assets/prompts/*.toml``); pass a bank by name (``indoor-scenes``)
or path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from imgsynth.imageset import ImageSetError, check_label
from imgsynth.package_data import shipped_files
from imgsynth.structured_files import read_toml
from imgsynth.safe_loading import pickle_files, refusing_pickles

GENERIC_BANK = "generic"
SLOTS = ("name", "definition", "attribute", "context", "style", "lighting", "viewpoint")
# Pools a bank shares with its classes; a class may give its own list instead.
SHARED_POOLS = ("templates", "styles", "lighting", "viewpoints")
CLASS_POOLS = ("attributes", "contexts")
_BANK_KEYS = {"name", "description", "negative_prompt", "prompt_suffix", "classes", *SHARED_POOLS}
_CLASS_KEYS = {"definition", *CLASS_POOLS, *SHARED_POOLS}
# Which pool fills which template slot.
_SLOT_POOL = {"attribute": "attributes", "context": "contexts", "style": "styles", "lighting": "lighting",
              "viewpoint": "viewpoints"}


@dataclass(frozen=True)
class ClassPrompts:
    """What a bank says about one class: its definition and the pools its captions draw from."""

    name: str
    definition: str = ""
    attributes: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    lighting: tuple[str, ...] = ()
    viewpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Caption:
    """One generated caption and the choice made for every slot (stored with the image)."""

    text: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptBank:
    """Classes with their prompt pools, plus the negative prompt and prompt suffix used with them."""

    name: str
    classes: dict[str, ClassPrompts]
    negative_prompt: str = ""
    prompt_suffix: str = ""
    description: str = ""
    source: str = ""
    # The bank-level pools, for classes the bank does not list (used by the generic bank).
    shared: ClassPrompts = field(default_factory=lambda: ClassPrompts(""))

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def select(self, names: Sequence[str]) -> PromptBank:
        """The bank restricted to ``names`` in that order; an unknown or repeated name is an error."""
        if not names:
            raise ValueError(f"prompt bank {self.source or self.name}: the class list is empty")
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise ValueError(f"prompt bank {self.source or self.name} has no class {unknown[0]!r} "
                             f"(it has: {', '.join(self.classes)})")
        if len(set(names)) != len(names):
            raise ValueError(f"class list repeats a class: {list(names)}")
        return PromptBank(self.name, {n: self.classes[n] for n in names}, self.negative_prompt,
                          self.prompt_suffix, self.description, self.source, self.shared)

    def caption(self, label: str, base_seed: int, index: int) -> Caption:
        """The caption of image ``index`` of class ``label`` under ``base_seed`` (pure function of the three)."""
        entry = self.classes[label]
        template = _pick(entry.templates, base_seed, label, index, "template")
        values = {"name": entry.name, "definition": entry.definition}
        for slot, pool in _SLOT_POOL.items():
            values[slot] = _pick(getattr(entry, pool), base_seed, label, index, slot)
        used = {slot: values[slot] for slot in SLOTS if "{" + slot + "}" in template and slot != "name"}
        return Caption(_tidy(template.format(**values)), {"template": template, **used})

    def prompt(self, caption: str) -> str:
        """The text sent to the model for ``caption``: the caption plus the bank's prompt suffix."""
        return f"{caption}, {self.prompt_suffix}" if self.prompt_suffix else caption


# --------------------------------------------------------------------------------------------- loading

def shipped_banks() -> dict[str, Path]:
    """Name → path of every bank shipped in ``imgsynth/assets/prompts``."""
    return shipped_files("prompts")


def load_prompt_bank(spec: str | Path) -> PromptBank:
    """Load a bank from a TOML path or a shipped bank's name, checking every field."""
    path = Path(spec)
    if not path.is_file():
        shipped = shipped_banks()
        if str(spec) in shipped:
            path = shipped[str(spec)]
        else:
            raise FileNotFoundError(f"prompt bank {str(spec)!r}: no such file, and no shipped bank of that "
                                    f"name (shipped: {', '.join(shipped) or 'none'})")
    values = read_toml(path)  # size, depth and UTF-8 limits, one line naming the file
    return bank_from_dict(values, str(path))


def bank_from_dict(values: Mapping[str, Any], where: str = "prompt bank") -> PromptBank:
    """Build and validate a bank from parsed TOML; errors name ``where`` and the offending key."""
    unknown = set(values) - _BANK_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; a bank has {sorted(_BANK_KEYS)}")
    shared = {pool: _strings(values, pool, where) for pool in SHARED_POOLS}
    classes_table = values.get("classes", {})
    if not isinstance(classes_table, Mapping):
        raise ValueError(f"{where}: 'classes' must be a table of [classes.NAME] entries")
    classes: dict[str, ClassPrompts] = {}
    for name, entry in classes_table.items():
        here = f"{where} [classes.{name!r}]"
        try:
            check_label(name, here)
        except ImageSetError as exc:
            raise ValueError(str(exc)) from exc
        if not isinstance(entry, Mapping):
            raise ValueError(f"{here}: expected a table")
        unknown = set(entry) - _CLASS_KEYS
        if unknown:
            raise ValueError(f"{here}: unknown key(s) {sorted(unknown)}; a class has {sorted(_CLASS_KEYS)}")
        definition = entry.get("definition", "")
        if not isinstance(definition, str):
            raise ValueError(f"{here}: 'definition' must be a string")
        pools = {pool: _strings(entry, pool, here) for pool in CLASS_POOLS}
        for pool in SHARED_POOLS:
            pools[pool] = _strings(entry, pool, here) or shared[pool]
        classes[name] = ClassPrompts(name, definition.strip(), **pools)
        if not classes[name].templates:
            raise ValueError(f"{here}: no templates (give 'templates' in the bank or the class)")
        for template in classes[name].templates:
            _check_template(template, here)
    for template in shared["templates"]:
        _check_template(template, where)
    text = {key: values.get(key, "") for key in ("name", "negative_prompt", "prompt_suffix", "description")}
    for key, value in text.items():
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key!r} must be a string")
    return PromptBank(text["name"] or Path(where).stem, classes, text["negative_prompt"].strip(),
                      text["prompt_suffix"].strip(), text["description"].strip(), where,
                      ClassPrompts("", **shared))


def bank_for_classes(names: Sequence[str]) -> PromptBank:
    """A bank for bare class names: each name takes its entry from the first shipped bank that has it,
    and names no shipped bank knows get the generic pools (style, lighting, viewpoint only)."""
    if not names:
        raise ValueError("the class list is empty: give at least one class (e.g. --classes kitchen,bedroom)")
    if len(set(names)) != len(names):
        raise ValueError(f"class list repeats a class: {list(names)}")
    for name in names:
        try:
            check_label(name, "class list")
        except ImageSetError as exc:
            raise ValueError(str(exc)) from exc
    banks = [load_prompt_bank(path) for stem, path in shipped_banks().items() if stem != GENERIC_BANK]
    generic = load_prompt_bank(GENERIC_BANK)
    entries: dict[str, ClassPrompts] = {}
    sources: list[str] = []
    for name in names:
        bank = next((b for b in banks if name in b.classes), None)
        if bank is None:
            entries[name] = generic.classes.get(name) or replace(generic.shared, name=name)
            sources.append(generic.name)
        else:
            entries[name] = bank.classes[name]
            sources.append(bank.name)
    used = list(dict.fromkeys(sources))
    first = next(b for b in [*banks, generic] if b.name == used[0])
    return PromptBank("+".join(used), entries, first.negative_prompt, first.prompt_suffix,
                      f"classes from shipped banks: {', '.join(used)}", "+".join(used))


def resolve_bank(classes: Sequence[str] | None = None, prompts: str | Path | PromptBank | None = None) -> PromptBank:
    """The bank a generation uses: ``prompts`` (a bank, its path or shipped name) restricted to ``classes``
    when both are given, all of its classes when only ``prompts`` is; shipped entries for ``classes`` alone."""
    if prompts is not None and prompts != "":
        bank = prompts if isinstance(prompts, PromptBank) else load_prompt_bank(prompts)
        if classes is None:
            if not bank.classes:
                raise ValueError(f"prompt bank {bank.source or bank.name} defines no classes")
            return bank
        return bank.select(list(classes))
    if classes is None:
        raise ValueError("give the classes to generate (e.g. --classes kitchen,bedroom) or a prompt bank (--prompts)")
    return bank_for_classes(list(classes))


# --------------------------------------------------------------------------------------------- rewriting

class CaptionRewriter:
    """Rewrite captions with a local transformers language model (causal or encoder-decoder).

    Decoding is greedy, one caption at a time, so a caption's rewrite depends on the caption alone
    (not on what else is in the batch). The path must be a local folder from ``save_pretrained``; nothing
    is downloaded.
    """

    instruction = "Rewrite this image description as one fluent, vivid sentence: {caption}\nRewritten:"

    def __init__(self, model_path: str | Path, *, max_new_tokens: int = 48, device: str = "cpu") -> None:
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"caption model {str(model_path)!r}: not a local transformers model folder "
                                    "(no config.json); save one with model.save_pretrained(PATH) and "
                                    "tokenizer.save_pretrained(PATH)")
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        self.path = path
        self.max_new_tokens = max_new_tokens
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        self.encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        model_class = AutoModelForSeq2SeqLM if self.encoder_decoder else AutoModelForCausalLM
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # transformers reads .bin weights with torch.load(weights_only=True); a refusal is one error line
        with refusing_pickles(pickle_files(path), f"caption model {str(model_path)!r}"):
            model = model_class.from_pretrained(path, local_files_only=True, weights_only=True)
        self.model = model.to(device).eval()
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        self.context_length = None if self.encoder_decoder else positions
        self.device = device
        self._torch = torch

    def __call__(self, captions: Sequence[str]) -> list[str]:
        return [self.rewrite(c) for c in captions]

    def rewrite(self, caption: str) -> str:
        """The model's rewrite of one caption; the original when the model produces nothing usable."""
        # Keep the end of an over-long input ("... Rewritten:"), and room for the new tokens.
        self.tokenizer.truncation_side = "left"
        limit = self.context_length - self.max_new_tokens if self.context_length else None
        inputs = self.tokenizer(self.instruction.format(caption=caption), return_tensors="pt",
                                truncation=limit is not None, max_length=limit).to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=pad)
        new_tokens = output[0] if self.encoder_decoder else output[0, inputs["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        text = " ".join(text.split()).strip()
        return text.splitlines()[0] if text else caption


# --------------------------------------------------------------------------------------------- helpers

def caption_choice(options: Sequence[str], base_seed: int, label: str, index: int, slot: str) -> int:
    """Index into ``options`` for one slot of one image, from a hash (stable across Python/numpy versions)."""
    digest = hashlib.sha256(f"imgsynth-caption/{int(base_seed)}/{label}/{int(index)}/{slot}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % len(options)


def _pick(options: Sequence[str], base_seed: int, label: str, index: int, slot: str) -> str:
    return options[caption_choice(options, base_seed, label, index, slot)] if options else ""


def _strings(values: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    raw = values.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(v, str) and v.strip() for v in raw):
        raise ValueError(f"{where}: {key!r} must be a list of non-empty strings")
    return tuple(v.strip() for v in raw)


def _check_template(template: str, where: str) -> None:
    names = set(re.findall(r"{([^{}]*)}", template))
    unknown = names - set(SLOTS)
    if unknown:
        raise ValueError(f"{where}: template {template!r} uses unknown slot(s) {sorted(unknown)}; "
                         f"slots are {', '.join('{' + s + '}' for s in SLOTS)}")
    if "name" not in names:
        raise ValueError(f"{where}: template {template!r} must contain {{name}}")


def _tidy(text: str) -> str:
    """Drop empty slots with their commas, fix spacing and 'a' before a vowel."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,:;])", r"\1", text)
    text = re.sub(r"(,\s*)+,", ",", text)
    text = re.sub(r"^[\s,:;]+|[\s,:;]+$", "", text)
    text = re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)
    return text
