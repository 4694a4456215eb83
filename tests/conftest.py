"""Shared fixtures. Every test runs offline: an accidental hub download fails loudly instead of hanging."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402

from imgsynth.imageset import ImageSet  # noqa: E402
from imgsynth.sources import import_source  # noqa: E402


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``gpu`` (see pyproject.toml's markers) is skipped where torch sees no CUDA device."""
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device (marked gpu)")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Every test computes with one torch thread: CPU float results depend on the thread count (summation
    order), so this keeps results the same on any machine, and on a shared 2-core machine spinning
    OpenMP threads make these tiny models 10-40x slower. Subprocesses get OMP_NUM_THREADS=1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageSet, ImageSet]:
    """The embedded digits at 16 px, split 80/20 with seed 0: (train, test). Read-only; copy to modify."""
    root = tmp_path_factory.mktemp("digits")
    return import_source("digits", root / "digits", size=16, test_fraction=0.2, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextmanager
def _read_only(root: Path) -> Iterator[None]:
    """At the end of the session, fail if a test changed, added or removed a file below ``root``."""
    before = _files(root)
    yield
    assert _files(root) == before, f"{root}: a shared read-only fixture was changed by a test (copy it first)"


@pytest.fixture(scope="session")
def small_digits(digits_sets: tuple[ImageSet, ImageSet], tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[ImageSet]:
    """120 real digits at 16 px grayscale (the first 12 per class of the test split). Read-only; copy to modify."""
    test = digits_sets[1]
    indices = [i for c in test.classes for i in test.indices_of_class(c)[:12]]
    subset = test.subset(indices, tmp_path_factory.mktemp("small-digits") / "real")
    with _read_only(subset.root):
        yield subset


@pytest.fixture(scope="session")
def small_classifier(small_digits: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier checkpoint (one epoch, width 4) trained on ``small_digits``, for ``domain:`` features.
    Read-only."""
    from imgsynth.classifier import ClassifierConfig, train_classifier

    out = tmp_path_factory.mktemp("small-classifier") / "clf"
    return train_classifier(small_digits, out, ClassifierConfig(epochs=1, width=4, batch_size=32), progress=False)


@pytest.fixture(scope="session")
def smoke_model(digits_sets: tuple[ImageSet, ImageSet], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The class-conditional model of the ``smoke`` preset trained on the digits train split, built once.
    Read-only: a test that changes a model folder copies it first (``shutil.copytree``)."""
    from imgsynth.pipelines import conditional

    out = tmp_path_factory.mktemp("smoke-model") / "model"
    model = conditional.train(digits_sets[0], out, conditional.preset("smoke"), progress=False)
    with _read_only(model):
        yield model


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
