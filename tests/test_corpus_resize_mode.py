"""Corpus (issue 22, item 4): a resize mode a command or recipe cannot use is one ``error:`` line, given before
any set, weights or classifier loads, with inputs unchanged and nothing written.

Each case runs ``imgsynth`` under the corpus limits (``cli_checks.run_limited``) on a tiny set of its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_checks import assert_refused_within_limits, leftovers, run_limited, tree_digest
from PIL import Image

from imgsynth.imageset import ImageSetWriter, Sample


@pytest.fixture
def tiny_set(tmp_path: Path) -> Path:
    writer = ImageSetWriter(tmp_path / "set", ["a"])
    writer.write_all(Sample(Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)), "a") for i in range(3))
    return writer.finalize().root


def _refused(args: list, inputs: list[Path], out: Path, *needles: str) -> None:
    before = {path: tree_digest(path) for path in inputs}
    assert_refused_within_limits(run_limited(*args), *needles)
    for path, digest in before.items():
        assert tree_digest(path) == digest and not leftovers(path), path
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("mode, says", [("bicubic\x1b[31m", r"'bicubic\x1b[31m' is not a resize mode"),
                                        ("x" * 100_000, "is not a resize mode; choose one of clean")],
                         ids=["control-characters", "long"])
def test_metrics_refuses_an_unknown_resize_mode(mode, says, tiny_set, tmp_path):
    out = tmp_path / "m.csv"
    _refused(["metrics", tiny_set, tiny_set, "--features", "inception", "--resize-mode", mode, "--out", out],
             [tiny_set], out, "--resize-mode", says)


def test_features_refuses_a_resize_mode_for_an_extractor_without_one(tiny_set, tmp_path):
    # The classifier path does not exist: the refusal must come before anything tries to load it.
    cache = tmp_path / "cache"
    _refused(["features", tiny_set, "--features", f"domain:{tmp_path / 'no-classifier'}", "--resize-mode",
              "torch-fidelity", "--cache-dir", cache], [tiny_set], cache, "cannot resize by 'torch-fidelity'")


def test_a_recipe_with_a_resize_mode_it_cannot_use_starts_no_run(tmp_path):
    recipe = tmp_path / "fid.toml"
    recipe.write_text('name = "fid"\n[metrics]\nextractors = ["domain", "inception"]\n'
                      '[metrics.resize_mode]\ninception = "tensorflow"\n', encoding="utf-8")
    out = tmp_path / "run"
    _refused(["run", recipe, "--out", out], [recipe], out, str(recipe), "[metrics.resize_mode] inception",
             "'tensorflow'")
