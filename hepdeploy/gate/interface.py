"""The gate's interface check: would a client built for version N still work against N+1?

What a client depends on is what the server announces: tensor names, data types and dims, batching,
the class labels and their order (``labels.txt``), the preprocessing it must apply (``preprocess.json``)
and the config fields that change what a request must look like. :class:`ServedInterface` holds exactly
those, read from a published version (:func:`interface_of_published`) or from a publication plan
(:func:`interface_of_plan`); :func:`check_interface` names every difference.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepdeploy.errors import RepositoryError
from hepdeploy.gate.outcome import CheckResult, Finding, GateOutcome, outcome_of
from hepdeploy.spec import TensorSpec
from hepdeploy.triton.config import config_platform, parse_model_config, read_model_config
from hepdeploy.triton.ensemble import PREPROCESS_JSON
from hepdeploy.triton.layout import CONFIG_NAME
from hepdeploy.triton.plan import ModelPlan
from hepdeploy.triton.python_backend import tensor_specs_of_config

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

CHECK = "interface"


@dataclass
class ServedInterface:
    """What a client of one served model version depends on.

    ``inputs``/``outputs``: names, dtypes and dims as the config announces them (batch axis named
    ``batch`` when batched); ``labels``: labels.txt of ``label_output``, in order; ``preprocess``: the
    preprocess.json the version (or model folder) holds; ``tensor_fields``: per ``"input NAME"`` /
    ``"output NAME"`` the config fields beyond dtype and dims (format, reshape, is_shape_tensor,
    optional); ``model_fields``: platform, backend, sequence batching and ensemble presence.
    """

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    labels: list[str] = field(default_factory=list)
    label_output: str | None = None
    preprocess: dict[str, Any] | None = None
    tensor_fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_axis(self) -> str | None:
        """``batch`` when Triton batches over the leading axis, None when the model is unbatched."""
        return "batch" if self.max_batch_size > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for gate.json."""
        data = {key: value for key, value in self.__dict__.items() if key not in ("inputs", "outputs")}
        data.update(batch_axis=self.batch_axis,
                    inputs=[t.model_dump(include={"name", "dtype", "shape"}) for t in self.inputs],
                    outputs=[t.model_dump(include={"name", "dtype", "shape"}) for t in self.outputs])
        return data


def interface_of_published(model_dir: Path, version: int, config_text: str | None = None, *,
                           files_at_ref: Mapping[str, bytes | None] | None = None) -> ServedInterface:
    """The interface of a published version.

    ``config_text``: the config.pbtxt as it was at a git ref (``--changed-since``); default the folder's.
    ``files_at_ref``: the other files the interface reads (labels file, ``preprocess.json``, ``1/preprocess.json``),
    model-folder-relative, as they were at that ref (None: absent there); a path not in it is read from the
    folder. labels.txt is shared by every version, so a publish of N+1 rewrites what N serves.
    """
    model_dir = Path(model_dir)
    if config_text is None:
        config = read_model_config(model_dir / CONFIG_NAME)
    else:
        config = parse_model_config(config_text, f"{model_dir / CONFIG_NAME} (at the baseline ref)")
    if not (model_dir / str(version)).is_dir():
        raise RepositoryError(f"{model_dir / str(version)}: no such published version")
    label_output, label_file = _label_file(config)
    labels: list[str] = []
    if label_file:
        text = _file_at_ref(model_dir, label_file, files_at_ref)
        if text is None:
            raise RepositoryError(f"{model_dir / label_file}: the config names this label file but it is missing")
        labels = [line for line in text.decode("utf-8", errors="replace").splitlines() if line]
    preprocess = None
    for relative in (f"{version}/{PREPROCESS_JSON}", PREPROCESS_JSON):
        data = _file_at_ref(model_dir, relative, files_at_ref)
        if data is not None:
            preprocess = _preprocess(data, str(model_dir / relative))
            break
    return _interface(config, labels, label_output, preprocess)


def _file_at_ref(model_dir: Path, relative: str, files_at_ref: Mapping[str, bytes | None] | None) -> bytes | None:
    """A model-folder file's bytes: as given for the ref, else as it is in the folder (None: absent)."""
    if files_at_ref is not None and relative in files_at_ref:
        return files_at_ref[relative]
    path = model_dir / relative
    return path.read_bytes() if path.is_file() else None


