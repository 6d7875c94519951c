"""Interaction network for tracking (Exa.TrkX-style edge classifier), PyTorch, no batch axis.

x [n_hits, 3] (r, phi, z), edge_index [2, n_edges] int64, edge_attr [n_edges, 4]
-> edge_score [n_edges, 1]. Messages are aggregated onto hits with ``scatter_add``,
which the ONNX exporters write as ScatterElements(reduction="add") (opset >= 16).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from hepdeploy.model_zoo import tracks
from hepdeploy.model_zoo.base import (
    Dataset,
    TrainingRecipe,
    ZooNetwork,
    shuffled_batches,
    triton_config,
)
from hepdeploy.spec import DimRange, TensorSpec

HIDDEN = 40
ITERATIONS = 3


def build_torch(hidden: int = HIDDEN, iterations: int = ITERATIONS) -> Any:
    """Factory for specs: ``hepdeploy.model_zoo.interaction_network:build_torch``."""
    import torch
    from torch import nn

    def mlp(n_in: int, n_out: int, last_activation: bool = True) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out)]
        if last_activation:
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class InteractionNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.node_encoder = mlp(3, hidden)
            self.edge_encoder = mlp(4, hidden)
            self.relational = mlp(3 * hidden, hidden)  # edge update from (sender, receiver, edge)
            self.object = mlp(3 * hidden, hidden)  # node update from (node, incoming, outgoing)
            self.classifier = mlp(3 * hidden, 1, last_activation=False)
            self.iterations = iterations

        def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
            src, dst = edge_index[0], edge_index[1]
            h = self.node_encoder(x)
            e = self.edge_encoder(edge_attr)
            # Index tensors for scatter_add: one row per edge, repeated over the features.
            dst_rows = dst.unsqueeze(1).expand(-1, hidden)
            src_rows = src.unsqueeze(1).expand(-1, hidden)
            for _ in range(self.iterations):
                e = e + self.relational(torch.cat([h[src], h[dst], e], dim=1))
                incoming = torch.zeros_like(h).scatter_add(0, dst_rows, e)
                outgoing = torch.zeros_like(h).scatter_add(0, src_rows, e)
                h = h + self.object(torch.cat([h, incoming, outgoing], dim=1))
            return torch.sigmoid(self.classifier(torch.cat([h[src], h[dst], e], dim=1)))

    return InteractionNetwork()


def _graph_dataset(graphs: list[tracks.TrackGraph]) -> Dataset:
    merged = tracks.merge(graphs)
    # The event of every edge: the bootstrap of the physics checks resamples whole events.
    event = np.repeat(np.arange(len(graphs), dtype=np.int64), [len(g.y) for g in graphs])
    return Dataset(
        inputs={"x": merged.x, "edge_index": merged.edge_index, "edge_attr": merged.edge_attr},
        labels=merged.y,
        variables={"event": event},
    )


class InteractionNetworkTracking(ZooNetwork):
    name = "interaction_network"
    description = (
        f"Interaction network edge classifier for tracking: node/edge encoders, {ITERATIONS} message-passing "
        "iterations with scatter_add aggregation, edge score"
    )
    export_traps = (
        "No batch axis (Triton max_batch_size 0) and two independent dynamic dims (n_hits, n_edges); "
        "int64 edge_index whose sample values must be valid hit indices; gathers h[src] (Gather) and "
        "scatter_add aggregation (ScatterElements reduction=add, opset >= 16) whose summation order differs "
        "between backends (tiny float differences, never exactly equal)."
    )
    flavours = ("torch",)
    task = "edge_classification"
    class_names = ("fake", "true")
    inputs = (
        TensorSpec(name="x", shape=["n_hits", 3]),
        TensorSpec(name="edge_index", dtype="int64", shape=[2, "n_edges"], index_of="n_hits"),
        TensorSpec(name="edge_attr", shape=["n_edges", 4]),
    )
    outputs = (TensorSpec(name="edge_score", shape=["n_edges", 1]),)
    dims = {"n_hits": DimRange(min=8, opt=1000, max=20000), "n_edges": DimRange(min=8, opt=2000, max=50000)}
    triton = triton_config(max_batch_size=0, batch_per_request=1)  # one event = one request, no batch axis
    variable_names = ("event",)
    data_recipe = tracks.DATA_RECIPE
    recipes = {
        # n_train / n_test count events (~900 hits, ~1800 candidate edges each).
        "full": TrainingRecipe(n_train=240, n_test=30, epochs=8, batch_size=4, learning_rate=3e-3),
        "reduced": TrainingRecipe(n_train=24, n_test=6, epochs=3, batch_size=4, learning_rate=5e-3),
    }
    torch_factory = "hepdeploy.model_zoo.interaction_network:build_torch"
    reference_samples = 30  # events (~46 000 edges), concatenated into one graph
    calibration_samples = 4

    def generate(self, n: int, seed: int) -> Dataset:
        graphs = tracks.generate_events(n, seed)
        dataset = _graph_dataset(graphs)
        dataset.parts = [_graph_dataset([g]) for g in graphs]
        return dataset

    def construct(self, flavour: str) -> Any:
        return build_torch()

    # Training goes through the shared torch loop (base.TorchBackend.fit) with mini-batches of whole
    # events: a graph is never cut, so one epoch shuffles events, not edges.
    def epoch_size(self, data: Dataset) -> int:
        return len(_events(data))

    def torch_batches(self, data: Dataset, batch_size: int, generator: Any) -> Iterator[tuple[tuple[Any, ...], Any]]:
        import torch

        events = _events(data)
        for idx in shuffled_batches(len(events), batch_size, generator):
            batch = _merge_datasets([events[i] for i in idx.tolist()])
            inputs = tuple(torch.from_numpy(batch.inputs[t.name]) for t in self.inputs)
            yield inputs, torch.from_numpy(batch.labels.astype(np.float32))

    def torch_loss(self, output: Any, truth: Any) -> Any:
        import torch

        # True edges are ~40%: weight them up a little so the 0.5 cut keeps efficiency high.
        score = output.squeeze(-1).clamp(1e-7, 1 - 1e-7)
        weight = torch.where(truth > 0.5, 1.5, 1.0)
        return torch.nn.functional.binary_cross_entropy(score, truth, weight=weight)


def _events(data: Dataset) -> list[Dataset]:
    """The separate events of a graph dataset (a dataset without parts is one event)."""
    return data.parts or [data]


def _merge_datasets(parts: list[Dataset]) -> Dataset:
    offsets = np.cumsum([0] + [len(p.inputs["x"]) for p in parts[:-1]])
    return Dataset(
        inputs={
            "x": np.concatenate([p.inputs["x"] for p in parts]),
            "edge_index": np.concatenate([p.inputs["edge_index"] + o for p, o in zip(parts, offsets)], axis=1),
            "edge_attr": np.concatenate([p.inputs["edge_attr"] for p in parts]),
        },
        labels=np.concatenate([p.labels for p in parts]),
    )


NETWORK = InteractionNetworkTracking()
