"""Preprocessing served: a Triton ensemble that takes raw per-particle features.

``hepdeploy triton add REPO MODEL --spec S --preprocess preprocess.json`` publishes, beside the model:

* ``<name>_preprocess``: a Python-backend model whose version folder holds ``model.py``,
  ``weaver_rules.py`` (a verbatim copy of :mod:`hepdeploy.weaver`, which ``model.py`` imports) and the
  ``preprocess.json``. It takes ``G_raw``/``G_length`` per group that is not a mask (the interface is
  :mod:`hepdeploy.backend.served_preprocess`) and returns every group as the model's padded,
  normalised input: the lengths by the group's rule over the events of the request, masks from their
  owner's lengths, NaN/Inf by the convention (cmssw | weaver) recorded in its config. The served
  preprocessing is thus the very code hepdeploy runs inline on ROOT events (:mod:`hepdeploy.ntuple`).
* ``<name>_ensemble``: platform ``ensemble``, raw inputs in, the model's outputs out, two steps:
  ``<name>_preprocess`` then the model (``<name>``, or its Python-backend twin ``<name>_py``, which
  servers without the ONNX Runtime backend load). Its version folder holds ``ensemble.json``, the
  wiring in words.

Both configs are ModelConfig messages written through the protobuf schema (:mod:`.config`), and both
models are published as the other models are (:func:`~hepdeploy.triton.repository.publish_model`:
staged, versioned, one atomic rename, a manifest per version). :func:`plan_ensemble` makes every
check and every config before anything is written, so a json that does not fit the model is refused
in one line with the repository untouched.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepdeploy import __version__, weaver
from hepdeploy.artifacts import read_artifact
from hepdeploy.backend.served_preprocess import ServedPreprocess, served_preprocess
from hepdeploy.errors import BadInputError, HepDeployError
from hepdeploy.fsutil import check_safe_name, sha256_file
from hepdeploy.graph_bounds import graph_dim_bounds, length_problems
from hepdeploy.ntuple import load_preprocess
from hepdeploy.spec import ModelSpec, TritonSpec
from hepdeploy.triton.config import build_model_config, model_config_schema
from hepdeploy.triton.plan import ModelRequest, twin_name
from hepdeploy.triton.python_backend import TENSOR_IO_SOURCE, environment_site_packages
from hepdeploy.weaver import CONVENTIONS

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

PREPROCESS_SUFFIX = "_preprocess"
ENSEMBLE_SUFFIX = "_ensemble"
PREPROCESS_JSON = "preprocess.json"
RULES_FILENAME = "weaver_rules.py"
MODEL_PY_FILENAME = "model.py"
WIRING_FILENAME = "ensemble.json"
# Parameters of the preprocess model's config (model.py reads them; validate reads the convention).
PARAM_CONVENTION = "convention"
PARAM_GROUPS = "groups"
PARAM_JSON = "preprocess_file"
PARAM_RULES = "rules_file"
PARAM_JSON_SHA256 = "preprocess_sha256"

_MODEL_PY = '''"""Triton Python-backend model written by hepdeploy {version}: weaver-style preprocessing.

