"""The one registry idiom: lazy targets, refusal of a taken name, the decorator and the scoped entry."""

from __future__ import annotations

import sys

import pytest

from imgsynth.registry import Registry, RegistryError


def test_a_lazy_target_is_imported_only_when_used():
    things: Registry[object] = Registry("thing")
    sys.modules.pop("colorsys", None)
    things.register("hsv", "colorsys:rgb_to_hsv")
    assert "hsv" in things and things.names() == ["hsv"]
    assert "colorsys" not in sys.modules  # listing names imports nothing
    assert things["hsv"](1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert things.target("hsv") == "colorsys:rgb_to_hsv"


def test_a_taken_name_is_refused_naming_both_entries():
    things: Registry[object] = Registry("export format")
    things.register("parquet", "json:dumps")
    with pytest.raises(RegistryError, match=r"export format 'parquet' is already registered as json:dumps; "
                                            r"refusing to replace it with json:loads"):
        things.register("parquet", "json:loads")
    things.register("parquet", "json:dumps")  # the same entry again is not a conflict
    things.register("parquet", "json:loads", replace=True)
    assert things["parquet"]("[1]") == [1]


def test_unknown_names_list_the_known_ones_and_the_decorator_registers():
    things: Registry[type] = Registry("loop mode")

    @things.register("halve")
    class Halve:
        pass

    assert things["halve"] is Halve
    with pytest.raises(RegistryError, match=r"unknown loop mode 'double'; registered: halve"):
        things["double"]


def test_a_scoped_entry_is_gone_after_the_block():
    things: Registry[int] = Registry("number")
    with things.registered("one", 1) as entry:
        assert entry == 1 and things.names() == ["one"]
    assert "one" not in things and len(things) == 0
