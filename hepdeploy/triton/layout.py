"""The layout of a Triton model repository as hepdeploy writes it: file names and the manifest.

Leaf of the triton stage: publishing (:mod:`~hepdeploy.triton.repository`), checking
(:mod:`~hepdeploy.triton.check`) and serving read these names, so none of them needs another.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hepdeploy.errors import RepositoryError, first_line

CONFIG_NAME = "config.pbtxt"
README_NAME = "README.md"
MANIFEST_NAME = "hepdeploy-manifest.json"
# 2: typed, with each model's role and twin_of. A schema-1 manifest reads as role "model", twin of nothing.
MANIFEST_SCHEMA = 2
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


# What a published model is for. A twin serves the same tensors as the model it is the twin of (and is
# validated against that model's golden set): on CPU servers (cpu_twin) or in Triton's Python backend
# (python_twin). A preprocess model and an ensemble take raw features instead.
Role = Literal["model", "cpu_twin", "python_twin", "preprocess", "ensemble"]


class ManifestSource(BaseModel):
    """Where the published file came from: the artifact's path, variant, sha256 and the steps that made it."""

    model_config = ConfigDict(extra="allow")

    path: str
    variant: dict[str, Any] | None = None
    sha256: str | None = None
    steps: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    """``hepdeploy-manifest.json`` of one version folder."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    manifest_schema: int = Field(alias="schema")
    model: str
    version: int
    platform: str
    kind: str
    role: Role = "model"
    twin_of: str | None = None
    files: dict[str, str]
    hepdeploy_version: str
    published_at: str
    source: ManifestSource
    verdict: dict[str, Any] | None = None
    plans: dict[str, dict[str, Any]] | None = None

    @property
    def precision(self) -> str:
        """The served variant's precision (fp32 when the source was not a hepdeploy variant)."""
        return str((self.source.variant or {}).get("precision") or "fp32")

    def text(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2, exclude_none=False) + "\n"


def typed_manifest(version_dir: Path) -> Manifest | None:
    """The version's manifest as a :class:`Manifest`; None when the version has none (not published by us)."""
    data = read_manifest(version_dir)
    if data is None:
        return None
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        raise RepositoryError(f"{version_dir / MANIFEST_NAME}: not a hepdeploy manifest ({first_line(error)})") from error


def newest_manifest(model_dir: Path) -> Manifest | None:
    """The manifest of the newest version of a model folder (None: no version, or not published by us)."""
    versions = version_folders(model_dir)
    return typed_manifest(model_dir / str(versions[-1])) if versions else None
