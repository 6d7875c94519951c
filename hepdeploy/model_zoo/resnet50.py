"""ResNet-50 top tagger on jet images (Keras ``keras.applications.ResNet50``, weights=None, 2 classes).

images [batch, 224, 224, 3] -> softmax [batch, 2] (QCD, top). Pixel = constituent pT /
jet pT over +-1 in eta and phi, repeated in 3 channels. As in the SONIC paper the network
is mainly a compute load (~4 GFLOP per image); training is brief but must beat random.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from hepdeploy.model_zoo import jets
from hepdeploy.model_zoo.base import Dataset, TrainingRecipe, ZooNetwork, triton_config
from hepdeploy.spec import DimRange, TensorSpec
from hepdeploy.tf_support import import_keras, import_tensorflow

CLASSES = ("qcd", "top")
PIXELS = 224
# Jet kinds drawn in equal parts; q and g are QCD (label 0), t is top (label 1).
KINDS = ("q", "g", "t", "t")
KIND_LABEL = np.array([0, 0, 1, 1])


class ResNet50TopTagger(ZooNetwork):
    name = "resnet50"
    description = "ResNet-50 (keras.applications, weights=None) top tagger on 224x224 jet images -> 2 classes"
    export_traps = (
        "53 Conv+BatchNormalization pairs that tf2onnx 1.17 leaves as Conv -> Mul -> Add (folding is left to "
        "the simplifier / TensorRT); NHWC Keras input in front of NCHW ONNX convs "
        "(a Transpose at the input that TensorRT must absorb); 23.6 M parameters (94 MB FP32 - still inside "
        "the 2 GB protobuf limit, so a single-file .onnx); the conversion self-check at batch 64 takes ~20 s and "
        "peaks at ~17 GB RSS on CPU (Keras eager + ONNX Runtime arena); a short training leaves BatchNorm moving "
        "statistics stale (momentum lowered and statistics re-estimated after training)."
    )
    flavours = ("keras",)
    task = "classification"
    class_names = CLASSES
    inputs = (TensorSpec(name="images", shape=["batch", PIXELS, PIXELS, 3], low=0.0, high=0.05),)
    outputs = (TensorSpec(name="softmax", shape=["batch", len(CLASSES)]),)
    dims = {"batch": DimRange(min=1, opt=10, max=64)}
    triton = triton_config(max_batch_size=64, preferred_batch_sizes=(10, 32), batch_per_request=10)
    variable_names = ("jet_pt", "jet_eta")
    data_recipe = "jets.generate_jets(kinds=q,g,t,t, pT 400-600, <=64 constituents) -> jets.jet_images(224, +-1)"
    recipes = {
        # A few hundred images: ~0.3 s per image per training step on 2 cores.
        "full": TrainingRecipe(n_train=320, n_test=200, epochs=1, batch_size=16, learning_rate=1e-3, threads=2,
                               extra={"bn_recalibration_batches": 8}),
        "reduced": TrainingRecipe(n_train=16, n_test=32, epochs=1, batch_size=8, learning_rate=1e-3, threads=2,
                                  extra={"bn_recalibration_batches": 2}),
    }
    reference_samples = 200
    calibration_samples = 64
    chunk_size = 16  # 200 images in one Keras call need > 24 GB
    keras_eager = True  # tracing the ResNet-50 training graph alone costs ~40 s on 2 cores, more than a few steps

    def generate(self, n: int, seed: int) -> Dataset:
        sample = jets.generate_jets(n, seed, KINDS, max_particles=64, pt_range=(400.0, 600.0))
        return Dataset(inputs={"images": jets.jet_images(sample, PIXELS)}, labels=KIND_LABEL[sample.label],
                       variables=jets.jet_variables(sample))

    def construct(self, flavour: str) -> Any:
        keras = import_keras()

        images = keras.Input(shape=(PIXELS, PIXELS, 3), name="images")
        model = keras.applications.ResNet50(
            weights=None, input_tensor=images, classes=len(CLASSES), classifier_activation="softmax", name="resnet50"
        )
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                # A brief training: let the moving statistics follow the batches.
                layer.momentum = 0.5
        return model

    def keras_inputs(self, inputs: dict[str, np.ndarray]) -> Any:
        # A list: the functional model built on `input_tensor` expects that structure.
        return [np.asarray(inputs["images"])]

    def fit(self, model: Any, flavour: str, train: Dataset, recipe: TrainingRecipe, seed: int) -> None:
        super().fit(model, flavour, train, recipe, seed)
        # A few hundred steps are too few for the BatchNorm moving statistics to follow the weights:
        # re-estimate them with forward passes in training mode (no weight update).
        images = train.inputs["images"]
        for i in range(recipe.extra.get("bn_recalibration_batches", 0)):
            start = (i * recipe.batch_size) % len(images)
            model([images[start : start + recipe.batch_size]], training=True)

    def predict(self, model: Any, flavour: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tf = import_tensorflow()

        images = np.asarray(inputs["images"])
        # Direct calls (no predict() graph tracing); 16 images at a time keeps memory small.
        return np.concatenate(
            [model([tf.constant(images[i : i + 16])], training=False).numpy() for i in range(0, len(images), 16)]
        )


NETWORK = ResNet50TopTagger()
