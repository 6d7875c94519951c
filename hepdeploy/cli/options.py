"""Option families shared by the commands: one name, one meaning, parsed once into typed objects.

A family bundles some options, their parsing and checks, and hands the command one object
(``spec: ModelSpec | None``, ``judgement: Judgement``, ``server: ServerOptions`` ...).
The names mean the same everywhere:

- ``--spec FILE``: the model spec (YAML), loaded and checked.
- ``--golden FILE``: a reference set (``.npz`` from ``hepdeploy reference``, or an ONNX
  ``test_data_set`` folder); ``--golden-for NAME=FILE`` gives one per served model.
- ``--atol/--rtol [NAME:]VALUE``, ``--precision``, ``--policy``, ``--chunk-size``: how outputs are judged.
- ``--server HOST:PORT``, ``--model NAME[:VERSION]``, ``--protocol``, ``--timeout SECONDS``
  (each call to the server).
- ``--calibration FILE``, ``--samples``, ``--seed``, ``--root-tree``, ``--root-branch INPUT=BRANCH[,BRANCH...]``.
- ``-o/--output PATH``: what a command writes; ``--json`` prints JSON on stdout and
  ``--json-file PATH`` writes it to a file.
- ``--variant``, ``--exporter``, ``--budget``, ``--cache``, ``--tritonserver``: one choice list each.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from hepdeploy.backend.triton import Compression, Protocol, ServerTarget, parse_model_ref
from hepdeploy.backend.triton_shm import SharedMemoryMode
from hepdeploy.convert import EXPORTERS
from hepdeploy.errors import BadInputError
from hepdeploy.judgement import POLICIES, Judgement
from hepdeploy.model_zoo.base import BUDGETS
from hepdeploy.plan_compat import server_release
from hepdeploy.spec import ModelSpec, load_spec
from hepdeploy.validate import ReferenceSet, load_reference, make_reference
from hepdeploy.validate.reference import resolve_labels
from hepdeploy.variants import VARIANT_NAMES, variant_kind

F = TypeVar("F", bound=Callable[..., Any])


def option_family(target: str, build: Callable[..., Any], *options: click.Option) -> Callable[[F], F]:
    """Add ``options`` to a command and pass it ``target=build(**their values)`` instead of each value."""
    names = [option.name for option in options]

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            kwargs[target] = build(**values)
            return command(*args, **kwargs)

        # click collects decorators bottom-up and reverses the list; keep the family in its own order.
        wrapper.__click_params__ = [*getattr(command, "__click_params__", []), *reversed(options)]  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


# ------------------------------------------------------------------------------ text parsers


def parse_pairs(items: Sequence[str], option: str, form: str = "NAME=VALUE") -> dict[str, str]:
    """``['a=b', 'c=d']`` -> ``{'a': 'b', 'c': 'd'}``; the first ``=`` splits (values may hold ``=``)."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise BadInputError(f"{option} {item!r}: expected {form}")
        pairs[name] = value
    return pairs


def parse_int_list(text: str, option: str) -> list[int]:
    """``'1,2,4'`` -> ``[1, 2, 4]``: positive integers only."""
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as error:
        raise BadInputError(f"{option} {text!r}: expected a comma-separated list of integers such as 1,2,4") from error
    if not values or any(value < 1 for value in values):
        raise BadInputError(f"{option} {text!r}: the values must be positive integers")
    return values


# ------------------------------------------------------------------------------ single options


def _load_spec(ctx: click.Context, param: click.Parameter, value: Path | None) -> ModelSpec | None:
    return load_spec(value) if value is not None else None


def spec_option(help: str = "Model spec (YAML).") -> Callable[[F], F]:  # noqa: A002 - click's own word
    """``--spec FILE`` -> ``spec: ModelSpec | None`` (loaded and checked before the command runs)."""
    return click.option("--spec", "spec", type=click.Path(path_type=Path, dir_okay=False), callback=_load_spec,
                        metavar="SPEC.yaml", help=help)


