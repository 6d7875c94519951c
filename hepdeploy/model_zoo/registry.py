"""The zoo's registry: network name -> module holding ``NETWORK`` (imported lazily)."""
from __future__ import annotations

import importlib

from hepdeploy.errors import BadInputError
from hepdeploy.model_zoo.base import ZooNetwork

# Order = the order `hepdeploy zoo list` prints (fast networks first).
_MODULES: dict[str, str] = {
    "facile": "hepdeploy.model_zoo.facile",
    "jet_mlp": "hepdeploy.model_zoo.jet_mlp",
    "interaction_network": "hepdeploy.model_zoo.interaction_network",
    "particlenet": "hepdeploy.model_zoo.particlenet",
    "deepjet": "hepdeploy.model_zoo.deepjet",
    "resnet50": "hepdeploy.model_zoo.resnet50",
}


def list_networks() -> list[str]:
    """Names of every zoo network whose module is present."""
    return [name for name, module in _MODULES.items() if importlib.util.find_spec(module) is not None]


def get_network(name: str) -> ZooNetwork:
    if name not in _MODULES or importlib.util.find_spec(_MODULES[name]) is None:
        raise BadInputError(f"unknown zoo network {name!r} (available: {', '.join(list_networks())})")
    return importlib.import_module(_MODULES[name]).NETWORK
