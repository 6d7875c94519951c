"""CLI commands of the zoo stage: ``hepdeploy zoo list | train | export``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hepdeploy.cli.options import budget_option, cache_option, json_flag_option
from hepdeploy.errors import BadInputError
from hepdeploy.model_zoo import (
    ExportOptions,
    export_network,
    find_cached,
    get_network,
    list_networks,
    train_network,
)

flavour_option = click.option("--flavour", type=click.Choice(["keras", "torch"]), default=None,
                              help="Framework (default: the network's first).")


def register(group: click.Group) -> None:
    """Add the ``zoo`` command group to the main group."""
    group.add_command(zoo)


@click.group()
def zoo() -> None:
    """The HEP networks of the model zoo: list, train (cached), export with spec and data."""


def _shape(tensors: Any) -> str:
    return ", ".join(f"{t.name}[{','.join(str(d) for d in t.shape)}]" for t in tensors)


def format_metrics(task: str, metrics: dict[str, float]) -> str:
    """The physics metric of a task in one short string."""
    if not metrics:
        return ""
    if task == "classification":
        return f"AUC {metrics['auc']:.3f}, acc {metrics['accuracy']:.3f}"
    if task == "edge_classification":
        return f"eff {metrics['efficiency']:.3f}, purity {metrics['purity']:.3f}, AUC {metrics['auc']:.3f}"
    text = f"bias {metrics['bias']:+.3f}, res {metrics['resolution']:.3f}"
    if "linear_resolution" in metrics:
        text += f" (linear fit {metrics['linear_resolution']:.3f})"
    return text


def zoo_rows(cache_dir: Path | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """One row per network and flavour: shapes, parameters, cached metrics (full budget preferred)."""
    rows = []
    for name in list_networks():
        net = get_network(name)
        for flavour in net.flavours:
            cached = find_cached(name, flavour, "full", seed, cache_dir) or find_cached(
                name, flavour, "reduced", seed, cache_dir
            )
            if cached is not None:
                parameters = cached.meta.get("parameters")
            else:
                parameters = net.parameter_count(net.build(flavour, seed=seed), flavour)
            rows.append(
                {
                    "name": name,
                    "flavour": flavour,
                    "task": net.task,
                    "inputs": _shape(net.inputs),
                    "outputs": _shape(net.outputs),
                    "parameters": parameters,
                    "budget": cached.budget if cached else None,
                    "train_seconds": cached.meta.get("train_seconds") if cached else None,
                    "metrics": cached.metrics if cached else {},
                }
            )
    return rows


@zoo.command("list")
@json_flag_option
@cache_option
def list_command(as_json: bool, cache_dir: Path | None) -> None:
    """Networks with frameworks, tensor shapes, parameter counts and cached metrics."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    with Console(stderr=True).status("building the zoo networks to count parameters"):
        rows = zoo_rows(cache_dir)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="hepdeploy model zoo")
    for column in ("network", "framework", "inputs", "outputs", "parameters", "metrics"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if row["metrics"]:
            metrics = format_metrics(row["task"], row["metrics"])
            if row["budget"] != "full":
                metrics += f" ({row['budget']} budget)"
        else:
            metrics = "not trained"
        cells = (row["name"], row["flavour"], row["inputs"], row["outputs"], f"{row['parameters']:,}", metrics)
        table.add_row(*(escape(cell) for cell in cells))
    Console(width=200).print(table)


@zoo.command("train")
@click.argument("name")
@flavour_option
@budget_option("Training budget; a reduced training is cached separately and never used as the full one.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Train again even if the cache has this training.")
@cache_option
def train_command(name: str, flavour: str | None, budget: str, seed: int, force: bool, cache_dir: Path | None) -> None:
    """Train NAME deterministically on CPU and cache weights, seed, data recipe and metrics."""
    from rich.console import Console

    net = get_network(name)
    with Console(stderr=True).status(f"training {name} ({budget} budget)"):
        result = train_network(name, flavour, budget, seed, cache_dir, force)
    click.echo(f"{name} ({result.flavour}, {budget} budget, seed {seed}): {format_metrics(net.task, result.metrics)}")
    click.echo(f"trained in {result.meta['train_seconds']} s, {result.meta['parameters']:,} parameters; "
               f"cached at {result.model_path.parent}")


@zoo.command("export")
@click.argument("name")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for the model, its spec and the reference/calibration data (created if missing).")
@flavour_option
@click.option("--train/--no-train", default=True, show_default=True,
              help="Train first when the cache has no weights (--no-train: cached or seeded untrained weights).")
@budget_option("Training budget when the cache has no weights yet.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--reference-samples", type=click.IntRange(min=1), default=None,
              help="Events in the reference set (default: the network's own size).")
@click.option("--root", is_flag=True,
              help="Also write the jets as NanoAOD-like ROOT ntuples (<stem>_reference.root, <stem>_calibration.root), "
                   "a weaver <stem>_preprocess.json and a spec <stem>_root.yaml that reads them (jet_mlp, particlenet).")
@cache_option
def export_command(name: str, out_dir: Path, flavour: str | None, train: bool, budget: str, seed: int,
                   reference_samples: int | None, root: bool, cache_dir: Path | None) -> None:
    """Write NAME's source model, spec YAML and labelled reference/calibration .npz into a folder
    (with --root: ROOT ntuples, a preprocess.json and a second spec reading them)."""
    from rich.console import Console

    net = get_network(name)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"{out_dir}: output exists and is not a folder")
    if not out_dir.parent.expanduser().resolve().is_dir():
        raise BadInputError(f"{out_dir}: parent folder {out_dir.parent} does not exist")
    with Console(stderr=True).status(f"exporting {name}"):
        result = export_network(name, out_dir, ExportOptions(flavour=flavour, train=train, budget=budget,
                                                             cache_dir=cache_dir, seed=seed,
                                                             reference_samples=reference_samples, root=root))
    if result.trained:
        state = f"trained ({result.budget} budget): {format_metrics(net.task, result.metrics)}"
    else:
        state = "untrained"
    click.echo(f"{name}: {state}")
    for label, path in (("model", result.source_path), ("spec", result.spec_path),
                        ("reference", result.reference_path), ("calibration", result.calibration_path)):
        click.echo(f"  {label:<12}{path}")
    if result.root is not None:
        for label, path in (("root spec", result.root_spec_path), ("reference", result.root.reference),
                            ("calibration", result.root.calibration), ("preprocess", result.root.preprocess)):
            click.echo(f"  {label:<12}{path}")
