"""Small real PyTorch models the convert tests export (factories named 'module:function')."""
from __future__ import annotations

import torch


class TwoInTwoOut(torch.nn.Module):
    """parts [batch, n_particles, 4] + glob [batch, 3] -> o1 [batch, 3], o2 [batch, 2]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, parts: torch.Tensor, glob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.relu(self.embed(parts)).mean(dim=1)
        return pooled * glob, self.head(pooled)


class JetMLP(torch.nn.Module):
    """x [batch, 16] -> probabilities [batch, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


class BatchScaled(torch.nn.Module):
    """Multiplies by the batch size as a Python float: the TorchScript exporter bakes in the
    traced batch size, so its ONNX graph genuinely differs from the model at other sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * float(x.shape[0])


def two_in_two_out() -> TwoInTwoOut:
    torch.manual_seed(0)
    return TwoInTwoOut().eval()


def jet_mlp() -> JetMLP:
    torch.manual_seed(1)
    return JetMLP().eval()


def batch_scaled() -> BatchScaled:
    torch.manual_seed(2)
    return BatchScaled().eval()
