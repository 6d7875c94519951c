"""What every zoo network is: a deployment interface, synthetic data, a builder and a training recipe.

A network module subclasses :class:`ZooNetwork` (or one of the framework mix-ins
:class:`KerasNetwork` / :class:`TorchNetwork`) and registers one instance in
``hepdeploy.model_zoo.registry``. Heavy frameworks are imported inside methods.
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hepdeploy.errors import BadInputError
from hepdeploy.fsutil import atomic_path
from hepdeploy.model_zoo import metrics as zoo_metrics
from hepdeploy.spec import DimRange, TensorSpec
from hepdeploy.tf_support import import_keras

Budget = Literal["full", "reduced"]
BUDGETS: tuple[str, ...] = ("full", "reduced")
Task = Literal["classification", "regression", "edge_classification"]


@dataclass(frozen=True)
class TrainingRecipe:
    """How much synthetic data and how many optimizer steps one budget uses."""

    n_train: int
    n_test: int
    epochs: int
    batch_size: int
    learning_rate: float
    threads: int = 1  # fixed thread count: same seed, same platform, same weights
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Dataset:
    """Inputs keyed by the spec's input names, plus integer labels or float targets."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    targets: np.ndarray | None = None
    # Per-event arrays for the physics checks (binning variables such as jet_pt; ``event``: the
    # event of every row of a graph network). Never used in training: they do not enter the cache key.
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    # Graph networks: the separate events that ``inputs`` concatenates (for mini-batching).
    parts: list[Dataset] | None = None

    @property
    def truth(self) -> np.ndarray:
        return self.labels if self.labels is not None else self.targets  # type: ignore[return-value]

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything for a labelled ``.npz``: inputs, ``labels`` or ``targets``, and the variables."""
        out = {**self.inputs, **self.variables}
        if self.labels is not None:
            out["labels"] = self.labels.astype(np.int64)
        if self.targets is not None:
            out["targets"] = self.targets.astype(np.float32)
        return out


def triton_config(max_batch_size: int, batch_per_request: int,
                  preferred_batch_sizes: tuple[int, ...] = ()) -> dict[str, Any]:
    """A zoo network's ``triton:`` spec block (the same queue delay and event definition for all).

    Batched networks get dynamic batching towards ``preferred_batch_sizes`` with at most 100 us
    of queueing; a network without a batch axis (``max_batch_size`` 0) cannot be batched by
    Triton, so it gets none. ``batch_per_request`` samples make one request, one request an event.
    """
    config: dict[str, Any] = {"max_batch_size": max_batch_size}
    if max_batch_size > 0:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(preferred_batch_sizes),
            "max_queue_delay_microseconds": 100,
        }
    config["perf"] = {"batch_per_request": batch_per_request, "requests_per_event": 1}
    return config


class ZooNetwork(abc.ABC):
    """One network of the zoo. Subclasses fill in the class attributes (in this order: texts, interface,
    serving, data and training) and the abstract methods."""

    name: str
    description: str
    export_traps: str  # what this network exercises in ONNX export (README)
    flavours: tuple[str, ...]
    task: Task
    class_names: tuple[str, ...] = ()
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: dict[str, DimRange]
    triton: dict[str, Any]
    # The spec's `variants:` when the defaults do not suit the network (e.g. INT8 exclusions).
    variants: tuple[dict[str, Any], ...] = ()
    data_recipe: str  # human-readable summary of the synthetic data (stored in the cache)
    recipes: dict[str, TrainingRecipe]
    torch_factory: str | None = None  # 'hepdeploy.model_zoo.mod:fn' for the torch flavour
    # Reference sets big enough that the physics checks' intervals resolve the default allowances
    # (benchmarks/validation_cost.py measures the half-widths; the README has the table).
    reference_samples: int = 20_000
    calibration_samples: int = 1000
    # Samples per inference call in validation (the spec's validation.chunk_size); None: default.
    chunk_size: int | None = None
    # The per-event variables its data sets carry (Dataset.variables), and the physics checks' bins
    # in the exported spec (validation.physics.bins): variable -> edges.
    variable_names: tuple[str, ...] = ()
    # The spec's validation.policy where the defaults do not suit the network.
    validation_policy: dict[str, str] = {}  # noqa: RUF012 - read only
    bins: dict[str, tuple[float, ...]] = {}  # noqa: RUF012 - read only
    # Keras training op by op (no tf.function): for a network whose graph tracing alone costs more
    # than its brief training.
    keras_eager: bool = False

    @property
    def default_flavour(self) -> str:
        return self.flavours[0]

    def check_flavour(self, flavour: str | None) -> str:
        flavour = flavour or self.default_flavour
        if flavour not in self.flavours:
            raise BadInputError(
                f"zoo network {self.name!r} has no {flavour!r} flavour (available: {', '.join(self.flavours)})"
            )
        return flavour

    # --- data -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def generate(self, n: int, seed: int) -> Dataset:
        """``n`` seeded synthetic samples (events for graph networks) with truth."""

    # --- model ----------------------------------------------------------------------------------
    def build(self, flavour: str, seed: int = 0) -> Any:
        """A freshly initialized model of this flavour, its initial weights drawn from ``seed``."""
        # Seeded here, for every network alike: the same seed must give the same initial weights
        # (the training cache and the untrained exports rely on it).
        if flavour == "keras":
            import_keras().utils.set_random_seed(seed)
        else:
            import torch

            torch.manual_seed(seed)
        return self.construct(flavour)

    @abc.abstractmethod
    def construct(self, flavour: str) -> Any:
        """The model of this flavour, drawing its initial weights from the generator :meth:`build` seeded."""

    def fit(self, model: Any, flavour: str, train: Dataset, recipe: TrainingRecipe, seed: int) -> None:
        """Train ``model`` in place."""
        backend(flavour).fit(self, model, train, recipe, seed)

    def predict(self, model: Any, flavour: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The model's (first) output for ``inputs``."""
        return backend(flavour).predict(self, model, inputs)

    def save(self, model: Any, flavour: str, path: Path) -> Path:
        """Write the model (Keras ``.keras`` or torch state dict ``.pt``) atomically."""
        return backend(flavour).save(self, model, path)

    def load(self, flavour: str, path: Path) -> Any:
        """Read what :meth:`save` wrote."""
        return backend(flavour).load(self, flavour, path)

    def parameter_count(self, model: Any, flavour: str) -> int:
        return backend(flavour).parameter_count(model)

    # Hooks the framework back-ends call.
    def keras_loss(self) -> Any:
        return "mse"

    def keras_inputs(self, inputs: dict[str, np.ndarray]) -> Any:
        """``inputs`` in the structure Keras' ``fit``/``predict`` take: one array, or a list of several."""
        x = [np.asarray(inputs[t.name]) for t in self.inputs]
        return x if len(x) > 1 else x[0]

    def epoch_size(self, data: Dataset) -> int:
        """How many items one training epoch shuffles into mini-batches (samples)."""
        return len(data.truth)

    def torch_batches(self, data: Dataset, batch_size: int, generator: Any) -> Iterator[tuple[tuple[Any, ...], Any]]:
        """One epoch of (inputs tuple, truth) mini-batches, in an order drawn from ``generator``."""
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(data.inputs[t.name])) for t in self.inputs]
        truth = torch.from_numpy(data.truth.astype(np.int64 if self.task == "classification" else np.float32))
        for idx in shuffled_batches(self.epoch_size(data), batch_size, generator):
            yield tuple(t[idx] for t in tensors), truth[idx]

    def torch_loss(self, output: Any, truth: Any) -> Any:
        import torch

        if self.task == "classification":
            # The network ends in softmax (the deployment output); train on its log.
            return torch.nn.functional.nll_loss(torch.log(output.clamp_min(1e-7)), truth)
        if self.task == "edge_classification":
            return torch.nn.functional.binary_cross_entropy(output.squeeze(-1).clamp(1e-7, 1 - 1e-7), truth)
        return torch.nn.functional.mse_loss(output.squeeze(-1), truth)

    def model_suffix(self, flavour: str) -> str:
        return ".keras" if flavour == "keras" else ".pt"

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, predictions: np.ndarray, data: Dataset, train: Dataset | None = None) -> dict[str, float]:
        """The physics metric of this task on ``data``."""
        if self.task == "classification":
            return zoo_metrics.classification_metrics(predictions, data.labels, self.class_names)
        if self.task == "edge_classification":
            return zoo_metrics.edge_metrics(predictions, data.labels)
        return zoo_metrics.regression_metrics(predictions, data.targets)


