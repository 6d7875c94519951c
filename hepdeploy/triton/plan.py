"""The publication plan: every model one publish writes, made and checked before anything is written.

``triton add``, the build and every twin come here. A caller describes what it wants published
(:class:`ModelRequest` for one model, :class:`PublicationRequest` for a model and its twins, its
preprocessing and its ensemble); :func:`plan_publication` turns that into :class:`ModelPlan` s, pure:
names, tensors against the spec, configs, warm-up data, twins and plan metadata are all checked and
nothing touches the repository. :func:`hepdeploy.triton.repository.publish` then stages every
planned model and swaps them in together.

This module and the platform registry are the only places that know how a twin is named: every
other reader asks a version's manifest for its ``role`` and ``twin_of``.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hepdeploy.artifacts import Sidecar, read_artifact, read_engine_sidecar
from hepdeploy.errors import BadInputError, HepDeployError
from hepdeploy.fsutil import check_input_file, check_safe_name, missing
from hepdeploy.plan_compat import PlanMetadata, check_capability_key, plan_metadata_of
from hepdeploy.platforms import platform_for_file, triton_platform
from hepdeploy.spec import ModelSpec, TensorSpec, TritonSpec
from hepdeploy.triton.config import (
    Kind,
    VersionFiles,
    WarmupSample,
    build_model_config,
    warmup_samples,
)
from hepdeploy.triton.layout import MANIFEST_NAME, Role
from hepdeploy.triton.python_backend import (
    MODEL_PY_FILENAME,
    model_py_text,
    python_backend_config,
    tensor_specs_of_config,
)

if TYPE_CHECKING:
    import numpy as np
    from tritonclient.grpc import model_config_pb2

log = logging.getLogger("hepdeploy.triton.plan")

# How twins are named: <name>_cpu serves on CPU servers, <name>_py in Triton's Python backend.
TWIN_SUFFIXES: dict[Role, str] = {"cpu_twin": "_cpu", "python_twin": "_py"}


def twin_name(model_name: str, role: Role) -> str:
    """The name of ``model_name``'s twin in ``role`` (``facile`` -> ``facile_cpu``, ``facile_py``)."""
    return check_safe_name(f"{model_name}{TWIN_SUFFIXES[role]}", "Triton model name")


@dataclass(frozen=True)
class ModelRequest:
    """One model a caller wants published.

    ``source`` is the model file (or SavedModel folder), or the bytes of a file that exists nowhere else
    (an ensemble's wiring, then ``model_filename`` names it). ``config`` replaces the generated config (a
    Python-backend model's, an ensemble's); ``extra_files`` go into the version folder beside the model.
    """

    source: Path | bytes
    name: str
    spec: ModelSpec | None = None
    triton: TritonSpec | None = None
    kind: Kind = "gpu"
    platform: str | None = None
    verdict: Mapping[str, Any] | None = None
    warmup_inputs: Mapping[str, np.ndarray] | None = None
    cc_model_files: Mapping[str, Path] = field(default_factory=dict)
    role: Role = "model"
    twin_of: str | None = None
    config: model_config_pb2.ModelConfig | None = None
    model_filename: str | None = None
    extra_files: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def settings(self) -> TritonSpec:
        """The triton block: the request's, else the spec's, else the defaults."""
        return self.triton or (self.spec.triton if self.spec is not None else TritonSpec())


@dataclass(frozen=True)
class ModelPlan:
    """One model as it will be published: its config and every file of its new version, all checked."""

    name: str
    role: Role
    twin_of: str | None
    kind: Kind
    platform: str
    config: model_config_pb2.ModelConfig
    # The new version folder: file name -> the file (or folder) to copy, or its bytes.
    files: dict[str, Path | bytes]
    warmup: list[WarmupSample]
    labels: list[str]
    checksum_agent: bool
    source_path: str
    sidecar: Sidecar | None
    verdict: Mapping[str, Any] | None
    plans: dict[str, PlanMetadata]
    spec: ModelSpec | None  # for the model folder's README (its perf_analyzer command)


