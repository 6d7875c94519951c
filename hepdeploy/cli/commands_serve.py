"""Serving commands: ``hepdeploy triton serve``, ``hepdeploy perf``, and the server options of
``hepdeploy validate`` (``--server/--model``) and ``hepdeploy triton add`` (``--python-backend``).

The last two are attached to the commands that the validate and triton stages own, by adding
options and wrapping their callbacks here: without the new options those commands behave exactly
as before.
"""
from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click

log = logging.getLogger("hepdeploy.cli.serve")


def _concurrency(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected a comma-separated list of integers such as 1,2,4") from None
    if not levels or any(level < 1 for level in levels):
        raise click.BadParameter(f"{text!r}: levels must be positive integers")
    return levels


def _load_inputs_and_reference(golden: Path) -> tuple[dict[str, Any], Any]:
    """(inputs, reference set or None): a golden set from `hepdeploy reference`, or a plain inputs .npz."""
    from hepdeploy.errors import DataError
    from hepdeploy.validate import load_reference

    try:
        reference = load_reference(golden)
        return dict(reference.inputs), reference
    except DataError:
        from hepdeploy.data import load_tensors

        return load_tensors(golden), None


# --------------------------------------------------------------------------- triton serve


@click.command("serve")
@click.argument("repo", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--tritonserver", "tritonserver_path", type=click.Path(path_type=Path, dir_okay=False),
              help="The tritonserver binary to run (default: one on PATH, else the bundled one).")
@click.option("--no-bundled", is_flag=True, help="Never fall back to the nvidia-pytriton server.")
@click.option("--install", is_flag=True,
              help="Download and unpack the bundled server into the cache (without REPO: install and exit).")
@click.option("--wheel", type=click.Path(path_type=Path, dir_okay=False),
              help="Install the bundled server from this nvidia-pytriton wheel instead of downloading it.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--http-port", type=click.IntRange(1, 65535), help="HTTP port (default: a free one).")
@click.option("--grpc-port", type=click.IntRange(1, 65535), help="gRPC port (default: a free one).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Metrics port (default: a free one).")
@click.option("--log-file", type=click.Path(path_type=Path, dir_okay=False), help="Server log (default: a temp file).")
@click.option("--startup-timeout", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for the server to become ready.")
def serve_command(repo: Path | None, tritonserver_path: Path | None, no_bundled: bool, install: bool,
                  wheel: Path | None, host: str, http_port: int | None, grpc_port: int | None,
                  metrics_port: int | None, log_file: Path | None, startup_timeout: float) -> None:
    """Start a local Triton server on REPO until Ctrl-C (or only install the bundled server with --install)."""
    from hepdeploy.triton.server import TritonServer, bundled_server, find_tritonserver, install_bundled_server

    if install or wheel:
        folder = install_bundled_server(wheel=wheel)
        click.echo(f"bundled server ready in {folder}", err=True)
        click.echo(bundled_server(install=False).describe(), err=True)
        if repo is None:
            return
    if repo is None:
        raise click.UsageError("give a model repository folder (or --install to only install the server)")
    binary = find_tritonserver(tritonserver_path, allow_bundled=not no_bundled, repository=repo)
    click.echo(f"server: {binary.describe()}", err=True)
    server = TritonServer(repo, binary=binary, host=host, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, log_path=log_file, startup_timeout_s=startup_timeout)
    try:
        server.start()
        click.echo(f"ready: grpc {server.grpc_url}  http {server.http_url}  metrics {server.metrics_url}  "
                   f"(pid {server.pid}, log {server.log_path})")
        for name, message in sorted(server.model_load_errors().items()):
            click.echo(f"not loaded: {name}: {message}", err=True)
        click.echo(f"serving: {', '.join(server.ready_models()) or 'no model'}; Ctrl-C stops the server", err=True)
        while server.is_running():  # until Ctrl-C or the server exits by itself
            time.sleep(0.5)
        click.echo(f"tritonserver exited (code {server.process.returncode if server.process else '?'}); "
                   f"log {server.log_path}", err=True)
        raise click.exceptions.Exit(1)
    except KeyboardInterrupt:
        click.echo("stopping tritonserver ...", err=True)
    finally:
        code = server.stop()
        if code is not None:
            log.info("tritonserver stopped (exit code %s)", code)


@click.command("serve-check")
@click.argument("repo", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--golden", "goldens", multiple=True, metavar="NAME=FILE",
              help="Golden set of model NAME (twins NAME_py / NAME_cpu use it too); repeat per model.")
@click.option("--tritonserver", "tritonserver_path", type=click.Path(path_type=Path, dir_okay=False),
              help="The tritonserver binary to run (default: one on PATH, else the bundled one).")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds for the whole check.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the report as JSON.")
def serve_check_command(repo: Path, goldens: tuple[str, ...], tritonserver_path: Path | None, timeout: float,
                        json_path: Path | None) -> None:
    """Start a local server on REPO, validate every model it loads against its golden set, stop it.

    Exit 0 when every loaded model with a golden set agrees, 1 when one disagrees or the server fails,
    2 when no server can run here. Models the server refuses are listed with its own message.
    """
    import json as json_module

    from hepdeploy.errors import DependencyMissingError, ValidationFailedError
    from hepdeploy.fsutil import atomic_write_text
    from hepdeploy.triton.server import find_tritonserver, serve_check

    mapping: dict[str, Path] = {}
    for item in goldens:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r}: expected NAME=FILE", param_hint="--golden")
        mapping[name] = Path(path)
    binary = find_tritonserver(tritonserver_path, repository=repo) if tritonserver_path else None
    report = serve_check(repo, mapping, timeout_s=timeout, binary=binary)
    for line in report.lines():
        click.echo(line)
    if json_path is not None:
        atomic_write_text(json_path, json_module.dumps(report.to_dict(), indent=2, default=str) + "\n")
    if report.status == "skipped":
        raise DependencyMissingError(report.reason)
    if not report.ok:
        raise ValidationFailedError(f"serve check failed: {report.reason or 'see above'}")


# --------------------------------------------------------------------------- perf


@click.command("perf")
@click.option("--server", "server_url", metavar="HOST:PORT", help="gRPC address of a running server.")
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False),
              help="Instead of --server: start a local server on this repository for the measurement.")
