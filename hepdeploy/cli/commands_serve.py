"""Serving commands: ``hepdeploy triton serve``, ``hepdeploy triton serve-check`` and ``hepdeploy perf``.

``hepdeploy validate --server`` lives in commands_validate.py (library: validate.validate_served),
``hepdeploy triton add --python-backend`` in commands_triton.py (library: triton.plan.plan_publication).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from hepdeploy.backend.triton import ServerTarget
from hepdeploy.cli.options import (
    ServerOptions,
    golden_option,
    json_file_option,
    parse_int_list,
    parse_pairs,
    server_options,
    spec_option,
    tritonserver_option,
)
from hepdeploy.errors import (
    BadInputError,
    DependencyMissingError,
    RepositoryError,
    ValidationFailedError,
)
from hepdeploy.fsutil import atomic_write_text, check_output_folder
from hepdeploy.perf import EventDefinition, PerfReport, PerfSettings, run_perf, write_perf_outputs
from hepdeploy.serve_check import serve_check
from hepdeploy.spec import ModelSpec
from hepdeploy.triton.server import (
    ServerAddress,
    TritonServer,
    bundled_server,
    find_tritonserver,
    install_bundled_server,
)
from hepdeploy.validate.reference import load_data_file

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- triton serve


@click.command("serve")
@click.argument("repo", required=False, type=click.Path(path_type=Path, file_okay=False))
@tritonserver_option
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
    if repo is not None and not repo.is_dir():  # before the server is looked for (or downloaded)
        raise BadInputError(f"{repo}: {'not a folder' if repo.exists() else 'no such folder'} (a model repository)")
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
    address = ServerAddress(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    server = TritonServer(repo, binary=binary, address=address, log_path=log_file, startup_timeout_s=startup_timeout)
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
@click.option("--golden-for", "goldens", multiple=True, metavar="NAME=FILE",
              help="Golden set of model NAME (twins NAME_py / NAME_cpu use it too); repeat per model.")
@tritonserver_option
@click.option("--check-timeout", "timeout", default=300.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds for the whole check.")
@json_file_option
def serve_check_command(repo: Path, goldens: tuple[str, ...], tritonserver_path: Path | None, timeout: float,
                        json_path: Path | None) -> None:
    """Start a local server on REPO, validate every model it loads against its golden set, stop it.

    Exit 0 when every loaded model with a golden set agrees, 1 when one disagrees or the server fails,
    2 when no server can run here. Models the server refuses are listed with its own message.
    """
    if not repo.is_dir():
        raise BadInputError(f"{repo}: {'not a folder' if repo.exists() else 'no such folder'} (a model repository)")
    if json_path is not None:
        check_output_folder(json_path)  # before the server starts, not after it ran
    mapping = {name: Path(path) for name, path in parse_pairs(goldens, "--golden-for", "NAME=FILE").items()}
    binary = find_tritonserver(tritonserver_path, repository=repo) if tritonserver_path else None
    report = serve_check(repo, mapping, timeout_s=timeout, binary=binary)
    for line in report.lines():
        click.echo(line)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    if report.status == "skipped":
        raise DependencyMissingError(report.reason)
    if not report.ok:
        raise ValidationFailedError(f"serve check failed: {report.reason or 'see above'}")


# --------------------------------------------------------------------------- perf


@click.command("perf")
@server_options(protocols=False, model_required=True)
@click.option("--repo", type=click.Path(path_type=Path, file_okay=False),
              help="Instead of --server: start a local server on this repository for the measurement.")
@golden_option(required=True, help="Golden set (or a plain inputs .npz) whose inputs are sent.")
@spec_option("Spec whose triton.perf block says what one event is.")
@click.option("--batch", type=click.IntRange(min=1), help="Rows per request (default: spec triton.perf.batch_per_request).")
@click.option("--requests-per-event", type=click.IntRange(min=1), help="Requests per event (default: from the spec).")
@click.option("--concurrency", default="1,2,4,8,16", show_default=True, help="Simultaneous clients, comma-separated.")
@click.option("--duration", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Measured seconds per level.")
@click.option("--warmup-seconds", "warmup", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Warm-up seconds per level.")
@click.option("--engine", type=click.Choice(["client", "perf_analyzer"]), default="client", show_default=True)
@click.option("--perf-analyzer", "perf_analyzer_path", help="perf_analyzer binary (default: on PATH).")
@json_file_option
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), help="Write events/s vs clients PNG.")
def perf_command(server: ServerOptions, repo: Path | None, golden: Path, spec: ModelSpec | None, batch: int | None,
                 requests_per_event: int | None, concurrency: str, duration: float, warmup: float, engine: str,
                 perf_analyzer_path: str | None, json_path: Path | None, plot_path: Path | None) -> None:
    """Throughput (events/s, inferences/s) and latency p50/p95/p99 versus simultaneous clients."""
    if (server.url is None) == (repo is None):
        raise click.UsageError("give exactly one of --server HOST:PORT or --repo REPOSITORY")
    levels = parse_int_list(concurrency, "--concurrency")
    name, version = server.model_ref()
    settings = PerfSettings(tuple(levels), duration, warmup, EventDefinition.from_spec(spec, batch, requests_per_event),
                            engine, perf_analyzer_path)  # type: ignore[arg-type]
    inputs = load_data_file(golden)
    expected = (spec.inputs, spec.outputs) if spec is not None else None

    def progress(text: str) -> None:
        click.echo(text, err=True)

    def measure(target: ServerTarget) -> PerfReport:
        return run_perf(target, name, inputs, version=version, settings=settings, expected=expected, progress=progress)

    if repo is not None:
        with TritonServer(repo, load=[name]) as local:
            errors = local.model_load_errors()
            if name in errors:
                raise RepositoryError(f"the server did not load {name}: {errors[name]}")
            report = measure(server.target(local.grpc_url))
    else:
        report = measure(server.target())
    click.echo(report.table())
    for path in write_perf_outputs(report, json_path, plot_path):
        click.echo(f"wrote {path}", err=True)


def register(group: click.Group) -> None:
    """``perf`` on the main group; ``serve`` and ``serve-check`` in the triton group."""
    group.add_command(perf_command)
    triton_group = group.commands.get("triton")
    if isinstance(triton_group, click.Group):
        triton_group.add_command(serve_command)
        triton_group.add_command(serve_check_command)
    else:  # the triton stage is not installed: no group to add `serve` to
        log.debug("no triton group to attach `serve` to")
