"""``hepdeploy triton check``: is a model repository what a Triton server will load and run?

Checks, per model folder: the config parses with the schema; the model name is valid
and equals the folder name; version folders are numeric and not empty; the model file
for the platform is there; input/output names, data types and dims agree with the model
file; max_batch_size agrees with the model's batch axis; preferred batch sizes fit;
warm-up files have the announced size; checksums match the hepdeploy manifest (when one
is there: repositories hepdeploy did not write have none, which is fine); and finally
each ONNX model runs in ONNX Runtime at batch 1 and at the largest preferred batch, fed
from the warm-up data (or seeded samples).

TensorRT plans are checked from the metadata the manifest records for each plan (on any
machine): config <-> engine profile (max batch, dims), cc_model_filenames keys <-> the compute
capability each plan was built on, and, with a target Triton release, the TensorRT version.
A plan is deserialized only where TensorRT runs, on a GPU of the plan's compute capability;
elsewhere the check says "plan not loadable here: <reason>", which is a note, not a pass.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepdeploy.artifacts import load_onnx, tensor_specs_of
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner, check_in_child, ort_error_line
from hepdeploy.backend.trt import PlanLoader
from hepdeploy.errors import (
    DataError,
    HepDeployError,
    ModelLoadError,
    NativeCrashError,
    RepositoryError,
    SpecError,
    UnsafeNameError,
    first_line,
)
from hepdeploy.fsutil import check_safe_name, file_digest, sha256_file
from hepdeploy.graph_bounds import bound_from_error, graph_dim_bounds, minimums
from hepdeploy.plan_compat import (
    ConfigTensor,
    PlanMetadata,
    ServerRelease,
    check_capability_key,
    config_profile_problems,
    metadata_by_file,
    ort_tensorrt_problem,
    plan_problems,
)
from hepdeploy.platforms import PLATFORMS
from hepdeploy.registry import named_function
from hepdeploy.spec import TensorSpec
from hepdeploy.triton.config import (
    CHECKSUM_AGENT,
    WARMUP_FOLDER,
    config_platform,
    model_filename,
    numpy_dtype_of,
    read_model_config,
)
from hepdeploy.triton.layout import (
    CONFIG_NAME,
    INNER_STAGING,
    MANIFEST_NAME,
    Manifest,
    read_manifest,
    version_folders,
)

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

# Folders Triton itself skips inside a model folder.
_TRITON_MODEL_SUBFOLDERS = {WARMUP_FOLDER, "initial_state", "configs"}
# Without preferred sizes, run at most this batch (max_batch_size may be 160000).
_MAX_RUN_BATCH = 1024
_SAMPLED_DIM = 8  # a variable dim without warm-up data is sampled at this size, or at the graph's bound


@dataclass(frozen=True)
class Problem:
    model: str
    path: Path
    message: str

    def line(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class CheckEnvironment:
    """Where the repository will be served (``release``) and how plans load here (made on first use)."""

    release: ServerRelease | None = None
    plan_loader: PlanLoader | None = None

    def loader(self) -> PlanLoader:
        if self.plan_loader is None:
            self.plan_loader = PlanLoader.here()
        return self.plan_loader


@dataclass
class CheckReport:
    repo: Path
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    versions: int = 0
    runs: int = 0
    # Models staged by the same publish (not yet in ``repo``): an ensemble's steps are looked up here first.
    staged: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def model_folder(self, name: str) -> Path:
        """Where the model ``name`` is: staged by the same publish, else in the repository."""
        if self.staged is not None and (self.staged / name).is_dir():
            return self.staged / name
        return self.repo / name

    def summary(self) -> str:
        return (
            f"{self.repo}: {len(self.models)} model(s), {self.versions} version(s), {self.runs} model run(s), "
            f"{len(self.problems)} problem(s)"
        )


class ModelChecker:
    """Checks one model folder; collects problems and notes."""

    def __init__(self, model_dir: Path, report: CheckReport, run_models: bool,
                 environment: CheckEnvironment | None = None) -> None:
        self.dir = model_dir
        self.name = model_dir.name
        self.report = report
        self.run_models = run_models
        self.environment = environment or CheckEnvironment()
        self.problems: list[Problem] = []

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(Problem(self.name, path, message))

    def note(self, message: str) -> None:
        self.report.notes.append(f"{self.dir}: {message}")

    # -- structure ---------------------------------------------------------------------------

    def check(self) -> list[Problem]:
        try:
            check_safe_name(self.name, "model name")
        except UnsafeNameError as error:
            self.problem(self.dir, str(error))
        config_path = self.dir / CONFIG_NAME
        if not config_path.is_file():
            self.problem(config_path, "no config.pbtxt (hepdeploy checks need one; Triton can only auto-complete some)")
            return self.problems
        try:
            config = read_model_config(config_path)
        except RepositoryError as error:
            self.problem(config_path, str(error).removeprefix(f"{config_path}: "))
            return self.problems
        if config.name and config.name != self.name:
            self.problem(config_path, f"config name {config.name!r} differs from the folder name {self.name!r}")
        platform = config_platform(config)
        if not platform:
            self.problem(config_path, "config sets neither platform nor backend")
            return self.problems
        self._check_batching(config, config_path)
        self._check_warmup(config)
        self._check_labels(config)
        self._check_checksums(config)
        versions = self._versions(config)
        served = _served_versions(config, [int(v.name) for v in versions])
        for version_dir in versions:
            self.report.versions += 1
            self._check_version(config, platform, version_dir, served=int(version_dir.name) in served)
        return self.problems

    def check_recorded_digests(self) -> list[Problem]:
        """Only the published files against what was recorded for them when they were published: each
        version's manifest (sha256, missing and stray files) and the config's checksum agent (MD5).
        The gate's integrity check reads this; nothing is loaded or run."""
        config_path = self.dir / CONFIG_NAME
        try:
            self._check_checksums(read_model_config(config_path))
        except RepositoryError as error:
            self.problem(config_path, str(error).removeprefix(f"{config_path}: "))
        for version in version_folders(self.dir):
            self._check_manifest(self.dir / str(version))
        return self.problems

    def check_ensemble(self, config: model_config_pb2.ModelConfig, path: Path) -> None:
        """Every step's model is in the repository with the tensors its maps name; every step input is
        an ensemble input or an earlier step's output; every ensemble output is made by a step."""
        available = {t.name for t in config.input}
        steps = list(config.ensemble_scheduling.step)
        if not steps:
            self.problem(path, "ensemble has no steps")
        for index, step in enumerate(steps, 1):
            step_config_path = self.report.model_folder(step.model_name) / CONFIG_NAME
            try:
                step_config = read_model_config(step_config_path)
            except RepositoryError:
                self.problem(path, f"ensemble step {index}: model {step.model_name!r} is not in the repository "
                                   "(or its config.pbtxt does not read)")
                continue
            inputs, outputs = {t.name for t in step_config.input}, {t.name for t in step_config.output}
            for tensor, source in step.input_map.items():
                if tensor not in inputs:
                    self.problem(path, f"ensemble step {index}: {step.model_name} has no input {tensor!r}")
                if source not in available:
                    self.problem(path, f"ensemble step {index}: {source!r} is neither an ensemble input nor an "
                                       "earlier step's output")
            for tensor, target in step.output_map.items():
                if tensor not in outputs:
                    self.problem(path, f"ensemble step {index}: {step.model_name} has no output {tensor!r}")
                available.add(target)
        for tensor in config.output:
            if tensor.name not in available:
                self.problem(path, f"ensemble output {tensor.name!r} is made by no step")

    def _check_batching(self, config: model_config_pb2.ModelConfig, path: Path) -> None:
        max_batch = config.max_batch_size
        if max_batch < 0:
            self.problem(path, f"max_batch_size {max_batch} is negative")
        if config.HasField("dynamic_batching"):
            # Triton accepts a dynamic batcher without batching (max_batch_size 0: a request queue),
            # but refuses any preferred size above max_batch_size.
            preferred = list(config.dynamic_batching.preferred_batch_size)
            too_big = [p for p in preferred if p > max_batch]
            if too_big:
                self.problem(path, f"preferred_batch_size {too_big} > max_batch_size {max_batch}")
        for tensor in [*config.input, *config.output]:
            if not tensor.dims:
                self.problem(path, f"tensor {tensor.name!r} has no dims")

    def _check_warmup(self, config: model_config_pb2.ModelConfig) -> None:
        for sample in config.model_warmup:
            for input_name, entry in sample.inputs.items():
                if not entry.input_data_file:
                    continue
                if "/" in entry.input_data_file or "\\" in entry.input_data_file or entry.input_data_file in (".", ".."):
                    self.problem(self.dir / CONFIG_NAME, f"warm-up file name {entry.input_data_file!r} for input "
                                                         f"{input_name!r} is not a plain file name")
                    continue
                path = self.dir / WARMUP_FOLDER / entry.input_data_file
                if not path.is_file():
                    self.problem(path, f"warm-up file for input {input_name!r} is missing")
                    continue
                try:
                    itemsize = _itemsize(model_type_name(entry.data_type))
                except HepDeployError as error:
                    self.problem(path, str(error))
                    continue
                want = math.prod(entry.dims) * itemsize
                if path.stat().st_size != want:
                    self.problem(
                        path, f"warm-up file has {path.stat().st_size} bytes, dims {list(entry.dims)} need {want}"
                    )

    def _check_labels(self, config: model_config_pb2.ModelConfig) -> None:
        for tensor in config.output:
            if not tensor.label_filename:
                continue
            path = self.dir / tensor.label_filename
            if "/" in tensor.label_filename or not path.is_file():
                self.problem(path, f"label file {tensor.label_filename!r} of output {tensor.name!r} is missing")
                continue
            labels = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line]
            dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            if dims and dims[-1] > 0 and len(labels) != dims[-1]:
                self.problem(path, f"{len(labels)} labels for output {tensor.name!r} with {dims[-1]} classes")

    def _check_checksums(self, config: model_config_pb2.ModelConfig) -> None:
        """The checksum repository agent's MD5 keys against the files (what Triton checks when it loads)."""
        for agent in config.model_repository_agents.agents:
            if agent.name != CHECKSUM_AGENT:
                continue
            for key, expected in sorted(agent.parameters.items()):
                algorithm, _, relative = key.partition(":")
                path = self.dir / relative
                if algorithm.upper() != "MD5" or not relative or ".." in Path(relative).parts \
                        or Path(relative).is_absolute():
                    self.problem(self.dir / CONFIG_NAME, f"checksum agent key {key!r} is not MD5:<version>/<file>")
                elif not path.is_file():
                    self.problem(path, f"checksum agent lists {relative}, which is missing")
                elif file_digest(path, "md5") != expected.lower():
                    self.problem(path, "MD5 differs from the checksum agent's (Triton would refuse to load it)")

    def _versions(self, config: model_config_pb2.ModelConfig) -> list[Path]:
        versions: list[Path] = []
        bad = 0
        for child in sorted(self.dir.iterdir()):
            if child.is_symlink() and not child.exists():  # a loop, or a link to nothing: Triton cannot stat it
                bad += 1
                self.problem(child, f"{child.name!r} is a symbolic link that leads nowhere (broken or looping): "
                                    "Triton fails to stat it")
                continue
            if not child.is_dir() or child.name in _TRITON_MODEL_SUBFOLDERS:
                continue
            bad += 1
            if not child.name.isdigit():
                self.problem(child, f"folder {child.name!r} is not a numeric version folder (Triton ignores it)")
            elif len(child.name) > 1 and child.name.startswith("0"):
                self.problem(child, f"version folder {child.name!r} has leading zeros (Triton ignores it)")
            elif not any(child.iterdir()):
                self.problem(child, "version folder is empty")
            else:
                bad -= 1
                versions.append(child)
        if not versions and not bad:
            self.problem(self.dir, "no version folder")
        present = {int(v.name) for v in versions}
        if config.version_policy.HasField("specific"):
            missing = [v for v in config.version_policy.specific.versions if v not in present]
            if missing:
                self.problem(self.dir / CONFIG_NAME, f"version_policy names versions {missing} that are not present")
        return versions

    # -- one version -------------------------------------------------------------------------

    def _check_version(
        self, config: model_config_pb2.ModelConfig, platform: str, version_dir: Path, served: bool
    ) -> None:
        """Files of every version; tensors and runs only for versions the version_policy serves."""
        manifest = self._check_manifest(version_dir)
        entry = PLATFORMS.get(platform)
        if not served:
            wanted = model_filename(config)
            if wanted and not (version_dir / wanted).exists() and platform != "python":
                self.problem(version_dir / wanted, f"model file {wanted} for platform {platform} is missing")
            self.note(f"version {version_dir.name} is not served under the version_policy; tensors not compared")
            return
        if entry is None or entry.checker is None:
            self.note(f"platform {platform!r}: model file not checked")
            return
        named_function(entry.checker)(self, config, version_dir, manifest)

    def model_file(self, config: model_config_pb2.ModelConfig, version_dir: Path, platform: str) -> Path | None:
        """The version's model file; None (and a problem) when it is missing."""
        wanted = model_filename(config)
        if wanted is None:
            return None
        path = version_dir / wanted
        if not path.exists():
            self.problem(path, f"model file {wanted} for platform {platform} is missing")
            return None
        return path

    def check_ort_tensorrt(self, config: model_config_pb2.ModelConfig, path: Path) -> None:
        """ONNX Runtime's TensorRT execution provider against the target server's versions."""
        accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
        release = self.environment.release
        if release is None or release.tensorrt is None or not any(a.name == "tensorrt" for a in accelerators):
            return
        reason = ort_tensorrt_problem(release.onnxruntime, release.tensorrt)
        if reason:
            self.problem(path, f"Triton {release.release}: {reason}")

    # -- TensorRT plans ------------------------------------------------------------------------

    def check_plans(self, config: model_config_pb2.ModelConfig, version_dir: Path,
                     manifest: dict[str, Any] | None) -> None:
        """Every plan of the version: files, recorded metadata against config and server, then loading."""
        plans: dict[str, str | None] = {}  # file name -> its cc_model_filenames key (None: the default file)
        wanted = model_filename(config) or "model.plan"
        for capability, filename in sorted(config.cc_model_filenames.items()):
            try:
                check_capability_key(capability)
            except SpecError as error:
                self.problem(self.dir / CONFIG_NAME, str(error))
            if not (version_dir / filename).is_file():
                self.problem(version_dir / filename, f"plan for compute capability {capability} is missing")
            else:
                plans[filename] = capability
        if (version_dir / wanted).is_file():
            plans.setdefault(wanted, None)
        elif not config.cc_model_filenames:
            self.problem(version_dir / wanted, f"model file {wanted} for platform tensorrt_plan is missing")
        try:
            recorded = metadata_by_file(manifest)
        except ValueError as error:  # pydantic's ValidationError
            self.problem(version_dir / MANIFEST_NAME, f"unreadable plan metadata ({first_line(error)})")
            recorded = {}
        if not recorded and plans:
            self.note(f"version {version_dir.name}: no recorded plan metadata (not built by hepdeploy?); "
                      "engine profile, compute capability and TensorRT version not checked")
        inputs = [ConfigTensor(t.name, list(t.reshape.shape) if t.HasField("reshape") else list(t.dims))
                  for t in config.input]
        preferred = list(config.dynamic_batching.preferred_batch_size)
        release = self.environment.release
        if release is not None and release.tensorrt is None and plans:
            self.note(f"Triton {release.release}: its TensorRT version is not in hepdeploy's table; "
                      "plan versions not checked against it")
        for filename, capability in plans.items():
            path = version_dir / filename
            metadata = recorded.get(filename)
            if metadata is not None:
                for message in config_profile_problems(metadata, config.max_batch_size, inputs, preferred):
                    self.problem(path, message)
                for message in plan_problems(filename, metadata, capability_key=capability, release=release):
                    self.problem(path, message)
            elif recorded:
                self.note(f"{filename}: not in the manifest's plan metadata; its profile is not checked")
            self._load_plan(config, path, metadata, capability)

    def _load_plan(self, config: model_config_pb2.ModelConfig, path: Path, metadata: PlanMetadata | None,
                   capability: str | None) -> None:
        loader = self.environment.loader()
        reason = loader.why_not(metadata, capability)
        if reason is not None:
            self.note(f"{path.name}: plan not loadable here: {reason}")
            return
        try:
            names = loader.io_names(path.read_bytes(), metadata)
        except Exception as error:  # the bindings raise RuntimeError/TypeError on some corrupt plans
            self.problem(path, f"TensorRT cannot deserialize this plan ({type(error).__name__}: {first_line(error)})")
            return
        if names is None:
            self.problem(path, "TensorRT cannot deserialize this plan (other TensorRT version or GPU, or not a plan)")
            return
        for tensor in [*config.input, *config.output]:
            if tensor.name not in names:
                self.problem(path, f"tensor {tensor.name!r} is not in the engine (engine has {', '.join(sorted(names))})")

    def _check_manifest(self, version_dir: Path) -> dict[str, Any] | None:
        try:
            manifest = read_manifest(version_dir)
        except RepositoryError as error:
            self.problem(version_dir / MANIFEST_NAME, str(error).split(": ", 1)[-1])
            return None
        if manifest is None:
            return None  # not written by hepdeploy: nothing to compare against
        try:
            Manifest.model_validate(manifest)
        except ValueError as error:  # pydantic's ValidationError
            self.problem(version_dir / MANIFEST_NAME, f"manifest does not follow hepdeploy's schema ({first_line(error)})")
        listed = manifest["files"]
        for relative, digest in sorted(listed.items()):
            path = version_dir / relative
            if not path.is_file():
                self.problem(path, "listed in the manifest but missing")
            elif sha256_file(path) != digest:
                self.problem(path, "sha256 does not match the manifest (file changed after publishing)")
        for path in sorted(version_dir.rglob("*")):
            relative = path.relative_to(version_dir).as_posix()
            if path.is_file() and path.name != MANIFEST_NAME and relative not in listed:
                if "__pycache__" in path.parts or path.suffix == ".pyc":
                    self.problem(path, "stray Python bytecode (a server wrote it into the repository): delete "
                                       "the __pycache__ folder; it is not part of the published model")
                else:
                    self.problem(path, "stray file: not in the manifest (added after publishing?)")
        return manifest

    def check_onnx(self, config: model_config_pb2.ModelConfig, path: Path) -> None:
        try:
            model = load_onnx(path, load_weights=False)
        except HepDeployError as error:
            self.problem(path, str(error).split(": ", 1)[-1])
            return
        inputs, outputs = tensor_specs_of(model)
        model_inputs = {t.name: t for t in inputs}
        model_outputs = {t.name: t for t in outputs}
        ok = True
        for tensor in config.input:
            ok &= self._compare_tensor(config, path, "input", tensor, model_inputs)
        for name in sorted(set(model_inputs) - {t.name for t in config.input}):
            self.problem(path, f"model input {name!r} is not in the config")
            ok = False
        for tensor in config.output:
            ok &= self._compare_tensor(config, path, "output", tensor, model_outputs)
        if ok and self.run_models:
            self._run_onnx(config, path)

    def _compare_tensor(
        self, config: model_config_pb2.ModelConfig, path: Path, role: str, tensor: Any, model_tensors: dict
    ) -> bool:
        from tritonclient.grpc import model_config_pb2 as pb2

        model_tensor = model_tensors.get(tensor.name)
        if model_tensor is None:
            self.problem(
                path, f"config {role} {tensor.name!r} is not a model {role} (model has {', '.join(model_tensors)})"
            )
            return False
        ok = True
        type_name = pb2.DataType.Name(tensor.data_type)
        try:
            config_dtype = numpy_dtype_of(type_name)
        except HepDeployError:
            config_dtype = type_name
        if config_dtype != model_tensor.dtype:
            self.problem(path, f"{role} {tensor.name!r}: config data_type {type_name} but the model has {model_tensor.dtype}")
            ok = False
        dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        model_shape = list(model_tensor.shape)
        shown = "[" + ", ".join(str(d) for d in model_shape) + "]"
        if config.max_batch_size > 0:
            if not model_shape or not isinstance(model_shape[0], str):
                first = model_shape[0] if model_shape else "scalar"
                self.problem(
                    path,
                    f"{role} {tensor.name!r}: max_batch_size {config.max_batch_size} but the model's first dim is "
                    f"{first}, not a free batch axis (model shape {shown}); use max_batch_size: 0",
                )
                return False
            model_shape = model_shape[1:]
        if len(dims) != len(model_shape):
            hint = ""
            if config.max_batch_size == 0 and len(model_shape) == len(dims) + 1 and isinstance(model_shape[0], str):
                hint = " (max_batch_size is 0 but the model has a batch axis: set max_batch_size > 0)"
            self.problem(path, f"{role} {tensor.name!r}: config dims {dims} do not match the model shape {shown}{hint}")
            return False
        for k, (want, have) in enumerate(zip(dims, model_shape, strict=True)):
            if isinstance(have, int) and want != have:
                self.problem(
                    path, f"{role} {tensor.name!r}: config dims {dims} do not match the model shape {shown} (axis {k})"
                )
                return False
        return ok

    def _run_onnx(self, config: model_config_pb2.ModelConfig, path: Path) -> None:
        try:
            # The first session on a file we did not just check runs in a child: a graph that crashes
            # ONNX Runtime natively is a problem of that model, not the end of the check.
            check_in_child(path, where=path.name)
        except NativeCrashError as error:
            self.problem(path, str(error).removeprefix(f"{path.name}: "))
            return
        except ModelLoadError:
            pass  # reported with ONNX Runtime's own line just below
        try:
            runner = OnnxRuntimeRunner(path, intra_op_threads=1, inter_op_threads=1, name=str(path))
        except ModelLoadError as error:
            self.problem(path, f"ONNX Runtime cannot load it: {ort_error_line(error.__cause__ or error)}")
            return
        with runner:
            self._run_batches(config, path, runner)

    def _run_batches(self, config: model_config_pb2.ModelConfig, path: Path, runner: OnnxRuntimeRunner) -> None:
        """Run a sample at batch 1 and the largest preferred batch; a seeded sample that fails with a dim
        bound the graph walk missed is sampled once more at the size the error states (noted)."""
        bounds = minimums(graph_dim_bounds(path))
        specs = runner.input_specs or []
        sample, from_warmup = self._sample_inputs(config, specs, bounds)
        failure = self._run_sample(config, path, runner, sample, from_warmup)
        learned = None if failure is None or from_warmup else bound_from_error(
            failure, self._sampled_sizes(config, specs, bounds))
        if learned:
            self.note(f"{path.name}: {', '.join(f'{d} >= {n}' for d, n in learned.items())} (found by running it)")
            sample, _ = self._sample_inputs(config, specs, {**bounds, **learned}, use_warmup=False)
            failure = self._run_sample(config, path, runner, sample, False)
        if failure is not None:
            self.problem(path, failure)

    def _run_sample(self, config: model_config_pb2.ModelConfig, path: Path, runner: OnnxRuntimeRunner,
                    sample: dict[str, np.ndarray], from_warmup: bool) -> str | None:
        """Run ``sample`` at each batch the check tries and check the outputs; the failure, if any."""
        batches = [None]
        if config.max_batch_size > 0:
            preferred = list(config.dynamic_batching.preferred_batch_size)
            largest = max(preferred) if preferred else min(config.max_batch_size, _MAX_RUN_BATCH)
            batches = sorted({1, largest})
        for batch in batches:
            feed = {name: (np.repeat(a, batch, axis=0) if batch is not None else a) for name, a in sample.items()}
            try:
                produced = runner.run(feed)
            except DataError as error:
                where = f"at batch {batch}" if batch is not None else "on a sample"
                return f"ONNX Runtime run {where} failed: {ort_error_line(error.__cause__ or error)}"
            self._check_outputs(config, path, batch, [produced[t.name] for t in config.output], from_warmup)
        return None

    def _check_outputs(self, config: model_config_pb2.ModelConfig, path: Path, batch: int | None,
                       results: list[Any], from_warmup: bool) -> None:
        self.report.runs += 1
        for tensor, result in zip(config.output, results, strict=True):
            dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            want = ([batch] if batch is not None else []) + dims
            got = list(np.shape(result))
            if len(got) != len(want) or any(w not in (-1, g) for w, g in zip(want, got, strict=False)):
                self.problem(path, f"output {tensor.name!r} has shape {got}, the config announces {want}")
            if from_warmup and np.issubdtype(np.asarray(result).dtype, np.floating):
                if not np.all(np.isfinite(result)):
                    self.problem(path, f"output {tensor.name!r} is not finite on the warm-up sample")

    @staticmethod
    def _sampled_sizes(config: model_config_pb2.ModelConfig, model_inputs: list[TensorSpec],
                       bounds: Mapping[str, int]) -> dict[str, int]:
        """The size each named dynamic dim of the model is sampled at (config -1 dims)."""
        sizes: dict[str, int] = {}
        for tensor in model_inputs:
            for dim in tensor.shape[1 if config.max_batch_size > 0 else 0:]:
                if isinstance(dim, str):
                    sizes[dim] = max(_SAMPLED_DIM, bounds.get(dim, 0))
        return sizes

    def _sample_inputs(self, config: model_config_pb2.ModelConfig, model_inputs: list[TensorSpec],
                       bounds: Mapping[str, int], use_warmup: bool = True) -> tuple[dict[str, np.ndarray], bool]:
        """One batch element (or one whole sample when unbatched): warm-up data, else seeded, every
        variable dim at least the bound the graph puts on it."""
        from tritonclient.grpc import model_config_pb2 as pb2

        warm: dict[str, np.ndarray] = {}
        for sample in config.model_warmup if use_warmup else []:
            for input_name, entry in sample.inputs.items():
                path = self.dir / WARMUP_FOLDER / entry.input_data_file
                if entry.input_data_file and path.is_file() and input_name not in warm:
                    dtype = numpy_dtype_of(pb2.DataType.Name(entry.data_type))
                    data = np.fromfile(path, dtype=dtype)
                    if data.size == math.prod(entry.dims):
                        warm[input_name] = data.reshape(list(entry.dims))
        named = {t.name: t.shape[1 if config.max_batch_size > 0 else 0:] for t in model_inputs}
        sizes = self._sampled_sizes(config, model_inputs, bounds)
        rng = np.random.default_rng(0)
        inputs = {}
        for tensor in config.input:
            dtype = numpy_dtype_of(pb2.DataType.Name(tensor.data_type))
            if tensor.name in warm:
                array = warm[tensor.name].astype(dtype, copy=False)
            else:
                dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
                names = named.get(tensor.name, [])
                shape = [d if d != -1 else sizes.get(names[k], _SAMPLED_DIM) if k < len(names)
                         and isinstance(names[k], str) else _SAMPLED_DIM for k, d in enumerate(dims)]
                if np.issubdtype(np.dtype(dtype), np.floating):
                    array = rng.standard_normal(shape).astype(dtype)
                else:  # zeros are valid indices and valid flags
                    array = np.zeros(shape, dtype=dtype)
            inputs[tensor.name] = array[np.newaxis] if config.max_batch_size > 0 else array
        return inputs, len(warm) == len(config.input) and bool(warm)

    def check_torchscript(self, path: Path) -> None:
        import torch

        try:
            torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            self.problem(path, f"not a loadable TorchScript file: {first_line(error)}")
            return
        self.note(f"{path.name}: TorchScript loads; tensors not compared (TorchScript has no I/O signature)")


