"""Shared fixtures. Every test runs offline: an accidental hub download fails loudly instead of hanging."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from imgsynth.imageset import ImageSet  # noqa: E402
from imgsynth.sources import import_source  # noqa: E402


@pytest.fixture(scope="session")
def digits_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet]:
    """The embedded digits at 16 px, split 80/20 with seed 0: (train, test). Read-only; copy to modify."""
    root = tmp_path_factory.mktemp("digits")
    return import_source("digits", root / "digits", size=16, test_fraction=0.2, seed=0)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run the `imgsynth` console entry point in-process; returns (exit code, stdout, stderr)."""
    import sys

    from imgsynth.cli.app import main

    def invoke(*args: str | Path) -> tuple[int, str, str]:
        argv = sys.argv
        sys.argv = ["imgsynth", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = argv
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke


@pytest.fixture(scope="session")
def tiny_text2image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init Stable Diffusion pipeline folder (``imgsynth.testing``), built once; read-only."""
    from imgsynth.testing import tiny_text2image_pipeline

    return tiny_text2image_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipeline")
