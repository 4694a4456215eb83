"""Bad input of the tracking options (`imgsynth run --track`, a recipe's `[tracking]`): one `error:` line naming
the flag or field, non-zero exit, no traceback, nothing written (the `tests/cli_checks.py` harness)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_checks import assert_refused_within_limits, run_limited

from imgsynth.experiments.recipes import shipped_recipes

SMOKE = shipped_recipes()["smoke"]


def _recipe(tmp_path: Path, tracking: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(SMOKE.read_text(encoding="utf-8") + "\n[tracking]\n" + tracking + "\n", encoding="utf-8")
    return path


CASES = [
    (lambda tmp: [SMOKE, "--track", "wandbb"], ["--track", "wandbb"]),
    (lambda tmp: [SMOKE, "--set", 'tracking.trackers=["mlfow"]'], ["[tracking] trackers", "mlfow"]),
    (lambda tmp: [_recipe(tmp, 'trackers = "wandb"')], ["recipe.toml", "trackers"]),
    (lambda tmp: [_recipe(tmp, 'trackers = ["tensorboard", "tensorboard"]')], ["[tracking] trackers", "repeated"]),
    (lambda tmp: [_recipe(tmp, "mlflow_uri = 3")], ["recipe.toml", "mlflow_uri"]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_bad_tracking_input_is_one_error_line_and_writes_nothing(case, tmp_path):
    args, needles = CASES[case]
    out = tmp_path / "run"
    ran = run_limited("run", *args(tmp_path), "--out", out, cwd=tmp_path)
    assert_refused_within_limits(ran, *needles)
    assert not out.exists()