# -- what one served version of each platform must hold (the platform registry names these) ----------


def check_onnx_version(checker: ModelChecker, config: model_config_pb2.ModelConfig, version_dir: Path,
                       manifest: dict[str, Any] | None) -> None:
    """The ONNX file: loadable, its tensors as the config says, and it runs (ONNX Runtime)."""
    path = checker.model_file(config, version_dir, "onnxruntime_onnx")
    if path is not None:
        checker.check_ort_tensorrt(config, path)
        checker.check_onnx(config, path)


def check_plan_version(checker: ModelChecker, config: model_config_pb2.ModelConfig, version_dir: Path,
                       manifest: dict[str, Any] | None) -> None:
    """Every plan: files, recorded metadata against config and server, then loading where it can."""
    checker.check_plans(config, version_dir, manifest)


def check_torchscript_version(checker: ModelChecker, config: model_config_pb2.ModelConfig, version_dir: Path,
                              manifest: dict[str, Any] | None) -> None:
    path = checker.model_file(config, version_dir, "pytorch_libtorch")
    if path is not None:
        checker.check_torchscript(path)


def check_savedmodel_version(checker: ModelChecker, config: model_config_pb2.ModelConfig, version_dir: Path,
                             manifest: dict[str, Any] | None) -> None:
    path = checker.model_file(config, version_dir, "tensorflow_savedmodel")
    if path is not None and not (path / "saved_model.pb").is_file():
        checker.problem(path, "not a SavedModel folder (no saved_model.pb)")


