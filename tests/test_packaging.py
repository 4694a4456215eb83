"""The wheel carries the recipes, prompt banks and LICENSE, and an installed copy finds them by itself.

The wheel is built from a copy of the package sources (no stale ``build/`` of the checkout can leak in)
with the test environment's setuptools and no index, so nothing is downloaded. Its recipes are then
found by importing imgsynth from the wheel file itself (a zip): nothing beside a source tree can help.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from imgsynth.experiments.config import load_recipe
from imgsynth.experiments.recipes import shipped_recipes
from imgsynth.package_data import asset_folder
from imgsynth.pipelines.prompts import load_prompt_bank, shipped_banks

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "imgsynth" / "assets"


def _asset_names(folder: str) -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in (ASSETS / folder).glob("*.toml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "imgsynth", src / "imgsynth", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", str(src), "-w", str(work / "dist")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (work / "dist").glob("imgsynth-*.whl")
    return built


def test_the_wheel_holds_every_recipe_prompt_bank_and_the_license(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert _asset_names("experiments") and _asset_names("prompts")
        for name in _asset_names("experiments") + _asset_names("prompts"):
            assert name in names, f"{name} missing from {wheel.name}"
            # packed unchanged, and still a TOML file
            assert archive.read(name) == (REPO / name).read_bytes()
            tomllib.loads(archive.read(name).decode("utf-8"))
        (license_name,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        license_text = archive.read(license_name).decode("utf-8")
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode("utf-8")
    assert license_text == (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()


def test_importlib_resources_finds_the_shipped_files():
    assert asset_folder("experiments").is_dir()
    assert sorted(f"imgsynth/assets/experiments/{n}.toml" for n in shipped_recipes()) == _asset_names("experiments")
    assert sorted(f"imgsynth/assets/prompts/{n}.toml" for n in shipped_banks()) == _asset_names("prompts")
    assert load_recipe(shipped_recipes()["smoke"]).name == "smoke"


def test_an_imgsynth_imported_from_the_wheel_finds_its_recipes_and_banks(wheel, tmp_path):
    code = (
        "import sys\n"
        "import imgsynth\n"
        "from imgsynth.experiments.config import load_recipe\n"
        "from imgsynth.experiments.recipes import resolve_target, shipped_recipes\n"
        "from imgsynth.pipelines.prompts import load_prompt_bank\n"
        "assert imgsynth.__file__.startswith(sys.argv[1]), imgsynth.__file__\n"
        "print(' '.join(shipped_recipes()))\n"
        "print(load_recipe(resolve_target('smoke')[0]).name)\n"
        "print('|'.join(load_prompt_bank('indoor-scenes').class_names))\n"
    )
    # Only the wheel on the path (not the checkout), run from a folder that is not the checkout.
    env = {**os.environ, "PYTHONPATH": str(wheel)}
    done = subprocess.run([sys.executable, "-c", code, str(wheel)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    recipes, smoke, classes = done.stdout.splitlines()
    assert sorted(recipes.split()) == sorted(shipped_recipes())
    assert smoke == "smoke"
    assert classes.split('|') == load_prompt_bank("indoor-scenes").class_names