def interface_of_plan(plan: ModelPlan) -> ServedInterface:
    """What the candidate would publish: the planned config, its labels and its preprocess.json."""
    label_output, _ = _label_file(plan.config)
    source = plan.files.get(PREPROCESS_JSON)
    preprocess = None
    if source is not None:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        preprocess = _preprocess(data, f"{plan.name}: {PREPROCESS_JSON}")
    return _interface(plan.config, list(plan.labels) if label_output else [], label_output, preprocess)


def _interface(config: model_config_pb2.ModelConfig, labels: list[str], label_output: str | None,
               preprocess: dict[str, Any] | None) -> ServedInterface:
    from tritonclient.grpc import model_config_pb2 as pb2

    inputs, outputs = tensor_specs_of_config(config)
    fields: dict[str, dict[str, Any]] = {}
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            entry: dict[str, Any] = {"reshape": list(tensor.reshape.shape) if tensor.HasField("reshape") else None,
                                     "is_shape_tensor": bool(tensor.is_shape_tensor)}
            if kind == "input":
                entry["format"] = pb2.ModelInput.Format.Name(tensor.format)
                entry["optional"] = bool(tensor.optional)
            fields[f"{kind} {tensor.name}"] = entry
    model_fields = {"platform": config_platform(config), "sequence_batching": config.HasField("sequence_batching"),
                    "ensemble": config.HasField("ensemble_scheduling")}
    return ServedInterface(name=config.name, inputs=inputs, outputs=outputs, max_batch_size=config.max_batch_size,
                           labels=labels, label_output=label_output, preprocess=preprocess, tensor_fields=fields,
                           model_fields=model_fields)


def _label_file(config: model_config_pb2.ModelConfig) -> tuple[str | None, str | None]:
    """The output that carries labels and its label file (None, None when no output has one)."""
    for tensor in config.output:
        if tensor.label_filename:
            return tensor.name, tensor.label_filename
    return None, None


def _preprocess(data: bytes, where: str) -> dict[str, Any]:
    try:
        content = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RepositoryError(f"{where}: not valid JSON ({type(error).__name__})") from error
    if not isinstance(content, dict):
        raise RepositoryError(f"{where}: not a JSON object")
    return content


def check_interface(baseline: ServedInterface, candidate: ServedInterface, *, allow_change: str | None = None,
                    permutation: dict | None = None) -> CheckResult:
    """One finding per difference a client of ``baseline`` would notice in ``candidate``.

    An undeclared difference is FAIL; with ``allow_change`` (``--allow-interface-change REASON``) it is
    INFO with the reason. ``permutation`` (the change map's ``details["permutation"]``) with unchanged
    labels is FAIL whatever is allowed: labels.txt says the classes are the same while the scores say
    they moved, so every client would read the wrong class.
    """
    changed: GateOutcome = "INFO" if allow_change else "FAIL"
    differences = [*_tensor_differences(baseline, candidate), *_batching_differences(baseline, candidate),
                   *_label_differences(baseline, candidate), *_preprocess_differences(baseline, candidate),
                   *_field_differences(baseline.model_fields, candidate.model_fields, "config")]
    findings = [Finding(name=name, outcome=changed, message=message, baseline=before, candidate=after)
                for name, message, before, after in differences]
    if differences and allow_change:
        findings.append(Finding(name="declared change", outcome="PASS",
                                message=f"{len(differences)} difference(s) declared: {allow_change}"))
    if permutation and baseline.labels == candidate.labels:
        findings.append(_permutation_finding(permutation))
    if not findings:
        findings.append(Finding(name="interface", outcome="PASS",
                                message=f"{len(candidate.inputs)} input(s), {len(candidate.outputs)} output(s), "
                                        "batching, labels, preprocessing and client config fields unchanged"))
    details: dict[str, Any] = {"differences": len(differences), "baseline": baseline.to_dict(),
                               "candidate": candidate.to_dict()}
    if allow_change:
        details["allow_interface_change"] = allow_change
    outcome = outcome_of(findings)
    return CheckResult(CHECK, outcome, _reason(outcome, findings, allow_change), findings, details)


Difference = tuple[str, str, Any, Any]  # finding name, message, N's value, N+1's value


def _dims(tensor: TensorSpec) -> list[int]:
    """Dims as the config announces them (-1 for a variable one), without the batch axis's name."""
    return [d if isinstance(d, int) else -1 for d in tensor.shape]


