"""The model zoo: the HEP networks SONIC serves, built here and trained on synthetic physics data.

Public API::

    list_networks() -> list[str]
    get_network(name) -> ZooNetwork
    train_network(name, flavour=None, budget="full", seed=0, cache_dir=None, force=False) -> TrainedModel
    export_network(name, out_dir, flavour=None, train=True, budget="full", cache_dir=None) -> ZooExport
"""
from hepdeploy.model_zoo.base import Dataset, TrainingRecipe, ZooNetwork
from hepdeploy.model_zoo.export import ZooExport, export_network
from hepdeploy.model_zoo.registry import get_network, list_networks
from hepdeploy.model_zoo.training import (
    TrainedModel,
    cache_root,
    find_cached,
    train_network,
)

__all__ = [
    "Dataset",
    "TrainedModel",
    "TrainingRecipe",
    "ZooExport",
    "ZooNetwork",
    "cache_root",
    "export_network",
    "find_cached",
    "get_network",
    "list_networks",
    "train_network",
]