Turns raw per-particle values into a model's padded, normalised inputs with the rules of the
preprocess.json next to this file, through weaver_rules.py: a verbatim copy of hepdeploy.weaver, the
code hepdeploy runs when it preprocesses ROOT events inline. For each group G that is not a mask it
takes G_raw [batch, C, n] (values beyond an event's length are ignored) and G_length [batch, 1]
(a flat group: G_raw [batch, C] only); it returns every group, [batch, C, length] with the length by
the group's rule over the request's events (or the model's fixed length), masks from their owner's
lengths. The convention (cmssw | weaver) and the groups are parameters of config.pbtxt. Each request
is computed on its own: its answer never depends on other requests.
"""
import importlib.util
import json
import os
import sys

sys.dont_write_bytecode = True  # nothing written into the model repository

# Where numpy was installed when this file was written; used only when the stub's Python cannot
# import it (the stub ignores PYTHONPATH). $HEPDEPLOY_SITE_PACKAGES is tried first.
WRITER_SITE_PACKAGES = {site_packages!r}

try:
    import numpy as np
except ImportError:
    for _path in [p for p in os.environ.get("HEPDEPLOY_SITE_PACKAGES", "").split(os.pathsep) if p] + list(
            WRITER_SITE_PACKAGES):
        if os.path.isdir(_path) and _path not in sys.path:
            sys.path.append(_path)
    import numpy as np

import triton_python_backend_utils as pb_utils  # noqa: E402

{tensor_io}

def _load_rules(path):
    """weaver_rules.py under a name of its own (the stub may hold other models' copies)."""
    name = "hepdeploy_weaver_rules_" + str(abs(hash(path)))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {{k: v.get("string_value", "") for k, v in config.get("parameters", {{}}).items()}}
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.rules = _load_rules(os.path.join(folder, parameters["{rules_param}"]))
        self.config = self.rules.load_config(os.path.join(folder, parameters["{json_param}"]))
        self.convention = parameters["{convention_param}"]
        if self.convention not in self.rules.CONVENTIONS:
            raise ValueError(f"unknown convention {{self.convention!r}}")
        self.groups = json.loads(parameters["{groups_param}"])
        self.outputs = [t["name"] for t in config["output"]]
        missing = [g["name"] for g in self.groups if g["name"] not in self.config.groups]
        if missing:
            raise ValueError(f"preprocess.json has no group(s) {{', '.join(missing)}}")

    def _one(self, request):
        tensors, made = {{}}, {{}}
        for entry in self.groups:
            if entry["mask_of"] is not None:
                continue
            name = entry["name"]
            group = self.config.groups[name]
            raw = _input_array(request, name + "_raw")
            if entry["flat"]:
                if raw.ndim != 2 or raw.shape[1] != entry["channels"]:
                    raise ValueError(f"{{name}}_raw has shape {{list(raw.shape)}}, expected [batch, {{entry['channels']}}]")
                columns = [raw[:, c] for c in range(raw.shape[1])]
                tensors[name] = self.rules.group_tensor(group, columns, None, self.convention)
                continue
            if raw.ndim != 3 or raw.shape[1] != entry["channels"]:
                raise ValueError(f"{{name}}_raw has shape {{list(raw.shape)}}, expected [batch, {{entry['channels']}}, n]")
            lengths = _input_array(request, name + "_length").reshape(-1)
            if lengths.shape[0] != raw.shape[0]:
                raise ValueError(f"{{name}}_length has {{lengths.shape[0]}} values for {{raw.shape[0]}} events")
            if (lengths < 0).any():
                raise ValueError(f"{{name}}_length has a negative length")
            columns, counts = self.rules.columns_from_padded(raw, lengths)
            length = entry["length"] if entry["length"] is not None else group.target_length(counts)
            tensors[name] = self.rules.group_tensor(group, columns, counts, self.convention, length)
            made[name] = (counts, length)
        for entry in self.groups:
            if entry["mask_of"] is None:
                continue
            counts, length = made[entry["mask_of"]]
            length = entry["length"] if entry["length"] is not None else length
            ones = np.ones(int(counts.sum()), np.float32)
            tensors[entry["name"]] = self.rules.group_tensor(
                self.config.groups[entry["name"]], [ones], counts, self.convention, length)
        for entry in self.groups:
            if entry["layout"] == "channels_last" and not entry["flat"]:
                tensors[entry["name"]] = tensors[entry["name"]].transpose(0, 2, 1)
        return [_output_tensor(n, np.ascontiguousarray(tensors[n], dtype=np.float32)) for n in self.outputs]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._one(request)))
            except Exception as error:
                text = str(error).strip()
                first = text.splitlines()[0] if text else type(error).__name__
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"preprocess: {{first}}")))
        return responses

    def finalize(self):
        self.rules = None
