"""The FP32 model a candidate is localised against: the reference's source, or the FP32 ancestor artifact
found by following the sidecars' ``parent`` sha256 through the candidate's folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hepdeploy.artifacts import read_artifact
from hepdeploy.errors import HepDeployError
from hepdeploy.validate.reference import ReferenceSet


def find_fp32_model(candidate: Path, reference: ReferenceSet) -> Path | None:
    """The FP32 ONNX model to localise against: the reference's source, or the FP32 ancestor artifact."""
    source = reference.provenance.get("path")
    if source and str(source).endswith(".onnx") and Path(source).is_file():
        if Path(source).resolve() != Path(candidate).resolve():
            return Path(source)
    try:
        sidecar = read_artifact(candidate).sidecar
    except HepDeployError:  # an unreadable sidecar only means no ancestor can be found
        return None
    by_sha = _sidecars_by_sha(Path(candidate).parent)
    parent = sidecar.parent
    seen: set[str] = set()
    while parent and parent in by_sha and parent not in seen:
        seen.add(parent)
        path, data = by_sha[parent]
        if (data.get("variant") or {}).get("precision", "fp32") == "fp32":
            return path
        parent = data.get("parent")
    return None


def _sidecars_by_sha(folder: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """sha256 -> (ONNX file, its sidecar as read) for every artifact in ``folder``; unreadable sidecars are skipped."""
    by_sha: dict[str, tuple[Path, dict[str, Any]]] = {}
    for side in folder.glob("*.json"):
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("sha256") and side.with_suffix(".onnx").is_file():
            by_sha[data["sha256"]] = (side.with_suffix(".onnx"), data)
    return by_sha
