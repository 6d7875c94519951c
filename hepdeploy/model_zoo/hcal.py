"""Seeded HCAL channel pulses for FACILE: 47 features per channel, target the true energy.

Per channel: 8 time samples (25 ns) of charge from a pulse shape scaled by the true
energy and a depth/|ieta|-dependent response, plus out-of-time pile-up pulses shifted
by one bunch crossing, in-time pile-up, electronics noise and a pedestal, all times a
per-channel gain (fC/GeV). The gain multiplies the energy, so a linear fit on the
charges cannot undo it; FACILE (BatchNorm + MLP) can.

Features: 8 charges (fC), pedestal (fC), gain, iphi/72, one-hot depth (7), one-hot
|ieta| (29)  ->  47.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_TS = 8
N_DEPTH = 7
N_IETA = 29
N_FEATURES = N_TS + 3 + N_DEPTH + N_IETA  # 47
# Fraction of the in-time pulse in each 25 ns sample (sample of interest: TS3).
PULSE = np.array([0.0, 0.01, 0.06, 0.64, 0.22, 0.05, 0.015, 0.005])
# What generate_channels draws, in words: FACILE's data_recipe. It enters the training cache
# key, so it stays here, to be changed together with the generator.
DATA_RECIPE = (
    "hcal.generate_channels: log-uniform 1-200 GeV, 8-sample pulse x response(depth, |ieta|) x gain "
    "0.5-2.5 fC/GeV, out-of-time and in-time pile-up, noise, pedestal"
)


@dataclass
class HcalChannels:
    features: np.ndarray  # [n, 47] float32
    energy: np.ndarray  # [n] true energy (GeV) float32


def generate_channels(n: int, seed: int) -> HcalChannels:
    rng = np.random.default_rng(seed)
    energy = np.exp(rng.uniform(np.log(1.0), np.log(200.0), size=n))
    depth = rng.integers(0, N_DEPTH, size=n)
    ieta = rng.integers(0, N_IETA, size=n)
    iphi = rng.integers(0, 72, size=n)
    # Response falls with depth and changes with |ieta| (endcap vs barrel).
    response = 0.9 - 0.04 * depth + 0.15 * np.tanh((ieta - 16) / 3.0) + 0.03 * np.cos(iphi * np.pi / 36)
    gain = rng.uniform(0.5, 2.5, size=n)  # fC per GeV
    pedestal = rng.normal(3.0, 0.3, size=n)
    # Pulse timing jitter shifts a little charge between TS3 and TS4.
    jitter = rng.normal(0.0, 0.03, size=n)
    shape = np.broadcast_to(PULSE, (n, N_TS)).copy()
    shape[:, 3] -= jitter * 0.64
    shape[:, 4] += jitter * 0.64
    in_time = energy[:, None] * response[:, None] * shape
    # Out-of-time pile-up: pulses from the previous and next bunch crossings (shifted by one sample).
    pu_prev = rng.exponential(4.0, size=n)[:, None] * np.roll(PULSE, -1)[None, :]
    pu_next = rng.exponential(4.0, size=n)[:, None] * np.roll(PULSE, 1)[None, :]
    pu_in = rng.exponential(1.0, size=n)[:, None] * PULSE[None, :]
    noise = rng.normal(0.0, 0.4, size=(n, N_TS))
    charge = gain[:, None] * (in_time + pu_prev + pu_next + pu_in) + pedestal[:, None] + noise
    features = np.concatenate(
        [
            charge,
            pedestal[:, None],
            gain[:, None],
            (iphi / 72.0)[:, None],
            np.eye(N_DEPTH)[depth],
            np.eye(N_IETA)[ieta],
        ],
        axis=1,
    )
    return HcalChannels(features=features.astype(np.float32), energy=energy.astype(np.float32))


def linear_fit_baseline(train: HcalChannels, test: HcalChannels) -> np.ndarray:
    """Least-squares linear regression of the energy on the 47 features: the baseline to beat."""
    design = np.concatenate([train.features, np.ones((len(train.energy), 1), np.float32)], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, train.energy.astype(np.float64), rcond=None)
    test_design = np.concatenate([test.features, np.ones((len(test.energy), 1), np.float32)], axis=1)
    return test_design.astype(np.float64) @ coef
