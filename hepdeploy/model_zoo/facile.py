"""FACILE: CMS HCAL channel energy regression (Keras), input [batch, 47] -> output [batch, 1]."""
from __future__ import annotations

from typing import Any

import numpy as np

from hepdeploy.model_zoo import hcal
from hepdeploy.model_zoo.base import Dataset, TrainingRecipe, ZooNetwork, triton_config
from hepdeploy.spec import DimRange, TensorSpec
from hepdeploy.tf_support import import_keras


class Facile(ZooNetwork):
    name = "facile"
    description = "FACILE HCAL energy regression: BatchNorm(47) -> Dense 200-100-50-20-10-5 ReLU -> 1"
    export_traps = (
        "BatchNormalization at the input becomes a Mul/Add on the raw charges (values up to ~500 fC: FP16 "
        "and INT8 see unnormalized inputs); large batches "
        "(16000 per event, max 160000) exercise dynamic batching and TensorRT profiles; a regression "
        "output makes INT8 judged by bias/resolution rather than argmax."
    )
    flavours = ("keras",)
    task = "regression"
    inputs = (TensorSpec(name="input", shape=["batch", hcal.N_FEATURES]),)
    outputs = (TensorSpec(name="output", shape=["batch", 1]),)
    # One event is ~16000 HCAL channels in one request.
    dims = {"batch": DimRange(min=1, opt=16000, max=160000)}
    # The CPU fallback twin (<name>_cpu): the fastest CPU variant that passes, FP32 included (tuned INT8: `variants`).
    triton = {**triton_config(max_batch_size=160000, preferred_batch_sizes=(16000,), batch_per_request=16000),
              "cpu_twin": {"variant": "auto"}}
    variable_names = ("true_energy",)
    reference_samples = 300_000  # channels (about 19 events of 16 000)
    # Post-training INT8 of every layer costs more resolution or bias than allowed; `tune: true` makes the
    # build search which layers to keep in FP32 and publish the fastest mix that passes.
    variants = ({"name": "fp32"}, {"name": "int8-cpu", "tune": True}, {"name": "fp16"},
                {"name": "int8-trt", "tune": True})
    bins = {"true_energy": (1.0, 10.0, 50.0, 200.0)}
    data_recipe = hcal.DATA_RECIPE
    recipes = {
        "full": TrainingRecipe(n_train=60_000, n_test=20_000, epochs=8, batch_size=256, learning_rate=2e-3),
        "reduced": TrainingRecipe(n_train=8_000, n_test=4_000, epochs=3, batch_size=256, learning_rate=3e-3),
    }

    def generate(self, n: int, seed: int) -> Dataset:
        channels = hcal.generate_channels(n, seed)
        return Dataset(inputs={"input": channels.features}, targets=channels.energy,
                       variables={"true_energy": channels.energy.astype(np.float32)})

    def construct(self, flavour: str) -> Any:
        keras = import_keras()

        inp = keras.Input(shape=(hcal.N_FEATURES,), name="input")
        x = keras.layers.BatchNormalization(name="bn_input")(inp)
        for i, units in enumerate((200, 100, 50, 20, 10, 5)):
            x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        out = keras.layers.Dense(1, name="output")(x)
        return keras.Model(inp, out, name="facile")

    def keras_loss(self) -> Any:
        keras = import_keras()

        # Huber on the energy: robust to the pile-up tails, like FACILE's training.
        return keras.losses.Huber(delta=5.0)

    def evaluate(self, predictions: np.ndarray, data: Dataset, train: Dataset | None = None) -> dict[str, float]:
        metrics = super().evaluate(predictions, data)
        if train is not None:
            linear = hcal.linear_fit_baseline(
                hcal.HcalChannels(train.inputs["input"], train.targets),
                hcal.HcalChannels(data.inputs["input"], data.targets),
            )
            baseline = super().evaluate(linear, data)
            metrics["linear_bias"] = baseline["bias"]
            metrics["linear_resolution"] = baseline["resolution"]
        return metrics


NETWORK = Facile()
