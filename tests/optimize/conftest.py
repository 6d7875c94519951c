"""Fixtures of the optimize tests: a small trained CNN (Conv + BatchNorm + Gemm) exported to
ONNX, its calibration data, and the zoo's trained FACILE and jet MLP converted to ONNX."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class OnnxModel:
    path: Path
    calibration: Path
    spec: object | None = None


def _toy_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calorimeter-like 1x12x12 images: class 0 a narrow deposit, class 1 a wide one."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    yy, xx = np.mgrid[0:12, 0:12]
    centre = rng.uniform(4, 8, size=(n, 2))
    width = np.where(labels == 0, 1.0, 2.5)[:, None, None]
    energy = rng.exponential(50.0, size=n)[:, None, None]
    r2 = (yy[None] - centre[:, 0, None, None]) ** 2 + (xx[None] - centre[:, 1, None, None]) ** 2
    images = energy * np.exp(-r2 / (2 * width**2)) + rng.normal(0, 0.5, size=(n, 12, 12))
    return images[:, None].astype(np.float32), labels


@pytest.fixture(scope="session")
def small_cnn(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("small_cnn")

    class SmallCNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
            self.bn1 = torch.nn.BatchNorm2d(16)
            self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1, stride=2)
            self.bn2 = torch.nn.BatchNorm2d(32)
            self.fc1 = torch.nn.Linear(32, 32)
            self.fc2 = torch.nn.Linear(32, 2)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(image / 50.0)))
            x = torch.relu(self.bn2(self.conv2(x)))
            x = torch.relu(self.fc1(x.mean(dim=(2, 3))))
            return torch.softmax(self.fc2(x), dim=-1)

    model = SmallCNN()
    images, labels = _toy_images(1024, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    for epoch in range(4):
        for start in range(0, len(x), 64):
            optimizer.zero_grad()
            probs = model(x[start:start + 64])
            loss = torch.nn.functional.nll_loss(torch.log(probs + 1e-7), y[start:start + 64])
            loss.backward()
            optimizer.step()
    model.eval()
    path = folder / "cnn.onnx"
    torch.onnx.export(model, (x[:4],), str(path), input_names=["image"], output_names=["probs"],
                      dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}}, dynamo=False, opset_version=17)
    calibration = folder / "cnn_calibration.npz"
    np.savez(calibration, image=_toy_images(600, seed=2)[0])
    return OnnxModel(path, calibration)


@pytest.fixture(scope="session")
def toy_images():  # type: ignore[no-untyped-def]
    """``toy_images(n, seed)`` -> images of the kind the small CNN was trained on."""
    return lambda n, seed: _toy_images(n, seed)[0]


@pytest.fixture(scope="session")
def zoo_onnx(zoo_export, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Factory: ``zoo_onnx("jet_mlp")`` -> OnnxModel of the trained zoo network converted to ONNX."""
    from hepdeploy.convert import convert_from_spec

    made: dict[str, OnnxModel] = {}

    def convert(name: str) -> OnnxModel:
        if name not in made:
            export = zoo_export(name)
            out = tmp_path_factory.mktemp(f"onnx-{name}") / f"{name}.onnx"
            convert_from_spec(export.spec, out)
            made[name] = OnnxModel(out, export.calibration_path, export.spec)
        return made[name]

    return convert
