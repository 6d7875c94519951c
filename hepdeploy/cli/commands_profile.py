"""CLI command ``hepdeploy profile``: a serving configuration from the data and a latency budget."""
from __future__ import annotations

from pathlib import Path

import click

from hepdeploy.cli.options import ServerOptions, server_options, spec_option
from hepdeploy.convert import convert_from_spec
from hepdeploy.convert.options import spec_from_options
from hepdeploy.errors import BadInputError
from hepdeploy.fsutil import check_input_file, check_output_dir
from hepdeploy.serving.confirm import ClientsLoad
from hepdeploy.serving.profile import ProfileRequest, ProfileSettings, event_rows, profile_model
from hepdeploy.spec import ModelSpec, load_spec


@click.command("profile")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Events: .npz (padded arrays, masks or zero rows mark absent entries) or ROOT ntuples read "
                   "through the spec's data mapping.")
@spec_option("With an ONNX MODEL: the spec (tensors, dims, data mapping, one event's rows in triton.perf).")
@click.option("--latency-budget-ms", "budget_ms", type=click.FloatRange(min=0, min_open=True), default=100.0,
              show_default=True, help="p99 budget of one request (one event's natural batch).")
@click.option("--rate", "rate", type=click.FloatRange(min=0, min_open=True), metavar="EVENTS_PER_S",
              help="Events per second to carry (default: half of what one instance carries one event at a time).")
@server_options(protocols=False)
@click.option("--coverage", type=click.FloatRange(0, 1, min_open=True), default=0.999, show_default=True,
              help="Share of the data's events every dynamic dim's max must hold (the rest are truncated where the "
                   "spec's reading cuts them, as weaver's max_length does, else refused).")
@click.option("--profiles", type=click.IntRange(min=1), default=2, show_default=True,
              help="Bucketed TensorRT shape profiles to offer.")
@click.option("--no-live", is_flag=True, help="Do not start the local server: t(b) inline, nothing confirmed.")
@click.option("--no-clients", is_flag=True, help="Skip the clients-per-instance figure (and KEDA's threshold).")
@click.option("--repeats", type=click.IntRange(min=3), default=3, show_default=True,
              help="Runs of the clients-per-instance figure (its interval is min..max over them).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulated and the sent arrivals.")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("serving"),
              show_default=True, help="Folder for serving.yaml, serving-report.json, serving.md and the plots.")
def profile_command(source: Path, data: Path, spec: ModelSpec | None, budget_ms: float, rate: float | None,
                    server: ServerOptions, coverage: float, profiles: int, no_live: bool,
                    no_clients: bool, repeats: int, seed: int, out_dir: Path) -> None:
    """Choose max_batch_size, preferred sizes, queue delay, instances and dims for SOURCE from DATA.

    SOURCE is a spec (its source is converted first) or an ONNX MODEL (--spec, else its tensors alone).
    Writes OUT/serving.yaml (a spec fragment, a why on every number), serving-report.json, serving.md and
    plots. With --server (and --model, the served name) t(b) and the confirmation go through that server;
    otherwise through the bundled local server's Python-backend twin, published with the chosen config.
    Exit 2 when the choice does not fit the shape profiles or the data (nothing to publish).
    """
    out_dir = check_output_dir(out_dir)
    if not data.exists():
        raise BadInputError(f"{data}: data not found")
    if source.suffix in (".yaml", ".yml"):
        spec = load_spec(source)
        out_dir.mkdir(parents=True, exist_ok=True)
        model = convert_from_spec(spec, out_dir / f"{spec.name}.onnx").path
    else:
        model = check_input_file(source, "model file")
        spec = spec or spec_from_options(source, name=source.stem)
    rows, _ = event_rows(spec)
    settings = ProfileSettings(budget_s=budget_ms / 1e3, rate_per_s=rate, coverage=coverage,
                               profiles=profiles, seed=seed, live=not no_live, sonic=not no_clients,
                               clients=ClientsLoad(rows, repeats=repeats))
    request = ProfileRequest(spec, model, data, out_dir, settings, server.target() if server.given else None,
                             server.model_ref()[0] if server.model else None)
    report = profile_model(request)
    choice = report.choice
    click.echo(f"{report.model}: max_batch_size {choice.max_batch_size}, preferred {choice.preferred_batch_size}, "
               f"queue delay {choice.max_queue_delay_us} µs, {report.instances} instance(s) at "
               f"{report.rate_per_s:g} events/s; predicted p99 {choice.predicted_p99_s * 1e3:.2f} ms "
               f"(budget {budget_ms:g} ms)")
    if report.confirmation is not None:
        c = report.confirmation
        click.echo(f"measured p50 {c.measured_p50_s * 1e3:.2f} ms, p99 {c.measured_p99_s * 1e3:.2f} ms "
                   f"({c.requests} requests; measured/predicted p99 {c.p99_ratio:.2f})")
    if report.clients is not None:
        k = report.clients
        click.echo(f"clients per instance within the budget: {k.point} ({k.low}..{k.high}, {k.interval})"
                   + (f"; KEDA threshold {report.keda.threshold}" if report.keda else ""))
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {', '.join(str(p) for p in report.files)}")


def register(group: click.Group) -> None:
    group.add_command(profile_command)
