"""Lower layers never import higher ones: checked on the modules a fresh interpreter actually loads."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module, forbidden", [
    ("imgsynth.reports.build", ["imgsynth.experiments.loop", "imgsynth.cli", "imgsynth.pipelines"]),
    ("imgsynth.experiments.run", ["imgsynth.experiments.loop", "imgsynth.reports", "torch"]),
    ("imgsynth.pipelines.base", ["imgsynth.experiments", "imgsynth.metrics", "imgsynth.cli", "torch"]),
    ("imgsynth.pipelines.gaussian", ["imgsynth.experiments", "imgsynth.metrics", "imgsynth.cli", "torch"]),
    ("imgsynth.imageset", ["imgsynth.pipelines", "imgsynth.metrics", "imgsynth.experiments", "torch"]),
    # distributed/ knows backends, not generators; the library never imports the CLI
    ("imgsynth.distributed.generate", ["imgsynth.pipelines.conditional", "imgsynth.pipelines.text2image",
                                       "imgsynth.experiments", "imgsynth.cli"]),
    ("imgsynth.distributed.tasks", ["imgsynth.pipelines.conditional", "imgsynth.pipelines.text2image",
                                    "imgsynth.experiments", "imgsynth.cli"]),
    ("imgsynth.experiments.loop", ["imgsynth.cli", "imgsynth.reports"]),
    # recipes validate against the loop-mode registry without loading torch or the loop
    ("imgsynth.experiments.modes", ["imgsynth.experiments.loop", "imgsynth.reports", "imgsynth.cli", "torch"]),
    ("imgsynth.pipelines.conditional.kind", ["imgsynth.experiments", "imgsynth.cli", "torch", "diffusers"]),
    ("imgsynth.generator_record", ["imgsynth.pipelines", "imgsynth.experiments", "imgsynth.cli"]),
])
def test_a_module_loads_none_of_the_layers_above_it(module, forbidden):
    code = (f"import sys, {module}\n"
            f"bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') for f in {forbidden!r}))\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