def check_python_version(checker: ModelChecker, config: model_config_pb2.ModelConfig, version_dir: Path,
                         manifest: dict[str, Any] | None) -> None:
    """model.py is there; an ONNX file beside it (a twin's) is checked as an ONNX model."""
    if not (version_dir / "model.py").is_file():
        checker.problem(version_dir / "model.py", "Python-backend model file model.py is missing")
    for onnx_file in sorted(version_dir.glob("*.onnx")):
        checker.check_onnx(config, onnx_file)


def check_ensemble_version(checker: ModelChecker, config: model_config_pb2.ModelConfig, version_dir: Path,
                           manifest: dict[str, Any] | None) -> None:
    """The steps' models and their tensors (an ensemble's version folder holds no model)."""
    checker.check_ensemble(config, checker.dir / CONFIG_NAME)


def _served_versions(config: model_config_pb2.ModelConfig, present: list[int]) -> set[int]:
    """The versions Triton loads under the config's version_policy (default: the latest one)."""
    policy = config.version_policy
    if policy.HasField("all"):
        return set(present)
    if policy.HasField("specific"):
        return set(policy.specific.versions) & set(present)
    count = policy.latest.num_versions if policy.HasField("latest") else 1
    return set(sorted(present)[-max(count, 1):])


def model_type_name(data_type: int) -> str:
    from tritonclient.grpc import model_config_pb2 as pb2

    return numpy_dtype_of(pb2.DataType.Name(data_type))


