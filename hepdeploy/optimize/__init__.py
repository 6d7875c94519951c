"""hepdeploy.optimize: one artifact in, one optimized variant out.

``optimize_artifact(source, variant, output)`` makes one of the variants of the registry
(:mod:`hepdeploy.variants`: fp32, fp16, int8-trt, int8-cpu, tensorrt). Every ONNX variant
starts from the simplified graph (onnxslim + ONNX Runtime basic optimisation, outputs
checked unchanged): when the source has no ``simplify`` step yet, it is simplified first
and both steps are recorded. Then the variant's maker rewrites the precision, and the
result must load and run in ONNX Runtime with finite outputs before it is written. An
engine variant (``tensorrt``) is built from its parent graph by its own maker. Everything
is deterministic for the same inputs, data, seed and tool versions.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hepdeploy.artifacts import (
    Artifact,
    StepRecord,
    VariantRecord,
    derive_sidecar,
    load_onnx,
    read_artifact,
    write_artifact,
)
from hepdeploy.backend.onnxrt import check_in_child, run_once
from hepdeploy.data import CalibrationSet, check_tensors, common_batch_size, load_calibration
from hepdeploy.environment import package_version
from hepdeploy.errors import (
    BadInputError,
    ConversionError,
    DataError,
    HepDeployError,
    ModelLoadError,
    NativeCrashError,
    first_line,
)
from hepdeploy.fsutil import check_output_folder, sha256_file
from hepdeploy.graph_bounds import bound_from_error, graph_dim_bounds, minimums
from hepdeploy.lifetime import work_folder
from hepdeploy.optimize.graph import (
    PER_CHANNEL_OPSET,
    check_batch,
    name_unnamed_nodes,
    normalize_for_tools,
    prune_opset_imports,
    quiet_dependencies,
)
from hepdeploy.optimize.keep import keep_in_fp32, precision_groups
from hepdeploy.optimize.modelopt_worker import ModelOptWorker
from hepdeploy.optimize.simplify import simplify_model
from hepdeploy.registry import named_function
from hepdeploy.sampling import typical_sizes
from hepdeploy.spec import ModelSpec, TensorSpec, VariantSpec
from hepdeploy.steps import StepResult
from hepdeploy.variants import VariantKind, variant_kind

log = logging.getLogger(__name__)
CHECK_ROWS = 8  # rows of the batch a new variant is checked on


def variant_spec(variant: VariantSpec | str, spec: ModelSpec | None = None) -> VariantSpec:
    """The VariantSpec for a name (the spec's entry when it lists one); unknown names refused."""
    if isinstance(variant, VariantSpec):
        return variant
    variant_kind(variant)
    return spec.variant(variant) if spec is not None else VariantSpec(name=variant)  # type: ignore[arg-type]


def calibration_path(calibration: CalibrationSet | dict[str, np.ndarray] | Path | str | None,
                     spec: ModelSpec | None) -> Path | None:
    """The calibration file (or glob) a variant reads: the one given (or the arrays were read from), else the
    spec's ``data.calibration``."""
    if isinstance(calibration, CalibrationSet):
        return calibration.source
    if isinstance(calibration, dict):
        return None
    if calibration is not None:
        return Path(calibration)
    return Path(spec.data.calibration) if spec is not None and spec.data.calibration else None


def resolve_calibration(
    calibration: CalibrationSet | dict[str, np.ndarray] | Path | str | None,
    inputs: list[TensorSpec],
    spec: ModelSpec | None,
    samples: int | None = None,
) -> dict[str, np.ndarray] | None:
    """Calibration arrays from a dict, a data file, or the spec's ``data.calibration``."""
    data = spec.data if spec is not None else None
    count = samples or (data.calibration_samples if data else 512)
    if isinstance(calibration, CalibrationSet):  # read (and checked) once by the build for all its variants
        return calibration.arrays
    if isinstance(calibration, dict):
        arrays = check_tensors(calibration, inputs, where="calibration data")
        n = next(iter(arrays.values())).shape[0]
        if samples is not None and n < samples:
            raise DataError(f"calibration data: holds {n} samples, fewer than the {samples} asked for")
        return arrays
    path = calibration_path(calibration, spec)
    if path is None:
        return None
    # Outputs, labels and per-event variables may sit beside the inputs in a data file.
    ignore = [t.name for t in spec.outputs] + ([data.label_array] if data.label_array else []) + data.variable_names \
        + list(spec.validation.physics.bins) if spec is not None else []
    # A count nobody asked for (no --samples, spec default) adapts to a smaller file.
    explicit = samples is not None or (data is not None and "calibration_samples" in data.model_fields_set)
    return load_calibration(
        path, inputs, samples=count, seed=data.seed if data else 0,
        ignore=ignore, allow_fewer=not explicit, data_spec=data,
    )


def check_calibration_rows(variant: str, arrays: dict[str, np.ndarray] | None, source: Path | None,
                           inputs: list[TensorSpec]) -> None:
    """Refuse a calibration set the variant cannot take: none, or, for a batched model, fewer rows than it
    needs (one line that names the file, what it holds and what is needed). A graph network's calibration
    is whole events, not rows."""
    kind = variant_kind(variant)
    if not kind.needs_calibration:
        return
    if arrays is None:
        raise BadInputError(f"{kind.name}: needs calibration data (--calibration FILE or data.calibration in the spec)")
    rows = common_batch_size(arrays)
    batched = all(t.has_batch_axis for t in inputs)
    if batched and rows is not None and rows < kind.min_calibration_rows:
        raise DataError(f"{source or 'calibration data'}: holds {rows} calibration row(s); {kind.name} needs at "
                        f"least {kind.min_calibration_rows} to set its INT8 ranges")


def optimize_artifact(
    source: Path,
    variant: VariantSpec | str,
    output: Path,
    *,
    calibration: CalibrationSet | dict[str, np.ndarray] | Path | None = None,
    spec: ModelSpec | None = None,
    require_gpu: bool = False,
    samples: int | None = None,
    modelopt: ModelOptWorker | None = None,
) -> StepResult:
    """Make one variant of the artifact at ``source`` and write it to ``output``.

    ``modelopt``: the ModelOpt worker that makes fp16 and int8-trt (a build shares one between its
    variants, so ModelOpt is imported once); without it such a variant starts a worker of its own.

    Returns StepResult ok (outputs: the .onnx/.plan and its sidecar) or skipped (tensorrt
    without a GPU); raises HepDeployError subclasses for bad input.
    """
    vspec = variant_spec(variant, spec)
    kind = variant_kind(vspec.name)
    output = check_output_folder(Path(output))
    parent = read_artifact(Path(source))
    if parent.sidecar.sha256 is None:  # a bare .onnx: its inferred sidecar has no file hash yet
        parent.sidecar.sha256 = sha256_file(parent.path)
    if output.suffix != kind.suffix:
        raise BadInputError(f"{output}: the {kind.name} variant is written to a {kind.suffix} file")
    if kind.is_engine:
        build = _maker(kind)
        result = build(parent, output, spec=spec, variant=vspec, require_gpu=require_gpu)
        result.variant = kind.name
        return result
    if output.resolve() == parent.path.resolve():
        raise BadInputError(f"{output}: the output would overwrite the source model")

    inputs = spec.inputs if spec is not None else parent.sidecar.inputs
    arrays = resolve_calibration(calibration, inputs, spec, samples)
    source = calibration_path(calibration, spec) if kind.needs_calibration else None
    check_calibration_rows(kind.name, arrays, source, inputs)
    job = _VariantJob(parent, kind, vspec, output, inputs, arrays, spec, modelopt, source)
    return _learning_bounds(functools.partial(_make_onnx_variant, job), job)


@dataclass(frozen=True)
class _VariantJob:
    """One ONNX variant to make: from what, which, where to, on which data, with which tools."""

    parent: Artifact
    kind: VariantKind
    vspec: VariantSpec
    output: Path
    inputs: list[TensorSpec]
    arrays: dict[str, np.ndarray] | None  # calibration
    spec: ModelSpec | None
    modelopt: ModelOptWorker | None
    calibration_source: Path | None  # the file (or glob) the arrays came from, for the sidecar


def _maker(kind: VariantKind) -> Callable[..., Any]:
    """The registry's ``module:function`` maker of a variant."""
    return named_function(kind.maker or "")


def _learning_bounds(make: Callable[[dict[str, int], dict[str, int] | None], StepResult], job: _VariantJob) -> StepResult:
    """``make(bounds, learned)`` with the check batch's dims at least the bounds the graph puts on them (when
    it is sampled, without data); a run that still fails with a bound the walk missed is made once more
    with the size the error states (``learned``, recorded in the sidecar)."""
    parent, kind, inputs, arrays, spec = job.parent, job.kind, job.inputs, job.arrays, job.spec
    bounds = {} if arrays else minimums(graph_dim_bounds(parent.path))
    try:
        return make(bounds, None)
    except HepDeployError as error:
        batch_dims = {t.shape[0] for t in inputs if t.has_batch_axis and t.shape and isinstance(t.shape[0], str)}
        sizes = {dim: size for dim, size in typical_sizes(inputs, spec, batch=CHECK_ROWS, bounds=bounds).items()
                 if dim not in batch_dims}  # the rows are not what a graph bound is about
        learned = None if arrays or isinstance(error, NativeCrashError) else bound_from_error(str(error), sizes)
        if not learned:
            raise
        log.warning("%s of %s: %s; checking again with %s (bounds the graph walk did not find)", kind.name,
                    parent.path.name, first_line(error), ", ".join(f"{d} >= {n}" for d, n in learned.items()))
        return make({**bounds, **learned}, learned)


def _make_onnx_variant(job: _VariantJob, bounds: dict[str, int], learned: dict[str, int] | None) -> StepResult:
    import onnx

    parent, kind, inputs, spec = job.parent, job.kind, job.inputs, job.spec

    sample = check_batch(inputs, spec, job.arrays, count=CHECK_ROWS, seed=spec.data.seed if spec else 0, bounds=bounds)
    steps: list[StepRecord] = []
    model = load_onnx(parent.path)
    # Old exporters: IR 3 lifted, and quantized variants need per-channel Q/DQ (opset 13).
    # The spec's opset is the target of every upgrade; quantized variants need at least per-channel Q/DQ's.
    wanted = spec.opset if spec is not None else None
    if kind.needs_calibration:
        wanted = max(wanted or 0, PER_CHANNEL_OPSET)
    model, normalized = normalize_for_tools(model, wanted)
    if normalized:
        steps.append(StepRecord(name="normalize", tool="onnx", tool_version=onnx.__version__, parameters=normalized))
    already_simple = any(step.name == "simplify" for step in parent.sidecar.steps)
    if kind.maker is None or not already_simple:
        simplified = simplify_model(model, sample)
        steps.append(StepRecord(name="simplify", tool="onnxslim", tool_version=package_version("onnxslim"),
                                parameters=simplified.parameters))
        model = simplified.model

    precision = kind.precision
    label = f"{kind.name} of {parent.path.name}"
    if kind.maker is not None:
        with work_folder("opt") as folder:
            prepared = Path(folder) / "prepared.onnx"
            onnx.save(name_unnamed_nodes(model), str(prepared))
            variant = _LoweredVariant(job, prepared, label, sample)
            try:
                model, parameters = variant.make(job.vspec)
            except NativeCrashError as crash:  # the layers whose lowering crashes ONNX Runtime stay FP32
                model, parameters = variant.keeping_what_crashes(job.vspec, crash)
        precision = parameters.pop("precision", precision)
        if job.calibration_source is not None:  # where the calibration came from (a file, or a glob of ROOT files)
            parameters["calibration_data"] = str(job.calibration_source)
        steps.append(StepRecord(name=kind.name, tool=kind.tool, tool_version=package_version(kind.tool),
                                parameters=parameters))
    else:
        del model.graph.value_info[:]  # see _LoweredVariant.make
        _check_runs(model, label, inputs, sample)

    if learned:  # where the check's sizes came from, for whoever reads the sidecar
        steps[-1].parameters["dim_bounds_learned"] = learned
    record = VariantRecord(name=kind.name, precision=precision, target=kind.target)
    sidecar = derive_sidecar(parent, record, steps[0])
    sidecar.steps.extend(steps[1:])
    artifact = write_artifact(prune_opset_imports(model), job.output, sidecar)
    log.info("%s: wrote %s", kind.name, job.output)
    details = {k: v for step in steps for k, v in step.parameters.items() if not isinstance(v, (list, dict))}
    return StepResult(kind.name, "ok", outputs=[artifact.path, artifact.sidecar_path], details=details,
                      variant=kind.name)


class _LoweredVariant:
    """One low-precision variant of a prepared FP32 graph: made by its maker and checked to run, and, when
    ONNX Runtime crashes natively on it, made again with the layers whose lowering crashes kept in FP32."""

    def __init__(self, job: _VariantJob, prepared: Path, label: str, sample: dict[str, np.ndarray]) -> None:
        self.kind, self.prepared, self.inputs, self.arrays, self.spec = job.kind, prepared, job.inputs, job.arrays, job.spec
        self.tools = {"modelopt": job.modelopt} if job.kind.uses_modelopt else {}
        self.label, self.sample = label, sample

    def make(self, vspec: VariantSpec) -> tuple[Any, dict[str, Any]]:
        with quiet_dependencies():
            model, parameters = _maker(self.kind)(self.prepared, vspec, self.inputs, self.arrays, self.spec,
                                                  **self.tools)
        # Shape hints written by the tools (AutoCast records the sizes of its reference run)
        # are optional and can be wrong for other sizes; ONNX Runtime and TensorRT infer their own.
        del model.graph.value_info[:]
        _check_runs(model, self.label, self.inputs, self.sample)
        return model, parameters

    def _crashes(self, vspec: VariantSpec, layers: list[str]) -> bool:
        """Whether ONNX Runtime still crashes with ``layers`` kept (another refusal, such as nothing left
        to lower, is no crash: the search moves past it and the final make reports it)."""
        try:
            self.make(keep_in_fp32(vspec, layers))
        except NativeCrashError:
            return True
        except HepDeployError:
            pass
        return False

    def keeping_what_crashes(self, vspec: VariantSpec, crash: NativeCrashError) -> tuple[Any, dict[str, Any]]:
        """The variant with the fewest layers kept in FP32 that ONNX Runtime runs, found by bisection:
        the shortest prefix of the layers (graph order) whose keeping stops the crash names the last layer
        it needs; that layer alone is tried, else the prefix is pruned one layer at a time. The original
        crash is raised again when keeping every layer still crashes (the crash is not the precision's), or
        when what runs is no variant any more (nothing left in low precision)."""
        import onnx

        layers = [group.name for group in precision_groups(onnx.load(str(self.prepared)))]
        if not layers or self._crashes(vspec, layers):
            raise crash
        low, high = 0, len(layers)  # keeping layers[:high] runs; keeping layers[:low] crashes
        while high - low > 1:
            middle = (low + high) // 2
            if self._crashes(vspec, layers[:middle]):
                low = middle
            else:
                high = middle
        kept = [layers[high - 1]]
        if self._crashes(vspec, kept):
            kept = list(layers[:high])
            for layer in list(kept):
                trial = [k for k in kept if k != layer]
                if trial and not self._crashes(vspec, trial):
                    kept = trial
        try:
            model, parameters = self.make(keep_in_fp32(vspec, kept))
        except HepDeployError as error:  # what runs is no variant any more (e.g. nothing left lowered)
            raise crash from error
        log.warning("%s; kept in FP32 so that it runs: %s", first_line(crash), ", ".join(kept))
        parameters["kept_fp32_after_crash"] = kept
        parameters["crash"] = first_line(crash)
        return model, parameters


def _check_runs(model: Any, variant: str, inputs: list[TensorSpec], sample: dict[str, np.ndarray]) -> None:
    """The variant must load and run in ONNX Runtime on the CPU, at the sample's batch and at
    batch 1, with finite outputs wherever the input model's are finite.

    The first session on the new graph is made in a child process: a graph that crashes
    ONNX Runtime natively fails this variant with the signal's name instead of ending the process.
    """
    try:
        check_in_child(model, sample, where=variant)
    except ModelLoadError as error:
        raise ConversionError(f"{variant}: the optimized model does not run in ONNX Runtime: {error}") from error
    batches = [sample]
    if all(t.has_batch_axis for t in inputs) and next(iter(sample.values())).shape[0] > 1:
        batches.append({name: value[:1] for name, value in sample.items()})
    for feeds in batches:
        try:
            outputs = run_once(model, feeds)
        except HepDeployError as error:  # any failure means a broken variant
            raise ConversionError(f"{variant}: the optimized model does not run in ONNX Runtime: {error}") from error
        bad = [name for name, value in outputs.items() if value.dtype.kind == "f" and not np.isfinite(value).all()]
        if bad:
            raise ConversionError(f"{variant}: the optimized model gives NaN/Inf in {', '.join(bad)}")
