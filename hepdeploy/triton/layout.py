"""The layout of a Triton model repository as hepdeploy writes it: file names and the manifest.

Leaf of the triton stage: publishing (:mod:`~hepdeploy.triton.repository`), checking
(:mod:`~hepdeploy.triton.check`) and serving read these names, so none of them needs another.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hepdeploy.errors import RepositoryError

CONFIG_NAME = "config.pbtxt"
README_NAME = "README.md"
MANIFEST_NAME = "hepdeploy-manifest.json"
MANIFEST_SCHEMA = 1
# A staging folder inside the repository (only where the parent cannot hold one): Triton would
# try to load it as a model, so the check reports a leftover.
INNER_STAGING = ".hepdeploy-staging"


def version_folders(model_dir: Path) -> list[int]:
    """Numeric version folders of a model folder (as Triton reads them: no leading zeros)."""
    versions = []
    if model_dir.is_dir():
        for child in model_dir.iterdir():
            if child.is_dir() and child.name.isdigit() and (child.name == "0" or not child.name.startswith("0")):
                versions.append(int(child.name))
    return sorted(versions)


def read_manifest(version_dir: Path) -> dict[str, Any] | None:
    path = version_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RepositoryError(f"{path}: unreadable manifest ({type(error).__name__})") from error
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise RepositoryError(f"{path}: manifest has no 'files' table")
    return data