def _tensor_differences(baseline: ServedInterface, candidate: ServedInterface) -> list[Difference]:
    found: list[Difference] = []
    for kind in ("input", "output"):
        before = {t.name: t for t in getattr(baseline, f"{kind}s")}
        after = {t.name: t for t in getattr(candidate, f"{kind}s")}
        added = [n for n in after if n not in before]
        for name, tensor in before.items():
            new = after.get(name)
            if new is None:
                instead = f" (the candidate has {', '.join(map(repr, added))} instead)" if added else ""
                found.append((f"{kind} {name}", f"{kind} {name!r} removed or renamed{instead}", name, added or None))
                continue
            if tensor.dtype != new.dtype:
                found.append((f"{kind} {name}", f"{kind} {name!r}: dtype {tensor.dtype} -> {new.dtype}",
                              tensor.dtype, new.dtype))
            if _dims(tensor) != _dims(new):
                found.append((f"{kind} {name}", f"{kind} {name!r}: dims {_dims(tensor)} -> {_dims(new)}",
                              _dims(tensor), _dims(new)))
            key = f"{kind} {name}"
            found.extend(_field_differences(baseline.tensor_fields.get(key, {}), candidate.tensor_fields.get(key, {}),
                                            key))
        found.extend((f"{kind} {name}", f"{kind} {name!r} added", None, name) for name in added)
    return found


def _batching_differences(baseline: ServedInterface, candidate: ServedInterface) -> list[Difference]:
    found: list[Difference] = []
    if baseline.batch_axis != candidate.batch_axis:
        found.append(("batch axis", f"batch axis {baseline.batch_axis} -> {candidate.batch_axis} (a client "
                                    "sends requests with a different rank)", baseline.batch_axis, candidate.batch_axis))
    if baseline.max_batch_size != candidate.max_batch_size:
        found.append(("max_batch_size", f"max_batch_size {baseline.max_batch_size} -> {candidate.max_batch_size}",
                      baseline.max_batch_size, candidate.max_batch_size))
    return found


def _label_differences(baseline: ServedInterface, candidate: ServedInterface) -> list[Difference]:
    found: list[Difference] = []
    if baseline.label_output != candidate.label_output:
        found.append(("labels output", f"labels are on output {baseline.label_output!r} -> {candidate.label_output!r}",
                      baseline.label_output, candidate.label_output))
    if baseline.labels != candidate.labels:
        if sorted(baseline.labels) == sorted(candidate.labels):
            message = f"class order changed in labels.txt: {baseline.labels} -> {candidate.labels}"
        else:
            gone = [c for c in baseline.labels if c not in candidate.labels]
            new = [c for c in candidate.labels if c not in baseline.labels]
            message = f"labels changed: removed {gone or 'none'}, added {new or 'none'}"
        found.append(("labels", message, baseline.labels, candidate.labels))
    return found


def _preprocess_differences(baseline: ServedInterface, candidate: ServedInterface) -> list[Difference]:
    before, after = baseline.preprocess, candidate.preprocess
    if before == after:
        return []
    if before is None or after is None:
        return [("preprocess.json", f"preprocess.json {'added' if before is None else 'removed'}",
                 before is not None, after is not None)]
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return [("preprocess.json", f"preprocess.json changed in {', '.join(map(repr, keys))}", keys, keys)]


def _field_differences(before: dict[str, Any], after: dict[str, Any], where: str) -> list[Difference]:
    return [(f"{where} {key}", f"{where}: {key} {before.get(key)!r} -> {after.get(key)!r}", before.get(key),
             after.get(key)) for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]


def _permutation_finding(permutation: dict) -> Finding:
    mapping = permutation.get("mapping", {})
    moved = [f"candidate class {cand} behaves like N's class {base}" for cand, base in mapping.items() if cand != base]
    return Finding(name="class order", outcome="FAIL",
                   message="class order changed with labels.txt unchanged: " + "; ".join(moved),
                   extra={"permutation": permutation})


def _reason(outcome: GateOutcome, findings: list[Finding], allow_change: str | None) -> str:
    if outcome == "PASS" and allow_change and len(findings) > 1:
        return f"{len(findings) - 1} difference(s), declared: {allow_change}"
    if outcome == "PASS":
        return findings[0].message
    deciding = [f for f in findings if f.outcome == outcome]
    more = f" (and {len(deciding) - 1} more)" if len(deciding) > 1 else ""
    return deciding[0].message + more