'''


def preprocess_name(model_name: str) -> str:
    return check_safe_name(f"{model_name}{PREPROCESS_SUFFIX}", "Triton model name")


def ensemble_name(model_name: str) -> str:
    return check_safe_name(f"{model_name}{ENSEMBLE_SUFFIX}", "Triton model name")


def preprocess_model_py(site_packages: list[str] | None = None) -> str:
    """The preprocess model's ``model.py`` (deterministic for a given environment)."""
    return _MODEL_PY.format(
        version=__version__, rules_param=PARAM_RULES, json_param=PARAM_JSON, convention_param=PARAM_CONVENTION,
        groups_param=PARAM_GROUPS, tensor_io=TENSOR_IO_SOURCE,
        site_packages=list(site_packages if site_packages is not None else environment_site_packages()))


def weaver_rules_bytes() -> bytes:
    """A verbatim copy of :mod:`hepdeploy.weaver` (numpy and the standard library only)."""
    return Path(weaver.__file__).read_bytes()


def _add_tensor(message: Any, name: str, data_type: str, dims: list[int]) -> None:
    message.name = name
    message.data_type = model_config_schema().DataType.Value(data_type)
    message.dims.extend(dims)


def preprocess_config(served: ServedPreprocess, model_config: model_config_pb2.ModelConfig, *, name: str,
                      convention: str, json_sha256: str) -> model_config_pb2.ModelConfig:
    """The preprocess model's config: raw inputs in, the model's inputs (same dims) out, CPU instances,
    the convention and groups as parameters."""
    pb2 = model_config_schema()
    config = pb2.ModelConfig()
    config.name = check_safe_name(name, "Triton model name")
    config.backend = "python"
    config.max_batch_size = model_config.max_batch_size
    for group in served.raw_groups:
        _add_tensor(config.input.add(), group.raw_name, "TYPE_FP32", [group.channels] + ([] if group.flat else [-1]))
        if not group.flat:
            _add_tensor(config.input.add(), group.length_name, "TYPE_INT32", [1])
    model_inputs = {t.name: t for t in model_config.input}
    for group in served.groups:
        _add_tensor(config.output.add(), group.name, "TYPE_FP32", list(model_inputs[group.name].dims))
    instances = config.instance_group.add()
    instances.kind = pb2.ModelInstanceGroup.Kind.Value("KIND_CPU")
    instances.count = 1
    config.parameters[PARAM_CONVENTION].string_value = convention
    config.parameters[PARAM_GROUPS].string_value = json.dumps([g.as_dict() for g in served.groups])
    config.parameters[PARAM_JSON].string_value = PREPROCESS_JSON
    config.parameters[PARAM_RULES].string_value = RULES_FILENAME
    config.parameters[PARAM_JSON_SHA256].string_value = json_sha256
    return config


def ensemble_config(served: ServedPreprocess, model_config: model_config_pb2.ModelConfig, *, name: str,
                    preprocess_model: str, model_step: str) -> model_config_pb2.ModelConfig:
    """The ensemble: raw inputs, the model's outputs (label files kept), preprocess -> model."""
    pb2 = model_config_schema()
    config = pb2.ModelConfig()
    config.name = check_safe_name(name, "Triton model name")
    config.platform = "ensemble"
    config.max_batch_size = model_config.max_batch_size
    first = config.ensemble_scheduling.step.add()
    first.model_name = preprocess_model
    first.model_version = -1
    for group in served.raw_groups:
        _add_tensor(config.input.add(), group.raw_name, "TYPE_FP32", [group.channels] + ([] if group.flat else [-1]))
        first.input_map[group.raw_name] = group.raw_name
        if not group.flat:
            _add_tensor(config.input.add(), group.length_name, "TYPE_INT32", [1])
            first.input_map[group.length_name] = group.length_name
    second = config.ensemble_scheduling.step.add()
    second.model_name = model_step
    second.model_version = -1
    for group in served.groups:
        first.output_map[group.name] = group.name  # the ensemble's inner tensor carries the input's name
        second.input_map[group.name] = group.name
    for output in model_config.output:
        message = config.output.add()
        message.CopyFrom(output)
        second.output_map[output.name] = output.name
    return config


@dataclass
class EnsemblePlan:
    """Everything an ensemble publish writes, made and checked before anything is written."""

    name: str  # the model's Triton name
    preprocess_json: Path
    served: ServedPreprocess
    convention: str
    preprocess_config: Any
    ensemble_config: Any
    model_step: str
    spec: ModelSpec
    triton: TritonSpec
    # Lines where the json's lengths let batches through that the graph cannot run (its dim bounds).
    warnings: list[str] = field(default_factory=list)

    @property
    def preprocess_name(self) -> str:
        return self.preprocess_config.name

    @property
    def ensemble_name(self) -> str:
        return self.ensemble_config.name

    def wiring(self) -> dict[str, Any]:
        """``ensemble.json``: the ensemble in words."""
        return {
            "ensemble": self.ensemble_name,
            "hepdeploy_version": __version__,
            "steps": [self.preprocess_name, self.model_step],
            "convention": self.convention,
            "preprocess_sha256": self.preprocess_config.parameters[PARAM_JSON_SHA256].string_value,
            "weaver_rules_sha256": hashlib.sha256(weaver_rules_bytes()).hexdigest(),
            "inputs": [t.name for t in self.ensemble_config.input],
            "outputs": [t.name for t in self.ensemble_config.output],
            "groups": [g.as_dict() for g in self.served.groups],
        }


def plan_ensemble(onnx_path: Path, preprocess_json: Path, *, name: str, spec: ModelSpec,
                  triton: TritonSpec | None = None, convention: str | None = None,
                  python_backend: bool = False, kind: str = "gpu") -> EnsemblePlan:
    """Check ``preprocess_json`` against the ONNX model and make both configs (BadInputError, one line,
    and nothing written, when they do not fit). ``convention`` defaults to the spec's
    ``data.preprocess.convention``, else cmssw; with ``python_backend`` the ensemble's model step is the
    Python-backend twin ``<name>_py``."""
    onnx_path, preprocess_json = Path(onnx_path), Path(preprocess_json)
    if onnx_path.suffix.lower() != ".onnx":
        raise BadInputError(f"{onnx_path}: --preprocess serves an ONNX model (the ensemble's model step); "
                            f"this is not an .onnx file")
    if convention is None:
        convention = spec.data.preprocess.convention if spec.data.preprocess is not None else "cmssw"
    if convention not in CONVENTIONS:
        raise BadInputError(f"convention {convention!r}: use one of {', '.join(CONVENTIONS)}")
    config = load_preprocess(preprocess_json)
    artifact = read_artifact(onnx_path)
    settings = triton or spec.triton
    served = served_preprocess(config, artifact.sidecar.inputs, spec.data, where=str(preprocess_json))
    try:
        model_config = build_model_config(artifact, settings, name=name, platform="onnxruntime_onnx",
                                          kind=kind)  # type: ignore[arg-type]
    except HepDeployError as error:
        raise BadInputError(f"{onnx_path}: {error}") from error
    if model_config.max_batch_size <= 0:
        raise BadInputError(f"{onnx_path}: a preprocessing ensemble needs a batched model (max_batch_size > 0)")
    model_step = twin_name(name, "python_twin") if python_backend else name
    inner = [g.name for g in served.groups]
    names = [t.raw_name for t in served.raw_groups] + [g.length_name for g in served.raw_groups if not g.flat] \
        + inner + [t.name for t in model_config.output]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise BadInputError(f"{preprocess_json}: the ensemble's tensor names clash ({', '.join(clashes)}): raw inputs "
                            f"are named G_raw and G_length, inner tensors after the groups, outputs after the model's")
    pre = preprocess_config(served, model_config, name=preprocess_name(name), convention=convention,
                            json_sha256=sha256_file(preprocess_json))
    ensemble = ensemble_config(served, model_config, name=ensemble_name(name), preprocess_model=pre.name,
                               model_step=model_step)
    warnings = length_problems(config, artifact.sidecar.inputs, graph_dim_bounds(onnx_path), where=preprocess_json.name)
    return EnsemblePlan(name, preprocess_json, served, convention, pre, ensemble, model_step, spec, settings, warnings)


def ensemble_requests(plan: EnsemblePlan, *, verdict: Mapping[str, Any] | None = None) -> list[ModelRequest]:
    """``<name>_preprocess`` and then ``<name>_ensemble``, to be published with the model they feed (one
    publication plan: the ensemble's steps are found among the models staged with it)."""
    preprocess = ModelRequest(
        plan.preprocess_json, plan.preprocess_name, spec=plan.spec, triton=plan.triton, kind="cpu", verdict=verdict,
        platform="python", role="preprocess", config=plan.preprocess_config, model_filename=PREPROCESS_JSON,
        extra_files={MODEL_PY_FILENAME: preprocess_model_py().encode("utf-8"), RULES_FILENAME: weaver_rules_bytes()})
    # The ensemble holds no weights: no checksum agent; its version folder holds the wiring in words.
    ensemble = ModelRequest(
        (json.dumps(plan.wiring(), indent=2) + "\n").encode("utf-8"), plan.ensemble_name, spec=plan.spec,
        triton=plan.triton.model_copy(update={"checksum_agent": False}), kind="cpu", verdict=verdict,
        platform="ensemble", role="ensemble", config=plan.ensemble_config, model_filename=WIRING_FILENAME)
    return [preprocess, ensemble]
