"""Export a zoo network for the pipeline: the source model, its spec and labelled data files."""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hepdeploy.data import load_tensors, save_tensors
from hepdeploy.errors import SpecError
from hepdeploy.fsutil import atomic_path, atomic_write_text
from hepdeploy.model_zoo.base import ZooNetwork
from hepdeploy.model_zoo.registry import get_network
from hepdeploy.model_zoo.root_export import RootFiles, data_block, root_layout, write_root_files
from hepdeploy.model_zoo.training import (
    _deterministic,
    cached_data_file,
    check_budget,
    data_seeds,
    find_cached,
    train_network,
)
from hepdeploy.spec import ModelSpec, spec_from_dict, spec_to_yaml

log = logging.getLogger("hepdeploy.model_zoo.export")


@dataclass
class ZooExport:
    """What :func:`export_network` wrote (all paths inside ``out_dir``)."""

    spec: ModelSpec
    spec_path: Path
    source_path: Path
    reference_path: Path
    calibration_path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    trained: bool = False
    budget: str | None = None
    # With ``root``: the NanoAOD-like ntuples, the preprocess.json and the spec that reads them.
    root: RootFiles | None = None
    root_spec_path: Path | None = None


def export_stem(net: ZooNetwork, flavour: str) -> str:
    """File stem and spec name: the network name, plus the flavour when it is not the default."""
    return net.name if flavour == net.default_flavour else f"{net.name}_{flavour}"


def spec_dict(net: ZooNetwork, flavour: str, stem: str, source_file: str) -> dict[str, Any]:
    """The deployment spec of one exported network (paths relative to the spec's folder)."""
    if flavour == "keras":
        source: dict[str, Any] = {"framework": "keras", "path": source_file}
    else:
        source = {"framework": "torch", "factory": net.torch_factory, "weights": source_file}
    data: dict[str, Any] = {
        "calibration": f"{stem}_calibration.npz",
        "reference": f"{stem}_reference.npz",
        "labels": "targets" if net.task == "regression" else "labels",
        **({"variables": list(net.variable_names)} if net.variable_names else {}),
    }
    if all(t.has_batch_axis for t in net.inputs):
        # Graph networks store one concatenated graph: a sample count does not apply.
        data["calibration_samples"] = min(512, net.calibration_samples)
    return {
        "name": stem,
        "description": net.description,
        "source": source,
        "inputs": [t.model_dump(exclude_none=True) for t in net.inputs],
        "outputs": [t.model_dump(exclude_none=True) for t in net.outputs],
        "dims": {k: v.model_dump(exclude_none=True) for k, v in net.dims.items()},
        "data": data,
        **({"variants": [dict(v) for v in net.variants]} if net.variants else {}),
        "validation": {
            "physics": {
                "task": net.task,
                **({"class_names": list(net.class_names)} if net.task == "classification" and net.class_names else {}),
                **({"bins": {k: list(v) for k, v in net.bins.items()}} if net.bins else {}),
            },
            **({"chunk_size": net.chunk_size} if net.chunk_size else {}),
            **({"policy": dict(net.validation_policy)} if net.validation_policy else {}),
        },
        "triton": {"model_name": stem,
                   **({"labels": list(net.class_names)} if net.task == "classification" and net.class_names else {}),
                   **net.triton},
    }


@dataclass(frozen=True)
class ExportOptions:
    """How :func:`export_network` makes its files.

    ``train``: train first (cached); without it cached weights are used if present and seeded untrained
    ones otherwise. ``seed`` seeds the training and the data sets; ``reference_samples`` overrides the
    network's reference size (events). ``root`` (jet_mlp, particlenet) also writes the events as ROOT
    ntuples with a preprocess.json and a spec that reads them."""

    flavour: str | None = None
    train: bool = True
    budget: str = "full"
    cache_dir: Path | None = None
    seed: int = 0
    reference_samples: int | None = None
    root: bool = False