@dataclass(frozen=True)
class PublicationRequest:
    """A model and what is published with it.

    ``cpu_twin``: a file (e.g. the int8-cpu variant) served as ``<name>_cpu`` on CPU instances.
    ``python_twin``: the ONNX file the ``<name>_py`` twin runs in Triton's Python backend (with the warm-up
    data only when ``python_twin_warmup``). ``extra``: further models of the same publish (preprocessing,
    ensemble) in the order they are made visible.
    """

    model: ModelRequest
    cpu_twin: Path | None = None
    cpu_twin_verdict: Mapping[str, Any] | None = None
    python_twin: Path | None = None
    python_twin_warmup: bool = True
    extra: Sequence[ModelRequest] = ()


def plan_publication(request: PublicationRequest) -> list[ModelPlan]:
    """Every model of ``request``, planned and checked: the model first, then its twins, then ``extra``.
    A problem with any of them is raised (naming the model) before anything is written."""
    main = request.model
    requests = [main]
    if request.cpu_twin is not None:
        requests.append(replace(main, source=Path(request.cpu_twin), name=twin_name(main.name, "cpu_twin"),
                                triton=main.settings.model_copy(update={"platform": None}), kind="cpu",
                                platform=None, verdict=request.cpu_twin_verdict,
                                cc_model_files={}, role="cpu_twin", twin_of=main.name, config=None,
                                model_filename=None, extra_files={}))
    if request.python_twin is not None:
        try:
            requests.append(python_twin_request(main, Path(request.python_twin), request.python_twin_warmup))
        except HepDeployError as error:
            raise type(error)(f"{twin_name(main.name, 'python_twin')}: {error}") from error.__cause__
    requests.extend(request.extra)
    names = [r.name for r in requests]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise BadInputError(f"one publish names model(s) {', '.join(clashes)} twice")
    plans = []
    for each in requests:
        try:
            plans.append(plan_model(each))
        except HepDeployError as error:
            raise type(error)(f"{each.name}: {error}") from error.__cause__
    return plans


def python_twin_request(main: ModelRequest, onnx_file: Path, with_warmup: bool = True) -> ModelRequest:
    """The Python-backend twin of ``main``: the ONNX model's config (as the ONNX Runtime backend would serve
    it, on CPU instances) turned into a Python-backend config, model.py beside the ONNX file."""
    if onnx_file.suffix.lower() != ".onnx":
        raise BadInputError(f"{onnx_file}: a Python-backend twin runs an ONNX model; this is not an .onnx file")
    name = twin_name(main.name, "python_twin")
    warmup = main.warmup_inputs if with_warmup else None
    artifact = read_artifact(onnx_file)
    onnx_config = build_model_config(artifact, main.settings, name=main.name, platform="onnxruntime_onnx",
                                     kind="cpu", warmup_inputs=warmup)
    return replace(main, source=onnx_file, name=name, kind="cpu", platform="python", warmup_inputs=warmup,
                   cc_model_files={}, role="python_twin", twin_of=main.name, model_filename=None,
                   config=python_backend_config(onnx_config, name),
                   extra_files={MODEL_PY_FILENAME: model_py_text().encode("utf-8")})


