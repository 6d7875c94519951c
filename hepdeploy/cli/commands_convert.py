"""CLI commands of the convert stage: ``convert`` and ``inspect``."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click

from hepdeploy.artifacts import load_onnx, sidecar_path_for, tensor_specs_of
from hepdeploy.cli.options import exporter_option, json_flag_option, spec_option
from hepdeploy.convert import convert_from_spec
from hepdeploy.convert.common import check_output_path
from hepdeploy.convert.options import spec_from_options
from hepdeploy.errors import BadInputError, SpecError
from hepdeploy.fsutil import check_input_file, check_safe_name
from hepdeploy.graph_bounds import graph_dim_bounds
from hepdeploy.spec import FILE_FRAMEWORKS, ModelSpec, infer_batch_axis


@click.command("convert")
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), metavar="OUT.onnx",
              help="The .onnx file to write (its sidecar .json is written next to it).")
@spec_option()
@click.option("--input", "--input-tensor", "inputs", multiple=True, metavar="NAME:DTYPE:SHAPE",
              help="An input tensor, e.g. input:float32:batch,47 (repeat for several).")
@click.option("--output-tensor", "outputs", multiple=True, metavar="NAME:DTYPE:SHAPE",
              help="An output tensor (default: read from the model or found by running it).")
@click.option("--framework", type=click.Choice(FILE_FRAMEWORKS), help="Source framework (default: from the file).")
@click.option("--factory", metavar="MODULE:FUNCTION", help="Builds the torch nn.Module a state dict belongs to.")
@exporter_option
@click.option("--opset", type=click.IntRange(7, None), help="ONNX opset (default: the exporter's).")
@click.option("--name", help="Model name (default: the output file's stem).")
def convert_command(source: Path | None, output: Path, spec: ModelSpec | None, inputs: tuple[str, ...],
                    outputs: tuple[str, ...], framework: str | None, factory: str | None, exporter: str,
                    opset: int | None, name: str | None) -> None:
    """Convert SOURCE (a model file or SavedModel folder) to a checked ONNX artifact.

    The new graph is run in ONNX Runtime next to the source on seeded inputs (batch 1
    and 64, two sizes of every other dynamic dimension); if they disagree beyond
    atol 1e-5 + rtol 1e-4 nothing is written and the exit code is 1.
    """
    check_output_path(output)
    if spec is not None:
        if inputs or outputs or factory:
            raise SpecError("--spec already names the tensors and factory; drop --input/--output-tensor/--factory")
        update: dict[str, Any] = {}
        if source is not None:
            block = spec.source.model_copy(update={"path": str(source.resolve())})
            if framework:
                block = block.model_copy(update={"framework": framework})
            update["source"] = block
        if opset is not None:
            update["opset"] = opset
        if name is not None:
            update["name"] = check_safe_name(name, "model name")
        spec = spec.model_copy(update=update)
    else:
        if source is None:
            raise BadInputError("give a SOURCE model or --spec SPEC.yaml")
        model_name = check_safe_name(name if name is not None else output.stem, "model name")
        spec = spec_from_options(source, framework, factory, inputs, outputs, model_name, opset)
    artifact = convert_from_spec(spec, output, exporter)
    check = next((s for s in artifact.sidecar.steps if s.name == "self-check"), None)
    errors = check.parameters.get("max_abs_error", {}) if check else {}
    worst = max(errors.values(), default=0.0)
    click.echo(f"wrote {artifact.path} and {artifact.sidecar_path.name}: exporter {artifact.sidecar.exporter}, "
               f"opset {artifact.sidecar.opset}, self-check max |d| {worst:.2g} "
               f"over {len(check.parameters.get('sizes', [])) if check else 0} size sets")


def model_summary(path: Path) -> dict[str, Any]:
    """What ``hepdeploy inspect`` shows: tensors, opsets, producer, op histogram, parameters."""
    import onnx

    path = check_input_file(Path(path), "ONNX model")
    model = load_onnx(path)
    inputs, outputs = tensor_specs_of(model)
    ops: Counter[str] = Counter()

    def count(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            ops[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
            for attribute in node.attribute:
                for sub in [attribute.g, *attribute.graphs] if attribute.type in (5, 10) else []:
                    count(sub)

    count(model.graph)
    parameters = 0
    for init in model.graph.initializer:
        size = 1
        for d in init.dims:
            size *= int(d)
        parameters += size
    summary: dict[str, Any] = {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": int(model.ir_version),
        "opsets": {(e.domain or "ai.onnx"): int(e.version) for e in model.opset_import},
        "inputs": [t.model_dump(exclude_none=True) for t in inputs],
        "outputs": [t.model_dump(exclude_none=True) for t in outputs],
        "nodes": sum(ops.values()),
        "op_types": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": parameters,
        "initializers": len(model.graph.initializer),
    }
    batched, why = infer_batch_axis([*inputs, *outputs])
    summary["batch_axis"] = {"batched": batched, "why": why}
    summary["dim_bounds"] = [bound.as_dict() for bound in graph_dim_bounds(model).values()]
    side = sidecar_path_for(path)
    if side.is_file():
        try:
            data = json.loads(side.read_text(encoding="utf-8"))
            summary["sidecar"] = {k: data.get(k) for k in ("model_name", "exporter", "source", "variant")}
            summary["sidecar"]["steps"] = [s.get("name") for s in data.get("steps", [])]
        except (json.JSONDecodeError, AttributeError):
            summary["sidecar"] = {"problem": f"{side.name} is not valid JSON"}
    return summary


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@json_flag_option
def inspect_command(model: Path, as_json: bool) -> None:
    """Show an ONNX model's tensors, opset, producer, op histogram and parameter count."""
    summary = model_summary(model)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"[bold]{escape(summary['path'])}[/bold]  {summary['size_bytes']:,} bytes")
    console.print(f"producer: {summary['producer'] or '?'}   ir_version {summary['ir_version']}   opsets: "
                  + ", ".join(f"{k} {v}" for k, v in summary["opsets"].items()))
    table = Table("", "name", "dtype", "shape", box=None)
    for kind in ("inputs", "outputs"):
        for t in summary[kind]:
            table.add_row(kind[:-1], escape(t["name"]), t["dtype"],
                          escape("[" + ", ".join(str(d) for d in t["shape"]) + "]"))
    console.print(table)
    axis = summary["batch_axis"]
    console.print(f"batch axis: {'the leading dim' if axis['batched'] else 'none'} ({escape(axis['why'])})")
    for bound in summary["dim_bounds"]:
        console.print(f"dim bound: {escape(bound['dim'])} >= {bound['min']} ({escape(bound['source'])}): smaller "
                      "sizes cannot run")
    console.print(f"parameters: {summary['parameters']:,} in {summary['initializers']} initializers; "
                  f"nodes: {summary['nodes']}")
    console.print("ops: " + ", ".join(f"{op} x{n}" for op, n in summary["op_types"].items()))
    if "sidecar" in summary:
        side = summary["sidecar"]
        if "problem" in side:
            console.print(f"sidecar: {side['problem']}")
        else:
            source = side.get("source") or {}
            console.print(f"sidecar: exporter {side.get('exporter')}, source {source.get('framework')} "
                          f"{source.get('path') or source.get('zoo') or ''}, steps {', '.join(side['steps'])}")


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(convert_command)
    group.add_command(inspect_command)