def _check_variants(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    for name in (value if isinstance(value, tuple) else (value,) if value else ()):
        variant_kind(name)  # an unknown name is bad input, with the registry's names in the message
    return value


def variant_option(multiple: bool = False, required: bool = False, help: str = "") -> Callable[[F], F]:  # noqa: A002
    """``--variant NAME`` from the variant registry (repeatable where ``multiple``)."""
    return click.option("--variant", "variants" if multiple else "variant", metavar="|".join(VARIANT_NAMES),
                        multiple=multiple, required=required, callback=_check_variants, help=help)


def exporter_option(f: F) -> F:
    return click.option("--exporter", type=click.Choice(EXPORTERS), default="auto", show_default=True,
                        help="PyTorch exporter; auto: TorchScript first for models up to 5M parameters (kept only if "
                             "the self-check passes), dynamo first for larger ones, the other as the fallback.")(f)


def budget_option(help: str = "Training budget for zoo networks that are not cached yet.") -> Callable[[F], F]:  # noqa: A002
    return click.option("--budget", type=click.Choice(BUDGETS), default="full", show_default=True, help=help)


def _check_release(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else server_release(value).release


def server_release_option(f: F) -> F:
    return click.option("--server-release", metavar="YY.MM", callback=_check_release,
                        help="The NGC tritonserver release that will serve the models (e.g. 24.10): TensorRT plans and "
                             "ORT-TensorRT configs are checked against its TensorRT and ONNX Runtime versions.")(f)


def cache_option(f: F) -> F:
    return click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                        help="Training cache folder (default: $HEPDEPLOY_CACHE or ~/.cache/hepdeploy).")(f)


def tritonserver_option(f: F) -> F:
    return click.option("--tritonserver", "tritonserver_path", type=click.Path(path_type=Path, dir_okay=False),
                        help="The tritonserver binary to run (default: one on PATH, else the bundled one).")(f)


def json_file_option(f: F) -> F:
    return click.option("--json-file", "json_path", type=click.Path(path_type=Path, dir_okay=False),
                        metavar="PATH", help="Write the results as JSON to this file.")(f)


def json_flag_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of a table.")(f)


def golden_option(required: bool = False, help: str = "Reference set: .npz from `hepdeploy reference`, "  # noqa: A002
                  "or an ONNX test_data_set folder.") -> Callable[[F], F]:
    return click.option("--golden", type=click.Path(path_type=Path), required=required, metavar="FILE", help=help)


# ------------------------------------------------------------------------------ families


def judgement_options(f: F) -> F:
    """``--atol/--rtol [NAME:]VALUE`` (repeatable), ``--precision``, ``--policy``, ``--chunk-size`` -> ``judgement``."""
    return option_family(
        "judgement",
        lambda atol, rtol, precision, policy, chunk_size: Judgement.parse(
            precision=precision, atol=atol, rtol=rtol, policy=policy, chunk_size=chunk_size),
        click.Option(["--atol"], multiple=True, metavar="[NAME:]VALUE", help="Absolute tolerance, for all or one output."),
        click.Option(["--rtol"], multiple=True, metavar="[NAME:]VALUE", help="Relative tolerance, for all or one output."),
        click.Option(["--precision"], type=click.Choice(["fp32", "fp16", "int8"]),
                     help="Tolerance defaults to use (default: the candidate sidecar's precision)."),
        click.Option(["--policy"], type=click.Choice(POLICIES),
                     help="What must pass (default: numerical for fp32; physics for fp16/int8 when labels exist)."),
        click.Option(["--chunk-size"], type=click.IntRange(min=1), help="Samples per inference call."),
    )(f)


@dataclass
class ServerOptions:
    """A live Triton server and one model on it; :meth:`target` makes the server part the library takes."""

    url: str | None
    model: str | None
    protocol: Protocol
    timeout_s: float
    shared_memory: SharedMemoryMode = "auto"
    compression: Compression | None = None

    @property
    def given(self) -> bool:
        return self.url is not None

    def target(self, url: str | None = None) -> ServerTarget:
        """The server to talk to, with these options: ``--server``, or ``url`` (a server the command started)."""
        address = url or self.url
        if address is None:
            raise click.UsageError("give the server: --server HOST:PORT")
        return ServerTarget(address, self.protocol, self.timeout_s, self.shared_memory, self.compression)

    def model_ref(self) -> tuple[str, str]:
        """(name, version) of ``--model``, checked."""
        if self.model is None:
            raise click.UsageError("give the served model: --model NAME[:VERSION]")
        return parse_model_ref(self.model)


def server_options(protocols: bool = True, model_required: bool = False) -> Callable[[F], F]:
    """``--server HOST:PORT``, ``--model NAME[:VERSION]``, ``--protocol``, ``--timeout`` -> ``server``."""
    options = [
        click.Option(["--server", "url"], metavar="HOST:PORT", help="Address of a running Triton server."),
        click.Option(["--model", "model"], metavar="NAME[:VERSION]", required=model_required, help="The served model."),
        click.Option(["--timeout", "--server-timeout", "timeout_s"], type=click.FloatRange(min=0.1), default=30.0,
                     show_default=True, help="Seconds allowed for every call to the server."),
        click.Option(["--shared-memory"], type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                     help="Send and receive tensors through Triton's system shared memory: auto = for a server on "
                          "a loopback address; on refuses a remote one."),
        click.Option(["--compression"], type=click.Choice(["none", "gzip", "deflate"]), default="none",
                     show_default=True, help="gRPC compression, for a remote server."),
    ]
    if protocols:
        options.insert(2, click.Option(["--protocol"], type=click.Choice(["grpc", "http"]), default="grpc",
                                       show_default=True, help="gRPC, or HTTP (needs tritonclient[http])."))

    def build(url: str | None, model: str | None, timeout_s: float, shared_memory: SharedMemoryMode, compression: str,
              protocol: Protocol = "grpc") -> ServerOptions:
        return ServerOptions(url, model, protocol, timeout_s, shared_memory,
                             None if compression == "none" else compression)  # type: ignore[arg-type]

    return option_family("server", build, *options)


@dataclass
class CalibrationOptions:
    """Where calibration data comes from and how it is drawn."""

    path: Path | None
    samples: int | None
    seed: int | None
    root_tree: str | None
    root_branches: dict[str, str] = field(default_factory=dict)

    @property
    def changes_data_spec(self) -> bool:
        return self.seed is not None or self.root_tree is not None or bool(self.root_branches)

    def data_update(self, spec: ModelSpec | None) -> dict[str, Any]:
        """The ``data:`` fields these options override in a spec."""
        update: dict[str, Any] = {}
        if self.seed is not None:
            update["seed"] = self.seed
        if self.root_tree:
            update["root_tree"] = self.root_tree
        if self.root_branches:
            update["root_branches"] = {**(spec.data.root_branches if spec else {}), **self.root_branches}
        return update


def calibration_options(f: F) -> F:
    """``--calibration FILE``, ``--samples``, ``--seed``, ``--root-tree``, ``--root-branch`` -> ``calibration``."""
    return option_family(
        "calibration",
        lambda calibration, samples, seed, root_tree, root_branches: CalibrationOptions(
            calibration, samples, seed, root_tree, parse_pairs(root_branches, "--root-branch", "INPUT=BRANCH")),
        click.Option(["--calibration"], type=click.Path(path_type=Path), metavar="FILE",
                     help="Calibration data: .npz, .h5 (a dataset per input) or .root files (a glob too; mapped by "
                          "the spec's data.inputs, or a branch per input)."),
        click.Option(["--samples"], type=click.IntRange(1, None), help="Calibration samples drawn at random (default 512)."),
        click.Option(["--seed"], type=int, help="Seed of the random calibration subset (default 0)."),
        click.Option(["--root-tree"], metavar="NAME", help="TTree holding the calibration data in a ROOT file."),
        click.Option(["--root-branch", "root_branches"], multiple=True, metavar="INPUT=BRANCH[,BRANCH...]",
                     help="Branch read for an input (default: the input's name), or scalar branches stacked as its "
                          "columns; repeat per input."),
    )(f)


@dataclass
class ReferenceOptions:
    """Where the reference (golden) set comes from: a saved one, or the source model run on data now."""

    golden: Path | None
    reference_model: str | None
    data: Path | None
    labels: str | None

    def load(self, spec: ModelSpec | None, chunk_size: int | None) -> ReferenceSet:
        """The reference set, made now when ``--reference`` and ``--data`` are given."""
        if (self.golden is None) == (self.reference_model is None):
            raise click.UsageError("give exactly one of --golden FILE or --reference MODEL_OR_SPEC --data FILE")
        if self.golden is not None:
            if self.data is not None:
                raise click.UsageError("--data goes with --reference, not with --golden")
            reference = load_reference(self.golden)
            if self.labels is None:
                return reference
            chosen = resolve_labels(self.labels, {**reference.inputs, **reference.labels})
            return ReferenceSet(reference.inputs, reference.outputs, chosen, reference.provenance).check(str(self.golden))
        if self.data is None:
            raise click.UsageError("--reference needs --data FILE (the inputs to run the source model on)")
        return make_reference(self.reference_model, self.data, labels=self.labels, spec=spec,  # type: ignore[arg-type]
                              chunk_size=chunk_size)


def reference_options(f: F) -> F:
    """``--golden``, or ``--reference MODEL_OR_SPEC --data FILE``; ``--labels`` -> ``reference``."""
    return option_family(
        "reference",
        ReferenceOptions,
        click.Option(["--golden"], type=click.Path(path_type=Path), metavar="FILE",
                     help="Reference set (.npz from `hepdeploy reference`, or an ONNX test_data_set folder)."),
        click.Option(["--reference", "reference_model"], metavar="MODEL_OR_SPEC",
                     help="Source model (.onnx) or spec (.yaml) to run on --data to make the reference now."),
        click.Option(["--data"], type=click.Path(path_type=Path), help="Inputs (and labels) for --reference."),
        click.Option(["--labels"], metavar="NAME_OR_FILE", help="Labels/targets: an array name in the data, or a file."),
    )(f)
