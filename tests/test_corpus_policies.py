"""Corpus (issue 23): hostile inputs of the new loop settings and of the training-weight column.

Each case runs ``imgsynth`` under the corpus limits (``cli_checks.run_limited``) and asserts one ``error:``
line naming the file or field, no traceback, its inputs unchanged and nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_checks import assert_refused_within_limits, leftovers, run_limited, tree_digest

from imgsynth.imageset import concatenate


def _refused(args: list, inputs: list[Path], out: Path, *needles: str) -> None:
    before = {path: tree_digest(path) for path in inputs}
    assert_refused_within_limits(run_limited(*args), *needles)
    for path, digest in before.items():
        assert tree_digest(path) == digest and not leftovers(path), path
    assert not out.exists(), f"{out} was written"


@pytest.mark.parametrize("value, shown", [(-1, "-1"), ("heavy", "'heavy'")])
def test_a_bad_weight_in_a_training_set_is_refused_naming_its_line(tmp_path, value, shown):
    from imgsynth.sources import import_source

    train, _ = import_source("gaussian:classes=2,per_class=10,seed=0", tmp_path / "real", size=4, mode="L")
    weighted = concatenate([train], tmp_path / "weighted", weights=[1.0]).root
    path = weighted / "metadata.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    row["weight"] = value
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    _refused(["train", weighted, tmp_path / "model", "--kind", "gaussian"], [weighted], tmp_path / "model",
             "metadata.jsonl:2", f"weight must be a finite number ≥ 0 or null, got {shown}")


@pytest.mark.parametrize("setting, needle", [
    ("real_weight = 1.5", "[loop] real_weight must lie in (0, 1], got 1.5"),
    ("fresh_synthetic = \"everything\"", "[loop] fresh_synthetic must be one of ['previous', 'all']"),
])
def test_a_bad_loop_setting_is_refused_naming_the_field(tmp_path, setting, needle):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "x"\n[data]\nsource = "gaussian:classes=2,per_class=10,seed=0"\nsize = 4\n'
                      f'[generator]\nkind = "gaussian"\nper_class = 5\n[loop]\nmodes = ["weighted"]\n{setting}\n'
                      '[metrics]\nextractors = ["pixels"]\n[classifier]\nenabled = false\n', encoding="utf-8")
    _refused(["run", recipe, "--out", tmp_path / "run"], [recipe], tmp_path / "run", needle, str(recipe))
