"""``hepdeploy triton add`` (with ``--python-backend`` for a Python-backend twin) and ``hepdeploy triton check``.

The ``triton`` group is registered on the main group here; other modules (the serve
stage) attach their own subcommands to ``main.commands['triton']``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from hepdeploy.cli.options import server_release_option, spec_option
from hepdeploy.errors import BadInputError, HepDeployError
from hepdeploy.fsutil import check_output_folder, check_safe_name
from hepdeploy.plan_compat import DEFAULT_SERVER_RELEASE
from hepdeploy.plan_compat import server_release as release_by_name
from hepdeploy.platforms import USER_PLATFORMS
from hepdeploy.preprocess_spec import spec_from_preprocess
from hepdeploy.serving.latency import spec_less_defaults
from hepdeploy.spec import ModelSpec, TritonSpec
from hepdeploy.triton.check import CheckEnvironment, check_repository_report
from hepdeploy.triton.ensemble import ensemble_requests, plan_ensemble
from hepdeploy.triton.plan import ModelRequest, PublicationRequest, plan_publication
from hepdeploy.triton.repository import publish
from hepdeploy.triton.supersonic import (
    SupersonicOptions,
    parse_replicas,
    write_supersonic_values,
)
from hepdeploy.validate.reference import load_data_file

log = logging.getLogger("hepdeploy.triton")


@click.group("triton")
def triton() -> None:
    """Write and check Triton Inference Server model repositories."""


@triton.command("add")
@click.argument("repo", type=click.Path(path_type=Path, file_okay=False))
@click.argument("model", type=click.Path(path_type=Path))
@spec_option("Model spec (YAML) whose triton: block sets batching, instances, warm-up ...")
@click.option("--name", help="Triton model name (default: the spec's triton.model_name, its name, or the file stem).")
@click.option("--cpu-twin", "cpu_twin", type=click.Path(path_type=Path, dir_okay=False),
              help="Also publish this model (e.g. the int8-cpu variant) as NAME_cpu for CPU servers.")
@click.option("--platform", type=click.Choice(USER_PLATFORMS),
    help="Triton platform (default: from the file suffix).")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Instance kind of MODEL itself.")
@click.option("--warmup", "warmup_path", type=click.Path(path_type=Path),
              help="Golden set (.npz or ONNX test-data folder) or plain inputs .npz: the first row (the whole "
                   "arrays for a model without batch axis) becomes the model_warmup data.")
@click.option("--verdict", "verdict_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Validation report (JSON) to record in the version's manifest.")
@click.option("--python-backend", is_flag=True,
              help="Also publish NAME_py: a Python-backend twin running the same ONNX file with ONNX Runtime "
                   "(same tensors, dims, batching), for servers without the ONNX Runtime backend.")
@click.option("--preprocess", "preprocess_json", type=click.Path(path_type=Path, dir_okay=False),
              help="A weaver preprocess.json: also publish NAME_preprocess (a Python-backend model running its "
                   "rules) and NAME_ensemble (raw per-particle features in, the model's outputs out; its model step "
                   "is NAME_py with --python-backend). Without --spec, the json is the spec: groups, their order "
                   "and lengths, and the class labels (output_names) come from it, the tensors from the model.")
@click.option("--strict", is_flag=True,
              help="Refuse, instead of warning, when the json's min_length lets through batches the graph cannot "
                   "run (a dim bound, e.g. a k-NN's TopK).")
@click.option("--max-batch-size", "max_batch_size", type=click.IntRange(0, None),
              help="Triton max_batch_size (overrides the spec's; without a spec, skips the quick t(b) sweep that "
                   "otherwise picks it and the preferred size).")
@click.option("--convention", type=click.Choice(["cmssw", "weaver"]),
              help="With --preprocess: how NaN/Inf are handled (default: the spec's data.preprocess.convention, "
                   "else cmssw).")
def add_command(
    repo: Path,
    model: Path,
    spec: ModelSpec | None,
    name: str | None,
    cpu_twin: Path | None,
    platform: str | None,
    kind: str,
    warmup_path: Path | None,
    verdict_path: Path | None,
    python_backend: bool,
    preprocess_json: Path | None,
    convention: str | None,
    strict: bool,
    max_batch_size: int | None,
) -> None:
    """Publish MODEL as the next version of a model in REPO (atomically; REPO is created if missing).

    With --preprocess, also a Triton ensemble NAME_ensemble that takes the raw features of the json's
    groups (G_raw [batch, C, n] and G_length [batch, 1] per group that is not a mask) and returns the
    model's outputs, preprocessing them in NAME_preprocess.
    """
    if preprocess_json is not None and spec is None:  # the json is the spec: say where each field came from
        derived = spec_from_preprocess(model, preprocess_json, name=name)
        spec = derived.spec
        for line in derived.lines():
            log.info("spec from %s: %s", preprocess_json.name, line)
    triton_spec = spec.triton if spec else None
    name = name or (triton_spec.model_name if triton_spec else None) or (spec.name if spec else None) or model.stem
    with_python_twin = python_backend or (triton_spec is not None and triton_spec.python_backend)
    if with_python_twin and model.suffix != ".onnx":  # refused before anything is published
        raise BadInputError(f"{model}: --python-backend needs an ONNX model")
    if convention is not None and preprocess_json is None:
        raise BadInputError("--convention goes with --preprocess")
    ensemble = None
    if preprocess_json is not None:  # every check and config before anything is published
        if platform not in (None, "onnxruntime_onnx"):
            raise BadInputError(f"--preprocess serves an ONNX model, not --platform {platform}")
        ensemble = plan_ensemble(model, preprocess_json, name=name, spec=spec, triton=triton_spec,  # type: ignore[arg-type]
                                 convention=convention, python_backend=with_python_twin, kind=kind)
        if ensemble.warnings and strict:
            raise BadInputError(ensemble.warnings[0] + " (--strict)")
        for line in ensemble.warnings:
            log.warning("%s", line)
    warmup = None
    if warmup_path is not None:
        warmup = load_data_file(warmup_path)  # a golden set (input/NAME keys), ONNX test data, or plain inputs
    elif spec is not None and spec.data.reference and (triton_spec is None or triton_spec.warmup):
        reference = Path(spec.data.reference)
        if reference.suffix == ".npz" and reference.is_file():
            warmup = load_data_file(reference)
    if warmup is not None and spec is not None:
        input_names = {t.name for t in spec.inputs}
        warmup = {k: v for k, v in warmup.items() if k in input_names}
        if not warmup and warmup_path is not None:
            raise BadInputError(f"{warmup_path}: holds no array for the model's inputs ({', '.join(sorted(input_names))})")
    verdict = None
    if verdict_path is not None:
        try:
            verdict = json.loads(verdict_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise BadInputError(f"{verdict_path}: not a readable JSON verdict ({type(error).__name__})") from error

    if max_batch_size is not None:
        triton_spec = (triton_spec or TritonSpec()).model_copy(update={"max_batch_size": max_batch_size})
    elif spec is None and model.suffix == ".onnx" and model.is_file():
        triton_spec = _swept_batching(model, check_safe_name(name, "Triton model name"))

    # Every model of the set (the model, its twins, its preprocessing and ensemble) is planned and checked in
    # full, then all are published together: a twin that cannot be published never leaves the model without it.
    request = PublicationRequest(
        ModelRequest(model, name, spec=spec, triton=triton_spec, kind=kind, platform=platform,  # type: ignore[arg-type]
                     verdict=verdict, warmup_inputs=warmup),
        cpu_twin=cpu_twin, cpu_twin_verdict=verdict,
        # The twin's warm-up comes from --warmup only (not the spec's reference fallback), as before.
        python_twin=model if with_python_twin else None, python_twin_warmup=warmup_path is not None,
        extra=ensemble_requests(ensemble, verdict=verdict) if ensemble is not None else ())
    try:
        plans = plan_publication(request)
    except HepDeployError as error:
        source = f" (warm-up data: {warmup_path})" if warmup_path is not None and "warm-up" in str(error) else ""
        raise type(error)(f"{error}{source}; nothing was published") from error.__cause__
    for result in publish(repo, plans):
        click.echo(result.line())
    if ensemble is not None:
        click.echo(f"{ensemble.ensemble_name}: send {', '.join(t.name for t in ensemble.ensemble_config.input)}; "
                   f"steps {ensemble.preprocess_name} ({ensemble.convention}) -> {ensemble.model_step}")


def _swept_batching(model: Path, name: str) -> TritonSpec | None:
    """A spec-less ONNX model's max_batch_size and preferred size from a quick t(b) sweep on this machine (None:
    the model has no batch axis, or the sweep could not run it and the stage's defaults apply)."""
    try:
        defaults = spec_less_defaults(model)
    except HepDeployError as error:
        log.warning("%s: quick t(b) sweep failed (%s); the default max_batch_size applies", name, error)
        return None
    if defaults is None:
        return None
    click.echo(f"{name}: max_batch_size {defaults.max_batch_size}, preferred_batch_size "
               f"{defaults.preferred_batch_size} from a quick t(b) sweep ({defaults.curve.where})")
    log.info("%s: %s", name, defaults.why)
    return defaults.triton_spec()