def export_network(name: str, out_dir: Path, options: ExportOptions | None = None) -> ZooExport:
    """Write ``<stem>.keras`` or ``<stem>.pt``, ``<stem>.yaml``, ``<stem>_reference.npz`` and
    ``<stem>_calibration.npz`` into ``out_dir`` (see :class:`ExportOptions`).

    The data sets are generated once per size and seed and cached beside the trainings. With ``root``
    (jet_mlp, particlenet) the same events are also written as NanoAOD-like ``<stem>_reference.root`` and
    ``<stem>_calibration.root`` with a ``<stem>_preprocess.json`` and a spec ``<stem>_root.yaml`` that
    reads them (:mod:`hepdeploy.model_zoo.root_export`)."""
    options = options or ExportOptions()
    net = get_network(name)
    flavour = net.check_flavour(options.flavour)
    check_budget(options.budget)
    layout = root_layout(name) if options.root else None  # refused before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = export_stem(net, flavour)
    source_path = out_dir / f"{stem}{net.model_suffix(flavour)}"
    trained, metrics = _write_source(net, flavour, options, source_path)

    seeds = data_seeds(options.seed)
    n_reference = options.reference_samples or net.reference_samples
    reference_path = _cached_data(net, "reference", n_reference, seeds["reference"], options.cache_dir,
                                  out_dir / f"{stem}_reference.npz")
    calibration_path = _cached_data(net, "calibration", net.calibration_samples, seeds["calibration"],
                                    options.cache_dir, out_dir / f"{stem}_calibration.npz")

    spec_path = out_dir / f"{stem}.yaml"
    normal = spec_dict(net, flavour, stem, source_path.name)
    spec = _write_spec(normal, spec_path)
    root_files = root_spec_path = None
    if layout is not None:
        # The reference .npz holds labels and variables; the calibration .npz only inputs, so its
        # (small) set is generated again for the ntuple's labels and jet variables.
        root_files = write_root_files(net, stem, out_dir, {
            "reference": (n_reference, seeds["reference"], lambda: load_tensors(reference_path)),
            "calibration": (net.calibration_samples, seeds["calibration"],
                            lambda: net.generate(net.calibration_samples, seeds["calibration"]).arrays()),
        }, options.cache_dir)
        root_spec_path = out_dir / f"{stem}_root.yaml"
        _write_spec({**normal, "data": data_block(layout, net, stem, normal["data"].get("calibration_samples"))},
                    root_spec_path)
    return ZooExport(spec=spec, spec_path=spec_path, source_path=source_path, reference_path=reference_path,
                     calibration_path=calibration_path, metrics=metrics, trained=trained,
                     budget=options.budget if trained else None, root=root_files, root_spec_path=root_spec_path)


def _write_source(net: ZooNetwork, flavour: str, options: ExportOptions, source_path: Path) -> tuple[bool, dict[str, float]]:
    """The network's source model at ``source_path``: trained (cached), else seeded untrained weights.
    Returns whether it is trained, and its metrics."""
    trained = train_network(net.name, flavour, options.budget, options.seed, options.cache_dir) if options.train \
        else find_cached(net.name, flavour, options.budget, options.seed, options.cache_dir)
    if trained is None:
        log.warning("%s: no trained weights cached; exporting seeded untrained weights", net.name)
        net.save(_untrained(net, flavour, options.seed), flavour, source_path)
        return False, {}
    with atomic_path(source_path, suffix=source_path.suffix) as tmp:
        shutil.copyfile(trained.model_path, tmp)
    return True, dict(trained.metrics)


def _write_spec(data: dict[str, Any], spec_path: Path) -> ModelSpec:
    """The spec ``data`` (paths relative to ``spec_path``'s folder) checked, written to ``spec_path`` and
    returned with its paths resolved."""
    folder = spec_path.parent.resolve()
    spec = spec_from_dict(data, where=str(spec_path), base_dir=folder)
    atomic_write_text(spec_path, spec_to_yaml(spec, folder))
    return spec


def merge_zoo_spec(user: ModelSpec, zoo_spec: ModelSpec) -> ModelSpec:
    """The zoo's concrete spec, with every field the user's spec set explicitly winning."""
    if zoo_spec.source.framework == "zoo":
        raise SpecError(f"zoo network {user.source.zoo!r} exported a spec that is itself a zoo source")
    update: dict[str, Any] = {"name": user.name}
    for key in ("inputs", "outputs", "dims", "opset", "data", "variants", "validation", "triton"):
        if key in user.model_fields_set:
            update[key] = getattr(user, key)
    if "dims" in update:
        update["dims"] = {**zoo_spec.dims, **user.dims}
    return zoo_spec.model_copy(update=update)


def zoo_source_spec(spec: ModelSpec, folder: Path, train: bool = True, budget: str = "full") -> tuple[ModelSpec, ZooExport]:
    """A ``framework: zoo`` spec made a spec like any other: the network is exported (in the spec's
    ``zoo_flavour``) into ``folder``, and the exported spec is returned with every field the user's spec
    set explicitly winning. The one place a zoo source becomes a model file."""
    if spec.source.zoo is None:
        raise SpecError(f"{spec.name}: source.framework 'zoo' needs 'zoo: NAME'")
    exported = export_network(spec.source.zoo, folder,
                              ExportOptions(flavour=spec.source.zoo_flavour, train=train, budget=budget))
    return merge_zoo_spec(spec, exported.spec), exported


def _cached_data(net: ZooNetwork, kind: str, n: int, seed: int, cache_dir: Path | None, target: Path) -> Path:
    """``n`` generated samples (a reference set keeps labels and variables; calibration only inputs),
    from the cache when this size and seed were generated before, copied to ``target``."""
    def write(path: Path) -> None:
        data = net.generate(n, seed)
        save_tensors(path, data.arrays() if kind == "reference" else data.inputs)

    return cached_data_file(net, kind, n, seed, cache_dir, target, write)


def _untrained(net: ZooNetwork, flavour: str, seed: int) -> Any:
    with _deterministic(net, flavour, seed, 1):
        return net.build(flavour, seed=seed)