class KerasBackend:
    """Keras 3 (TensorFlow backend) training, prediction and saving."""

    @staticmethod
    def fit(net: ZooNetwork, model: Any, train: Dataset, recipe: TrainingRecipe, seed: int) -> None:
        keras = import_keras()

        loss = "sparse_categorical_crossentropy" if net.task == "classification" else net.keras_loss()
        model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate), loss=loss, run_eagerly=net.keras_eager)
        model.fit(
            net.keras_inputs(train.inputs),
            train.truth,
            epochs=recipe.epochs,
            batch_size=recipe.batch_size,
            shuffle=True,
            verbose=0,
        )

    @staticmethod
    def predict(net: ZooNetwork, model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
        out = model.predict(net.keras_inputs(inputs), batch_size=256, verbose=0)
        return np.asarray(out[0] if isinstance(out, list) else out)

    @staticmethod
    def save(net: ZooNetwork, model: Any, path: Path) -> Path:
        with atomic_path(path, suffix=".keras") as tmp:
            tmp.unlink()  # Keras writes the file itself; the rename stays atomic
            model.save(tmp)
        return path

    @staticmethod
    def load(net: ZooNetwork, flavour: str, path: Path) -> Any:
        keras = import_keras()

        return keras.models.load_model(path, compile=False)

    @staticmethod
    def parameter_count(model: Any) -> int:
        return int(model.count_params())


# Samples per inference call when a zoo network is evaluated after training: ParticleNet's EdgeConv
# features (k neighbours x points x channels per jet) take ~2 MB a jet, so 256 jets stay near 0.5 GB.
PREDICT_CHUNK = 256


class TorchBackend:
    """PyTorch training loop (Adam, one-cycle schedule, seeded shuffling), state-dict saving."""

    @staticmethod
    def fit(net: ZooNetwork, model: Any, train: Dataset, recipe: TrainingRecipe, seed: int) -> None:
        import torch

        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
        steps = recipe.epochs * max(1, -(-net.epoch_size(train) // recipe.batch_size))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.learning_rate, total_steps=steps)
        model.train()
        for _ in range(recipe.epochs):
            for inputs, truth in net.torch_batches(train, recipe.batch_size, generator):
                optimizer.zero_grad()
                loss = net.torch_loss(model(*inputs), truth)
                loss.backward()
                optimizer.step()
                schedule.step()
        model.eval()

    @staticmethod
    def predict(net: ZooNetwork, model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        model.eval()
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[t.name])) for t in net.inputs]
        if not all(t.has_batch_axis for t in net.inputs):
            # A graph without a batch axis runs whole: there is no axis to cut it into chunks along.
            with torch.no_grad():
                return model(*tensors).numpy()
        n = tensors[0].shape[0]
        outs = []
        with torch.no_grad():
            for start in range(0, n, PREDICT_CHUNK):
                outs.append(model(*(t[start : start + PREDICT_CHUNK] for t in tensors)).numpy())
        return np.concatenate(outs)

    @staticmethod
    def save(net: ZooNetwork, model: Any, path: Path) -> Path:
        import torch

        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(model.state_dict(), tmp)
        return path

    @staticmethod
    def load(net: ZooNetwork, flavour: str, path: Path) -> Any:
        import torch

        model = net.build(flavour)
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
        model.eval()
        return model

    @staticmethod
    def parameter_count(model: Any) -> int:
        return int(sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()))


def shuffled_batches(n: int, batch_size: int, generator: Any) -> Iterator[Any]:
    """One epoch's mini-batches of ``range(n)``: index tensors cut from a permutation drawn from ``generator``.

    Exactly one ``randperm`` per epoch, drawn when the epoch starts: the generator's stream, and
    so the trained weights, depend on it.
    """
    import torch

    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def backend(flavour: str) -> type[KerasBackend] | type[TorchBackend]:
    return KerasBackend if flavour == "keras" else TorchBackend