def plan_model(request: ModelRequest) -> ModelPlan:
    """One model's plan: every check that needs no staging (names, tensors against the spec, the config, the
    warm-up data, plan metadata against compute capabilities)."""
    name = check_safe_name(request.name, "Triton model name")
    source = request.source
    if isinstance(source, Path):
        if not source.exists():
            raise BadInputError(missing(source, "model file"))
        if not source.is_dir():
            check_input_file(source, "model file")
    settings = request.settings
    platform = _platform(request)
    filename = _model_filename(request, platform)
    for extra in request.extra_files:
        check_safe_name(extra, "extra file name")
        if extra in (filename, MANIFEST_NAME):
            raise BadInputError(f"extra file {extra!r} would overwrite the model file or the manifest")
    inputs, outputs, sidecar = _tensors_for(request, platform)
    cc_names = {check_capability_key(cap): f"model_sm{cap.replace('.', '')}.plan" for cap in request.cc_model_files}
    plans = _plans_metadata(filename, sidecar, request.cc_model_files, cc_names) if platform == "tensorrt_plan" else {}
    config = request.config
    if config is None:
        files = VersionFiles(model_filename=filename if platform != "python" else None,
                             cc_model_filenames=cc_names, plan=plans.get(filename))
        config = build_model_config((inputs, outputs), settings, name=name, platform=platform, kind=request.kind,
                                    warmup_inputs=request.warmup_inputs, files=files)
    elif config.name != name:
        raise BadInputError(f"config name {config.name!r} differs from the model name {name!r}")
    batched = config.max_batch_size > 0
    warmup = warmup_samples(inputs, request.warmup_inputs, batched) \
        if (config.model_warmup and request.warmup_inputs) else []
    version_files: dict[str, Path | bytes] = {filename: source}
    version_files.update({cc_names[cap]: Path(path) for cap, path in request.cc_model_files.items()})
    version_files.update(request.extra_files)
    return ModelPlan(
        name=name, role=request.role, twin_of=request.twin_of, kind=request.kind, platform=platform, config=config,
        files=version_files, warmup=warmup,
        labels=list(settings.labels) if any(o.label_filename for o in config.output) else [],
        checksum_agent=settings.checksum_agent and config.backend != "python",
        source_path=str(source.resolve()) if isinstance(source, Path) else f"<{filename}>",
        sidecar=sidecar, verdict=request.verdict, plans=plans, spec=request.spec,
    )


def _platform(request: ModelRequest) -> str:
    config = request.config
    named = request.platform or (config.platform or config.backend if config is not None else None)
    if named is None and isinstance(request.source, Path):
        named = request.settings.platform or platform_for_file(request.source)
    if named is None:
        raise BadInputError(f"{request.name}: a model given as bytes needs its platform")
    return triton_platform(named).name


def _model_filename(request: ModelRequest, platform: str) -> str:
    """The model file's name in the version folder: the request's, else what the platform loads by default
    (a Python-backend twin's ONNX file keeps the ONNX name model.py reads)."""
    filename = request.model_filename
    if filename is None:
        entry = triton_platform(platform_for_file(request.source) if platform == "python" else platform)
        filename = entry.default_filename
    if filename is None:
        raise BadInputError(f"{request.name}: a {platform} model needs its file name")
    return check_safe_name(filename, "model file name")