def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def check_model(model_dir: Path, *, run_models: bool = True, report: CheckReport | None = None,
                environment: CheckEnvironment | None = None) -> list[Problem]:
    """Problems of one model folder (its folder name is the model name)."""
    report = report if report is not None else CheckReport(repo=Path(model_dir).parent)
    return ModelChecker(Path(model_dir), report, run_models, environment).check()


def check_repository_report(repo: Path, *, run_models: bool = True,
                            environment: CheckEnvironment | None = None) -> CheckReport:
    repo = Path(repo)
    environment = environment or CheckEnvironment()
    report = CheckReport(repo=repo)
    if not repo.is_dir():
        report.problems.append(Problem("", repo, "model repository folder not found"))
        return report
    for child in sorted(repo.iterdir()):
        if not child.is_dir():
            continue
        if child.name == INNER_STAGING:
            report.problems.append(
                Problem(child.name, child, "leftover hepdeploy staging folder: Triton would try to load it as a model")
            )
            continue
        report.models.append(child.name)
        report.problems.extend(check_model(child, run_models=run_models, report=report, environment=environment))
    if not report.models:
        report.notes.append(f"{repo}: no model folders")
    return report


def check_repository(repo: Path, *, run_models: bool = True,
                     environment: CheckEnvironment | None = None) -> list[Problem]:
    """Every problem in a model repository, one per line-worthy finding (empty list: all good)."""
    return check_repository_report(repo, run_models=run_models, environment=environment).problems
