"""The hls4ml jet-tagging MLP: 16 high-level features -> 5 classes (g, q, W, Z, t), Keras and PyTorch."""
from __future__ import annotations

from typing import Any

from hepdeploy.model_zoo import jets
from hepdeploy.model_zoo.base import Dataset, TrainingRecipe, ZooNetwork, triton_config
from hepdeploy.spec import DimRange, TensorSpec
from hepdeploy.tf_support import import_keras

CLASSES = ("g", "q", "W", "Z", "t")
HIDDEN = (64, 32, 32)


def build_torch(n_features: int = 16, n_classes: int = len(CLASSES)) -> Any:
    """The PyTorch flavour (factory for specs: ``hepdeploy.model_zoo.jet_mlp:build_torch``)."""
    import torch

    class JetMLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            sizes = (n_features, *HIDDEN)
            self.hidden = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
            self.head = torch.nn.Linear(HIDDEN[-1], n_classes)

        def forward(self, input_1: torch.Tensor) -> torch.Tensor:
            x = input_1
            for layer in self.hidden:
                x = torch.relu(layer(x))
            return torch.softmax(self.head(x), dim=-1)

    return JetMLP()


class JetMLPNetwork(ZooNetwork):
    name = "jet_mlp"
    description = "hls4ml jet tagger: 16 substructure features -> Dense 64-32-32 ReLU -> 5 softmax (g,q,W,Z,t)"
    export_traps = (
        "Tiny MatMul/Gemm + Softmax graph: the baseline every exporter must get exactly right; Keras and "
        "PyTorch flavours must export to the same tensor names (input_1 -> output)."
    )
    flavours = ("keras", "torch")
    task = "classification"
    class_names = CLASSES
    inputs = (TensorSpec(name="input_1", shape=["batch", 16]),)
    outputs = (TensorSpec(name="output", shape=["batch", len(CLASSES)]),)
    dims = {"batch": DimRange(min=1, opt=256, max=4096)}
    # The CPU fallback twin (<name>_cpu): the fastest CPU variant that passes, FP32 included (tuned INT8: `variants`).
    triton = {**triton_config(max_batch_size=4096, preferred_batch_sizes=(256, 1024), batch_per_request=16),
              "cpu_twin": {"variant": "auto"}}
    # The raw jet features feed the first layer; quantizing its input costs W efficiency and argmax agreement.
    # `tune: true` searches which layers to keep in FP32. 80,000 jets: about 6,600 per pT bin are needed to
    # resolve a 0.02 efficiency allowance in the pT bins, which 20,000 jets could not.
    variants = ({"name": "fp32"}, {"name": "int8-cpu", "tune": True}, {"name": "fp16"},
                {"name": "int8-trt", "tune": True})
    reference_samples = 80_000
    variable_names = ("jet_pt", "jet_eta")
    bins = {"jet_pt": (400.0, 465.0, 530.0, 600.0)}
    data_recipe = "jets.generate_jets(kinds=g,q,W,Z,t, pT 400-600, <=64 constituents) -> jets.high_level_features"
    recipes = {
        "full": TrainingRecipe(n_train=50_000, n_test=20_000, epochs=15, batch_size=256, learning_rate=3e-3),
        "reduced": TrainingRecipe(n_train=8_000, n_test=4_000, epochs=6, batch_size=256, learning_rate=5e-3),
    }
    torch_factory = "hepdeploy.model_zoo.jet_mlp:build_torch"

    def generate(self, n: int, seed: int) -> Dataset:
        sample = jets.generate_jets(n, seed, CLASSES, max_particles=64, pt_range=(400.0, 600.0))
        return Dataset(inputs={"input_1": jets.high_level_features(sample)}, labels=sample.label,
                       variables=jets.jet_variables(sample))

    def construct(self, flavour: str) -> Any:
        if flavour == "torch":
            return build_torch()

        keras = import_keras()

        inp = keras.Input(shape=(16,), name="input_1")
        x = inp
        for i, units in enumerate(HIDDEN):
            x = keras.layers.Dense(units, activation="relu", name=f"fc{i + 1}")(x)
        out = keras.layers.Dense(len(CLASSES), activation="softmax", name="output")(x)
        return keras.Model(inp, out, name="jet_mlp")


NETWORK = JetMLPNetwork()
