"""Prompt banks and captions: shipped content, reproducibility, variety, and every bad-bank error."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from imgsynth.pipelines.prompts import (CaptionRewriter, bank_for_classes, bank_from_dict, load_prompt_bank,
                                        resolve_bank, shipped_banks)
from imgsynth.pipelines.text2image import plan_text2image, rewrite_items

INDOOR = ["kitchen", "bedroom", "bathroom", "living room", "dining room", "office"]


@pytest.fixture(scope="module")
def indoor():
    return load_prompt_bank("indoor-scenes")


def small_bank(**overrides):
    values = {"name": "t", "templates": ["{style} of a {attribute} {name}, {context}"], "styles": ["a photo"],
              "classes": {"kitchen": {"definition": "a room for cooking", "attributes": ["open-plan"],
                                      "contexts": ["with a sink"]}}}
    values.update(overrides)
    return bank_from_dict(values, "test.toml")


# --------------------------------------------------------------------------------------------- shipped

def test_indoor_bank_describes_every_room(indoor):
    assert indoor.class_names == INDOOR
    for entry in indoor.classes.values():
        assert entry.definition
        for pool in ("attributes", "contexts", "styles", "lighting", "viewpoints", "templates"):
            assert len(getattr(entry, pool)) >= 5, (entry.name, pool)
    assert "watermark" in indoor.negative_prompt
    assert set(shipped_banks()) >= {"indoor-scenes", "generic"}


def test_caption_is_a_pure_function_of_seed_class_and_index(indoor):
    first = indoor.caption("kitchen", 3, 11)
    assert indoor.caption("kitchen", 3, 11) == first
    # Selecting or reordering classes changes nothing about a class's captions.
    assert indoor.select(["office", "kitchen"]).caption("kitchen", 3, 11) == first
    assert indoor.caption("kitchen", 4, 11) != first or indoor.caption("kitchen", 5, 11) != first


def test_captions_vary_every_slot_and_draw_from_the_pools(indoor):
    entry = indoor.classes["living room"]
    captions = [indoor.caption("living room", 0, i) for i in range(200)]
    assert len({c.text for c in captions}) >= 190
    pools = {"attribute": entry.attributes, "context": entry.contexts, "style": entry.styles,
             "lighting": entry.lighting, "viewpoint": entry.viewpoints}
    for slot, pool in pools.items():
        used = [c.fields[slot] for c in captions if slot in c.fields]
        assert set(used) <= set(pool)
        assert len(set(used)) == len(pool), f"{slot}: not every option was used in 200 captions"
    for caption in captions:
        assert "living room" in caption.text
        assert "  " not in caption.text and ", ," not in caption.text and not caption.text.endswith(",")
    with_definition = [c for c in captions if "definition" in c.fields]
    assert with_definition and all(entry.definition in c.text for c in with_definition)


def test_slot_choices_are_close_to_uniform(indoor):
    styles = indoor.classes["kitchen"].styles
    counts = Counter(indoor.caption("kitchen", 1, i).fields["style"] for i in range(1000))
    expected = 1000 / len(styles)
    chi2 = sum((counts[s] - expected) ** 2 / expected for s in styles)
    assert chi2 < 27.9  # 99.9% quantile of chi-square with 9 degrees of freedom


def test_articles_and_empty_slots_are_tidied():
    bank = small_bank()
    assert bank.caption("kitchen", 0, 0).text == "a photo of an open-plan kitchen, with a sink"
    bare = small_bank(classes={"kitchen": {}})
    assert bare.caption("kitchen", 0, 0).text == "a photo of a kitchen"


def test_class_pools_override_the_shared_ones():
    bank = small_bank(classes={"kitchen": {"styles": ["a drawing"]}, "bedroom": {}})
    assert bank.caption("kitchen", 0, 0).fields["style"] == "a drawing"
    assert bank.caption("bedroom", 0, 0).fields["style"] == "a photo"


def test_prompt_adds_the_suffix_to_the_caption_only():
    bank = small_bank(prompt_suffix="highly detailed")
    item = plan_text2image(bank, 1, 0)[0]
    assert item.prompt == item.caption + ", highly detailed"
    assert "highly detailed" not in item.caption


def test_bare_class_names_use_shipped_entries_then_generic_pools(indoor):
    bank = bank_for_classes(["kitchen", "zebra"])
    assert bank.classes["kitchen"] == indoor.classes["kitchen"]
    zebra = bank.caption("zebra", 0, 0)
    assert "zebra" in zebra.text and "definition" not in zebra.fields and zebra.fields["style"]
    assert resolve_bank(["kitchen"], "indoor-scenes").class_names == ["kitchen"]
    assert resolve_bank(None, "indoor-scenes").class_names == INDOOR


# --------------------------------------------------------------------------------------------- errors

def test_unknown_class_in_a_prompt_file(tmp_path: Path):
    path = tmp_path / "rooms.toml"
    path.write_text('templates = ["a {name}"]\n[classes.kitchen]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rooms.toml has no class 'garage' \(it has: kitchen\)"):
        resolve_bank(["kitchen", "garage"], path)


@pytest.mark.parametrize("classes, prompts, message", [
    ([], None, "class list is empty"),
    ([], "indoor-scenes", "class list is empty"),
    (None, None, "give the classes to generate"),
    (["kitchen", "kitchen"], None, "repeats a class"),
    (["a/b"], None, "cannot be a folder name"),
])
def test_bad_class_lists(classes, prompts, message):
    with pytest.raises(ValueError, match=message):
        resolve_bank(classes, prompts)


@pytest.mark.parametrize("overrides, message", [
    ({"colour": ["red"]}, r"unknown key\(s\) \['colour'\]"),
    ({"templates": ["a {thing} {name}"]}, r"unknown slot\(s\) \['thing'\]"),
    ({"templates": ["a photo"]}, r"must contain \{name\}"),
    ({"styles": "a photo"}, "'styles' must be a list of non-empty strings"),
    ({"styles": ["a photo", ""]}, "'styles' must be a list of non-empty strings"),
    ({"classes": {"kitchen": {"definiton": "typo"}}}, r"\[classes.'kitchen'\]: unknown key\(s\) \['definiton'\]"),
    ({"classes": {"kitchen": {"definition": 3}}}, "'definition' must be a string"),
    ({"classes": {"../up": {}}}, "cannot be a folder name"),
    ({"templates": [], "classes": {"kitchen": {}}}, "no templates"),
])
def test_bad_banks_are_refused_with_the_key_named(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        small_bank(**overrides)
    assert "test.toml" in str(info.value)


def test_bank_file_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"no-such-bank.*shipped: .*indoor-scenes"):
        load_prompt_bank("no-such-bank")
    broken = tmp_path / "broken.toml"
    broken.write_text("templates = [", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.toml: not valid TOML"):
        load_prompt_bank(broken)


# --------------------------------------------------------------------------------------------- rewriting

def test_caption_model_must_be_a_local_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="not a local transformers model folder"):
        CaptionRewriter(tmp_path / "missing")


def test_caption_rewriting_with_a_local_model_is_deterministic(tmp_path: Path, indoor):
    from imgsynth.testing import tiny_caption_model

    rewriter = CaptionRewriter(tiny_caption_model(tmp_path / "lm"), max_new_tokens=8)
    items = plan_text2image(indoor.select(["kitchen", "office"]), 1, 0)
    first = rewrite_items(items, rewriter)
    again = rewrite_items(items, rewriter)
    assert [i.caption for i in first] == [i.caption for i in again]
    for before, after in zip(items, first):
        assert after.caption and after.prompt == after.caption
        assert after.extra["caption_fields"]["template_caption"] == before.caption
        assert after.extra["caption_fields"]["caption_model"].endswith("lm")
        assert (after.label, after.index, after.seed) == (before.label, before.index, before.seed)