@triton.command("check")
@click.argument("repo", type=click.Path(path_type=Path, file_okay=False))
@click.option("--no-run", is_flag=True, help="Structure and tensors only; do not run models in ONNX Runtime.")
@server_release_option
def check_command(repo: Path, no_run: bool, server_release: str | None) -> None:
    """Check every model in REPO: one line per problem, exit 1 if any.

    TensorRT plans are checked from their recorded metadata on any machine (engine profile
    against the config, compute capability against cc_model_filenames, TensorRT version
    against --server-release) and deserialized only where TensorRT and a GPU of the plan's
    compute capability are present; elsewhere a note says why the plan is not loadable here.
    """
    if not repo.is_dir():
        raise BadInputError(f"{repo}: {'not a folder' if repo.exists() else 'no such folder'} (a model repository)")
    environment = CheckEnvironment(release=release_by_name(server_release) if server_release else None)
    report = check_repository_report(repo, run_models=not no_run, environment=environment)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    for problem in report.problems:
        click.echo(problem.line())
    click.echo(report.summary(), err=bool(report.problems))
    if report.problems:
        raise click.exceptions.Exit(1)


@triton.command("supersonic")
@click.argument("repo", type=click.Path(path_type=Path, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The values override to write (YAML).")
@click.option("--storage", type=click.Choice(["pvc", "nfs", "cvmfs"]), default="pvc", show_default=True,
              help="How the pods mount the repository.")
@click.option("--claim", help="pvc: the PersistentVolumeClaim that holds the repository.")
@click.option("--nfs-server", help="nfs: the NFS server.")
@click.option("--nfs-path", help="nfs: the exported path of the repository.")
@click.option("--gpus", type=click.IntRange(0, None), default=1, show_default=True, help="GPUs per Triton pod.")
@click.option("--replicas", default="1", show_default=True, metavar="MIN[:MAX]",
              help="Triton pods; MIN:MAX with MAX > MIN turns on KEDA autoscaling between them.")
@server_release_option
def supersonic_command(repo: Path, output: Path, storage: str, claim: str | None, nfs_server: str | None,
                       nfs_path: str | None, gpus: int, replicas: str, server_release: str | None) -> None:
    """Write a SuperSONIC Helm values override that serves REPO (chart fastmachinelearning/SuperSONIC 0.3.x).

    Then: helm repo add fastml https://fastmachinelearning.org/SuperSONIC/ &&
    helm install sonic fastml/supersonic -n NAMESPACE -f OUTPUT
    """
    check_output_folder(output)
    low, high = parse_replicas(replicas)
    options = SupersonicOptions(storage=storage, claim=claim, nfs_server=nfs_server, nfs_path=nfs_path,  # type: ignore[arg-type]
                                gpus=gpus, min_replicas=low, max_replicas=high,
                                release=server_release or DEFAULT_SERVER_RELEASE)
    write_supersonic_values(repo, output, options)
    click.echo(f"wrote {output}: mount {storage}, {gpus} GPU(s) per pod, replicas {low}..{high}; "
               f"helm install sonic fastml/supersonic -n NAMESPACE -f {output}")


def register(group: click.Group) -> None:
    """Add the ``triton`` group to the main group."""
    group.add_command(triton)