@click.option("--model", "model_ref", required=True, metavar="NAME[:VERSION]", help="Served model.")
@click.option("--golden", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Golden set (or inputs .npz) whose inputs are sent.")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Spec whose triton.perf block says what one event is.")
@click.option("--batch", type=click.IntRange(min=1), help="Rows per request (default: spec triton.perf.batch_per_request).")
@click.option("--requests-per-event", type=click.IntRange(min=1), help="Requests per event (default: from the spec).")
@click.option("--concurrency", default="1,2,4,8,16", show_default=True, help="Simultaneous clients, comma-separated.")
@click.option("--duration", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Measured seconds per level.")
@click.option("--warmup", default=1.0, show_default=True, type=click.FloatRange(min=0), help="Warm-up seconds per level.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds per request.")
@click.option("--engine", type=click.Choice(["client", "perf_analyzer"]), default="client", show_default=True)
@click.option("--perf-analyzer", "perf_analyzer_path", help="perf_analyzer binary (default: on PATH).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), help="Write events/s vs clients PNG.")
def perf_command(server_url: str | None, repo: Path | None, model_ref: str, golden: Path, spec_path: Path | None,
                 batch: int | None, requests_per_event: int | None, concurrency: str, duration: float, warmup: float,
                 timeout: float, engine: str, perf_analyzer_path: str | None, json_path: Path | None,
                 plot_path: Path | None) -> None:
    """Throughput (events/s, inferences/s) and latency p50/p95/p99 versus simultaneous clients."""
    from hepdeploy.perf import EventDefinition, run_perf, write_perf_outputs
    from hepdeploy.spec import load_spec
    from hepdeploy.triton.server import TritonServer
    from hepdeploy.validate.triton_runner import parse_model_ref

    if (server_url is None) == (repo is None):
        raise click.UsageError("give exactly one of --server HOST:PORT or --repo REPOSITORY")
    levels = _concurrency(concurrency)
    name, version = parse_model_ref(model_ref)
    spec = load_spec(spec_path) if spec_path else None
    event = EventDefinition.from_spec(spec, batch, requests_per_event)
    inputs, _ = _load_inputs_and_reference(golden)
    expected = (spec.inputs, spec.outputs) if spec is not None else None

    def progress(text: str) -> None:
        click.echo(text, err=True)

    def measure(url: str) -> Any:
        return run_perf(url, name, inputs, version=version, concurrency=levels, duration_s=duration,
                        warmup_s=warmup, event=event, timeout_s=timeout, expected=expected, engine=engine,  # type: ignore[arg-type]
                        perf_analyzer=perf_analyzer_path, progress=progress)

    if repo is not None:
        with TritonServer(repo, load=[name]) as server:
            errors = server.model_load_errors()
            if name in errors:
                from hepdeploy.errors import RepositoryError

                raise RepositoryError(f"the server did not load {name}: {errors[name]}")
            report = measure(server.grpc_url)
    else:
        report = measure(server_url)  # type: ignore[arg-type]
    click.echo(report.table())
    for path in write_perf_outputs(report, json_path, plot_path):
        click.echo(f"wrote {path}", err=True)


# --------------------------------------------------------------------------- validate --server


def validate_served(server: str, model_ref: str, golden: Path, *, protocol: str = "grpc", timeout_s: float = 30.0,
                    spec: Any = None, artifact: Path | None = None, precision: str | None = None, atol: Any = None,
                    rtol: Any = None, policy: str | None = None, chunk_size: int | None = None) -> Any:
    """Validate what the server returns for MODEL against GOLDEN (same comparisons, physics and reports)."""
    from hepdeploy.validate import load_reference, validate_runner
    from hepdeploy.validate.triton_runner import TritonRunner, parse_model_ref

    name, version = parse_model_ref(model_ref)
    expected = None
    chosen_precision = precision
    if artifact is not None:
        from hepdeploy.artifacts import read_artifact

        sidecar = read_artifact(artifact).sidecar
        expected = (sidecar.inputs, sidecar.outputs)
        chosen_precision = chosen_precision or sidecar.variant.precision
    elif spec is not None:
        expected = (spec.inputs, spec.outputs)
    reference = load_reference(golden)
    with TritonRunner(server, name, version, protocol=protocol, timeout_s=timeout_s,  # type: ignore[arg-type]
                      expected=expected) as runner:
        return validate_runner(runner, reference, name=model_ref, candidate=f"{protocol}://{runner.url}/{model_ref}",
                               precision=chosen_precision or "fp32", spec=spec, atol=atol, rtol=rtol, policy=policy,
                               chunk_size=chunk_size)


_SERVER_OPTIONS = [
    click.Option(["--server"], metavar="HOST:PORT",
                 help="Validate what a live Triton server returns (with --model and --golden) instead of files."),
    click.Option(["--model", "served_model"], metavar="NAME[:VERSION]", help="With --server: the served model."),
    click.Option(["--protocol"], type=click.Choice(["grpc", "http"]), default="grpc", show_default=True,
                 help="With --server: gRPC (default) or HTTP (needs tritonclient[http])."),
    click.Option(["--server-timeout"], type=click.FloatRange(min=0.1), default=30.0, show_default=True,
                 help="With --server: seconds allowed for every call to the server."),
    click.Option(["--artifact"], type=click.Path(path_type=Path, dir_okay=False),
                 help="With --server: the artifact (.onnx + sidecar) whose tensors the served model must have."),
]


def _attach_server_validation(validate: click.Command) -> None:
    if any(p.name == "server" for p in validate.params):
        return
    original = validate.callback
    assert original is not None

    @functools.wraps(original)
    def callback(**kwargs: Any) -> Any:
        server = kwargs.pop("server")
        model_ref = kwargs.pop("served_model")
        protocol = kwargs.pop("protocol")
        timeout_s = kwargs.pop("server_timeout")
        artifact = kwargs.pop("artifact")
        if server is None:
            if model_ref is not None or artifact is not None:
                raise click.UsageError("--model and --artifact go with --server HOST:PORT")
            return original(**kwargs)
        return _validate_served_command(server, model_ref, protocol, timeout_s, artifact, kwargs)

    validate.callback = callback
    validate.params.extend(_SERVER_OPTIONS)


def _validate_served_command(server: str, model_ref: str | None, protocol: str, timeout_s: float,
                             artifact: Path | None, options: dict[str, Any]) -> None:
    from rich.console import Console

    from hepdeploy.errors import ValidationFailedError
    from hepdeploy.spec import load_spec
    from hepdeploy.validate import console_table, write_reports
    from hepdeploy.validate.compare import parse_tolerance_values

    if model_ref is None or options.get("golden") is None:
        raise click.UsageError("--server needs --model NAME[:VERSION] and --golden FILE")
    if options.get("candidates"):
        raise click.UsageError("with --server, give no CANDIDATE files (the server's model is the candidate)")
    unused = [f"--{k.replace('_', '-')}" for k in ("reference_model", "data", "localize", "fp32_model", "providers",
                                                      "save_golden") if options.get(k)]
    if unused:
        raise click.UsageError(f"{', '.join(unused)} do not apply with --server")
    spec = load_spec(options["spec_path"]) if options.get("spec_path") else None
    report = validate_served(
        server, model_ref, options["golden"], protocol=protocol, timeout_s=timeout_s, spec=spec, artifact=artifact,
        precision=options.get("precision"), atol=parse_tolerance_values(options.get("atol") or (), "--atol"),
        rtol=parse_tolerance_values(options.get("rtol") or (), "--rtol"), policy=options.get("policy"),
        chunk_size=options.get("chunk_size"),
    )
    Console(file=sys.stdout, width=160).print(console_table([report]))
    if options.get("report_dir") is not None:
        written = write_reports([report], options["report_dir"])
        click.echo(f"reports: {len(written)} files in {options['report_dir']}", err=True)
    if not report.passed:
        raise ValidationFailedError(f"the served model {model_ref} disagrees with the golden set: {report.verdict}")


# --------------------------------------------------------------------------- triton add --python-backend


def _attach_python_backend(add: click.Command) -> None:
    if any(p.name == "python_backend" for p in add.params):
        return
    original = add.callback
    assert original is not None

    @functools.wraps(original)
    def callback(**kwargs: Any) -> Any:
        python_backend = kwargs.pop("python_backend")
        result = original(**kwargs)
        spec = None
        if kwargs.get("spec_path"):
            from hepdeploy.spec import load_spec

            spec = load_spec(kwargs["spec_path"])
        if python_backend or (spec is not None and spec.triton.python_backend):
            _publish_twin_for_add(kwargs, spec)
        return result

    add.callback = callback
    add.params.append(click.Option(
        ["--python-backend"], is_flag=True,
        help="Also publish NAME_py: a Python-backend twin running the same ONNX file with ONNX Runtime "
             "(same tensors, dims, batching), for servers without the ONNX Runtime backend."))


def _publish_twin_for_add(options: dict[str, Any], spec: Any) -> None:
    from hepdeploy.errors import BadInputError
    from hepdeploy.triton.python_backend import publish_python_twin, twin_name

    model: Path = options["model"]
    if model.suffix != ".onnx":
        raise BadInputError(f"{model}: --python-backend needs an ONNX model")
    triton_spec = spec.triton if spec is not None else None
    base = options.get("name") or (triton_spec.model_name if triton_spec else None) or (
        spec.name if spec is not None else None) or model.stem
    warmup = None
    if options.get("warmup_path") is not None:
        from hepdeploy.data import load_tensors

        warmup = load_tensors(options["warmup_path"])
        if spec is not None:
            warmup = {k: v for k, v in warmup.items() if k in {t.name for t in spec.inputs}}
    result = publish_python_twin(options["repo"], model, name=twin_name(base), spec=spec, triton=triton_spec,
                                 warmup_inputs=warmup)
    click.echo(result.line())


def register(group: click.Group) -> None:
    """``perf`` on the main group; ``serve`` in the triton group; server options on validate and triton add."""
    group.add_command(perf_command)
    triton_group = group.commands.get("triton")
    if isinstance(triton_group, click.Group):
        triton_group.add_command(serve_command)
        triton_group.add_command(serve_check_command)
        add = triton_group.commands.get("add")
        if add is not None:
            _attach_python_backend(add)
    else:  # the triton stage is not installed: still offer the server
        log.debug("no triton group to attach `serve` to")
    validate = group.commands.get("validate")
    if validate is not None:
        _attach_server_validation(validate)