def _tensors_for(request: ModelRequest, platform: str) -> tuple[list[TensorSpec], list[TensorSpec], Sidecar | None]:
    """Tensor specs for the config, and the sidecar (if any) of the model file."""
    source, spec = request.source, request.spec
    if not isinstance(source, Path):
        return _tensors_of_config(request)
    if source.suffix.lower() == ".onnx" and source.is_file():
        artifact = read_artifact(source)
        inputs, outputs = list(artifact.sidecar.inputs), list(artifact.sidecar.outputs)
        problems = spec.tensor_problems(inputs, outputs, str(source)) if spec is not None else []
        if problems:  # the config is written from the model's tensors: a spec that says otherwise is wrong
            raise BadInputError(problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
        return inputs, outputs, artifact.sidecar
    if request.config is not None:
        return _tensors_of_config(request)
    sidecar = read_engine_sidecar(source) if source.is_file() else None
    if sidecar is not None:
        return list(sidecar.inputs), list(sidecar.outputs), sidecar
    if spec is None:
        raise BadInputError(f"{source}: a {platform} model needs --spec for its input and output tensors")
    return list(spec.inputs), list(spec.outputs), None


def _tensors_of_config(request: ModelRequest) -> tuple[list[TensorSpec], list[TensorSpec], None]:
    """A model whose config is given (preprocessing, ensemble): its tensors are the config's."""
    if request.config is None:
        raise BadInputError(f"{request.name}: a model given as bytes needs its config")
    inputs, outputs = tensor_specs_of_config(request.config)
    return inputs, outputs, None


def _plans_metadata(filename: str, sidecar: Sidecar | None, cc_model_files: Mapping[str, Path],
                    cc_names: Mapping[str, str]) -> dict[str, PlanMetadata]:
    """Every published plan's recorded metadata (file name in the version -> metadata).

    A cc_model_filenames key is checked against the compute capability its plan was built
    on, so a plan for 9.0 can never be listed under 8.0 (Triton would load it there and fail).
    """
    plans: dict[str, PlanMetadata] = {}
    own = plan_metadata_of(sidecar) if sidecar is not None else None
    if own is not None:
        plans[filename] = own
    for capability, path in cc_model_files.items():
        check_capability_key(capability)
        metadata = plan_metadata_of(read_engine_sidecar(Path(path)))
        if metadata is None:
            continue
        if metadata.compute_capability != capability:
            raise BadInputError(f"{path}: built on compute capability {metadata.compute_capability} "
                                f"({metadata.gpu_name or 'GPU'}), cannot be published for {capability}")
        plans[cc_names[capability]] = metadata
    return plans


def spec_publication(spec: ModelSpec, variants: Mapping[str, Path], *,
                     verdicts: Mapping[str, Mapping[str, Any] | None] | None = None,
                     warmup_inputs: Mapping[str, np.ndarray] | None = None,
                     fallback_variant: str = "fp32") -> PublicationRequest:
    """What one spec publishes, from the variant files a build made (variant name -> file).

    ``<name>`` (``triton.model_name`` or the spec's name) serves ``triton.variant`` on GPUs (a ``tensorrt``
    variant is a .plan; when the wanted variant was not built, e.g. no GPU for the plan, ``fallback_variant``
    is served and a warning logged); with ``triton.cpu_twin``, ``<name>_cpu`` serves the twin's variant on
    CPUs; with ``triton.python_backend``, ``<name>_py`` runs the served ONNX file (else the fallback's) in
    Triton's Python backend. Each version's manifest records the verdict of the variant it serves.
    """
    triton, verdicts = spec.triton, verdicts or {}
    name = triton.model_name or spec.name
    wanted = triton.variant
    if wanted not in variants:
        if fallback_variant not in variants:
            tried = repr(wanted) if wanted == fallback_variant else f"{wanted!r} nor {fallback_variant!r}"
            raise BadInputError(f"{name}: no variant to serve: {tried} was not built or did not pass validation")
        log.warning("%s: variant %s was not built; serving %s instead", name, wanted, fallback_variant)
        wanted = fallback_variant
    served = Path(variants[wanted])
    main = ModelRequest(served, name, spec=spec, triton=triton, verdict=verdicts.get(wanted),
                        warmup_inputs=warmup_inputs)
    cpu_twin = None
    if triton.cpu_twin is not None:
        twin_file = variants.get(triton.cpu_twin.variant)
        if twin_file is not None and Path(twin_file).suffix == ".onnx":
            cpu_twin = Path(twin_file)
        else:
            log.warning("%s: CPU twin variant %s was not built; no CPU twin published", name, triton.cpu_twin.variant)
    python_twin = None
    if triton.python_backend:
        onnx_file = served if served.suffix == ".onnx" else variants.get(fallback_variant)
        if onnx_file is None:
            log.warning("%s: no ONNX variant for the Python-backend twin; not published", name)
        else:
            python_twin = Path(onnx_file)
    cpu_verdict = verdicts.get(triton.cpu_twin.variant) if cpu_twin is not None and triton.cpu_twin else None
    return PublicationRequest(main, cpu_twin=cpu_twin, cpu_twin_verdict=cpu_verdict, python_twin=python_twin)
