"""The software versions a manifest or model record stores, so a result can be traced to what made it."""

from __future__ import annotations

import platform
from importlib import metadata


def software_versions() -> dict[str, str]:
    """Versions of the interpreter and the libraries whose behaviour changes the pixels or numbers."""
    versions = {"python": platform.python_version()}
    for package in ("imgsynth", "torch", "torchvision", "diffusers", "transformers", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
