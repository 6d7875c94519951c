"""The model zoo: the HEP networks SONIC serves, built here and trained on synthetic physics data.

Public API::

    list_networks() -> list[str]
    get_network(name) -> ZooNetwork
    train_network(name, flavour=None, budget="full", seed=0, cache_dir=None, force=False) -> TrainedModel
    export_network(name, out_dir, ExportOptions(flavour=None, train=True, budget="full", ...)) -> ZooExport
    zoo_source_spec(spec, folder, train=True, budget="full") -> (ModelSpec, ZooExport)
"""
from hepdeploy.model_zoo.base import Dataset, TrainingRecipe, ZooNetwork
from hepdeploy.model_zoo.export import ExportOptions, ZooExport, export_network, merge_zoo_spec, zoo_source_spec
from hepdeploy.model_zoo.registry import get_network, list_networks
from hepdeploy.model_zoo.training import (
    TrainedModel,
    cache_root,
    find_cached,
    train_network,
)

__all__ = [
    "Dataset",
    "ExportOptions",
    "TrainedModel",
    "TrainingRecipe",
    "ZooExport",
    "ZooNetwork",
    "cache_root",
    "export_network",
    "find_cached",
    "get_network",
    "list_networks",
    "merge_zoo_spec",
    "train_network",
    "zoo_source_spec",
]
