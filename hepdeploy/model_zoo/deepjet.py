"""DeepJet (DeepFlavour) in Keras with the CMSSW ONNX interface.

input_1 global [batch, 15], input_2 charged PF [batch, n_cpf, 16], input_3 neutral PF
[batch, n_npf, 6], input_4 secondary vertices [batch, n_sv, 4 -> 12 features], input_5
jet pT [batch, 1]  ->  ID_pred [batch, 6] (b, bb, lepb, c, uds, g).

Each collection goes through a 1x1 Conv1D stack and an LSTM; the charged-candidate
LSTM reads backwards (``go_backwards=True``: candidates are sorted by impact-parameter
significance, so it ends on the most displaced track). tf2onnx 1.17 writes it as a
ReverseSequence in front of a forward ONNX LSTM (not as direction="reverse"). The
collection lengths are dynamic (trained at 25/25/4).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from hepdeploy.model_zoo import jets
from hepdeploy.model_zoo.base import Dataset, TrainingRecipe, ZooNetwork, triton_config
from hepdeploy.spec import DimRange, TensorSpec
from hepdeploy.tf_support import import_keras

CLASSES = ("b", "bb", "lepb", "c", "uds", "g")
N_CPF, N_NPF, N_VTX = 25, 25, 4
GLOBAL, CPF, NPF, VTX = 15, 16, 6, 12


def _sorted_take(values: np.ndarray, key: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    """values [J, P, F] -> [J, n, F] ordered by descending key among valid entries, zero padded."""
    order = np.argsort(np.where(valid, -key, np.inf), axis=1, kind="stable")[:, :n]
    taken = np.take_along_axis(values, order[:, :, None], axis=1)
    keep = np.take_along_axis(valid, order, axis=1)
    return (taken * keep[:, :, None]).astype(np.float32)


class _Tracks(NamedTuple):
    """Per-candidate quantities every DeepJet input block reads: [J, P] each."""

    charged: np.ndarray
    neutral: np.ndarray
    ptrel: np.ndarray
    d0sig: np.ndarray
    dzsig: np.ndarray
    sip3d: np.ndarray


def deepjet_inputs(sample: jets.Jets) -> dict[str, np.ndarray]:
    m = sample.mask
    d0sig = sample.part_d0 / np.maximum(sample.part_d0_err, 1e-4)
    dzsig = sample.part_dz / np.maximum(sample.part_dz_err, 1e-4)
    tracks = _Tracks(charged=m & (sample.part_charge != 0), neutral=m & (sample.part_charge == 0),
                     ptrel=sample.part_pt / sample.pt[:, None], d0sig=d0sig, dzsig=dzsig,
                     sip3d=np.hypot(d0sig, dzsig) * np.sign(sample.part_d0))
    rng = np.random.default_rng(int(sample.pt[0] * 997) % 2**31)  # detector-level extras, seeded by the jets
    cpf_all = _charged_features(sample, tracks, rng)  # draws from rng before the neutral features do
    npf_all = _neutral_features(sample, tracks, rng)
    vtx_all, flight_sig = _vertex_features(sample)
    return {
        "input_1": _global_features(sample, tracks),
        "input_2": _sorted_take(cpf_all, np.abs(tracks.sip3d), tracks.charged, N_CPF),
        "input_3": _sorted_take(npf_all, tracks.ptrel, tracks.neutral, N_NPF),
        "input_4": _sorted_take(vtx_all, flight_sig, sample.sv_mask, N_VTX),
        "input_5": np.log(sample.pt)[:, None].astype(np.float32),
    }


def _charged_features(sample: jets.Jets, tracks: _Tracks, rng: np.random.Generator) -> np.ndarray:
    """Every candidate's charged-PF features [J, P, 16] (the charged ones are kept later)."""
    m, t = sample.mask, sample.part_type
    # Distance of each candidate to the nearest secondary vertex (large if none).
    dr_sv = np.where(
        sample.sv_mask[:, None, :],
        np.hypot(sample.part_deta[:, :, None] - sample.sv_deta[:, None, :],
                 sample.part_dphi[:, :, None] - sample.sv_dphi[:, None, :]),
        0.4,
    ).min(axis=2)
    return np.stack(
        [
            np.log(np.maximum(tracks.ptrel, 1e-4)),
            sample.part_deta * 10,
            sample.part_dphi * 10,
            np.tanh(sample.part_d0 / 0.05),
            np.tanh(tracks.d0sig / 10),
            np.tanh(sample.part_dz / 0.05),
            np.tanh(tracks.dzsig / 10),
            np.tanh(tracks.sip3d / 10),
            sample.part_charge,
            t == jets.ELECTRON,
            t == jets.MUON,
            rng.chisquare(5, size=m.shape) / 5,
            rng.integers(4, 8, size=m.shape) / 7,
            np.ones(m.shape),
            dr_sv * 5,
            sample.part_from_sv * 0 + (np.abs(tracks.d0sig) < 3),  # compatible with the primary vertex
        ],
        axis=2,
    )


def _neutral_features(sample: jets.Jets, tracks: _Tracks, rng: np.random.Generator) -> np.ndarray:
    """Every candidate's neutral-PF features [J, P, 6] (the neutral ones are kept later)."""
    m, t = sample.mask, sample.part_type
    return np.stack(
        [
            np.log(np.maximum(tracks.ptrel, 1e-4)),
            sample.part_deta * 10,
            sample.part_dphi * 10,
            t == jets.PHOTON,
            np.where(t == jets.NEUTRAL_HADRON, rng.uniform(0.6, 1.0, size=m.shape), rng.uniform(0, 0.2, size=m.shape)),
            rng.uniform(0.5, 1.0, size=m.shape),
        ],
        axis=2,
    )


def _vertex_features(sample: jets.Jets) -> tuple[np.ndarray, np.ndarray]:
    """The secondary vertices' features [J, V, 12] and their flight significance (their order)."""
    flight_sig = sample.sv_flight / np.maximum(sample.sv_flight_err, 1e-4)
    features = np.stack(
        [
            np.log(np.maximum(sample.sv_pt / sample.pt[:, None], 1e-4)),
            sample.sv_deta * 10,
            sample.sv_dphi * 10,
            sample.sv_mass,
            sample.sv_ntracks / 5,
            sample.sv_chi2 / 5,
            sample.sv_chi2 / np.maximum(sample.sv_ntracks, 1),
            np.tanh(sample.sv_flight / 0.5),
            np.tanh(flight_sig / 20),
            np.tanh(sample.sv_flight * 1.2 / 0.5),
            np.tanh(flight_sig * 1.1 / 20),
            1.0 - np.hypot(sample.sv_deta, sample.sv_dphi),
        ],
        axis=2,
    )
    return features, flight_sig


def _global_features(sample: jets.Jets, tracks: _Tracks) -> np.ndarray:
    """The jet-level features [J, 15]."""
    charged, neutral, ptrel, d0sig, sip3d = tracks.charged, tracks.neutral, tracks.ptrel, tracks.d0sig, tracks.sip3d
    return np.stack(
        [
            np.log(sample.pt),
            sample.eta,
            charged.sum(1) / 10,
            neutral.sum(1) / 10,
            sample.n_sv,
            sample.n_pv / 30,
            (ptrel * charged).sum(1),
            (ptrel * charged * np.hypot(sample.part_deta, sample.part_dphi)).sum(1) * 10,
            (sample.n_sv > 0).astype(np.float32),
            np.tanh(np.sort(np.where(charged, d0sig, -99), axis=1)[:, -2] / 10),
            np.tanh(np.sort(np.where(charged, sip3d, -99), axis=1)[:, -2] / 10),
            np.tanh(np.abs(d0sig * charged).max(1) / 10),
            np.tanh(np.abs(sip3d * charged).max(1) / 10),
            (charged & (np.abs(d0sig) > 3)).sum(1) / 5,
            sample.mass / 20,
        ],
        axis=1,
    ).astype(np.float32)


class DeepJet(ZooNetwork):
    name = "deepjet"
    description = "DeepJet (DeepFlavour) AK4 flavour tagger: 1x1 Conv1D stacks + LSTMs (one go_backwards) -> 6 classes"
    export_traps = (
        "Keras LSTMs must be matched by tf2onnx's rewriter into ONNX LSTM ops (else a Loop); go_backwards=True "
        "becomes ReverseSequence + forward LSTM (tf2onnx 1.17), with sequence lengths computed from Shape - a "
        "wrong direction would still run, so only the numerical self-check catches it; "
        "five inputs of mixed rank with three dynamic sequence lengths; CMSSW tensor names input_1..input_5 "
        "-> ID_pred must survive tf2onnx's ':0' suffixes."
    )
    flavours = ("keras",)
    task = "classification"
    class_names = CLASSES
    inputs = (
        TensorSpec(name="input_1", shape=["batch", GLOBAL]),
        TensorSpec(name="input_2", shape=["batch", "n_cpf", CPF]),
        TensorSpec(name="input_3", shape=["batch", "n_npf", NPF]),
        TensorSpec(name="input_4", shape=["batch", "n_sv", VTX]),
        TensorSpec(name="input_5", shape=["batch", 1]),
    )
    outputs = (TensorSpec(name="ID_pred", shape=["batch", len(CLASSES)]),)
    dims = {
        "batch": DimRange(min=1, opt=64, max=256),
        "n_cpf": DimRange(min=2, opt=N_CPF, max=50),
        "n_npf": DimRange(min=2, opt=N_NPF, max=50),
        "n_sv": DimRange(min=2, opt=N_VTX, max=10),
    }
    triton = triton_config(max_batch_size=256, preferred_batch_sizes=(64,), batch_per_request=20)
    variable_names = ("jet_pt", "jet_eta")
    bins = {"jet_pt": (30.0, 100.0, 200.0, 300.0)}
    data_recipe = (
        f"jets.generate_jets(kinds={','.join(CLASSES)}, pT 30-300, <= 64 constituents) -> deepjet.deepjet_inputs "
        f"(cpf sorted by |sip3d|, npf by pT, vtx by flight significance; {N_CPF}/{N_NPF}/{N_VTX} kept)"
    )
    recipes = {
        "full": TrainingRecipe(n_train=16_000, n_test=5_000, epochs=4, batch_size=256, learning_rate=2e-3),
        "reduced": TrainingRecipe(n_train=2_000, n_test=1_000, epochs=2, batch_size=256, learning_rate=3e-3),
    }
    reference_samples = 80_000
    calibration_samples = 512

    def generate(self, n: int, seed: int) -> Dataset:
        sample = jets.generate_jets(n, seed, CLASSES, max_particles=64, pt_range=(30.0, 300.0))
        return Dataset(inputs=deepjet_inputs(sample), labels=sample.label, variables=jets.jet_variables(sample))

    def construct(self, flavour: str) -> Any:
        keras = import_keras()
        from keras import layers

        global_in = keras.Input(shape=(GLOBAL,), name="input_1")
        cpf_in = keras.Input(shape=(None, CPF), name="input_2")
        npf_in = keras.Input(shape=(None, NPF), name="input_3")
        vtx_in = keras.Input(shape=(None, VTX), name="input_4")
        pt_in = keras.Input(shape=(1,), name="input_5")

        def conv_stack(x: Any, widths: tuple[int, ...], prefix: str) -> Any:
            for i, width in enumerate(widths):
                x = layers.Conv1D(width, 1, activation="relu", name=f"{prefix}_conv{i}")(x)
            return x

        cpf = conv_stack(cpf_in, (64, 32, 32, 8), "cpf")
        npf = conv_stack(npf_in, (32, 16, 4), "npf")
        vtx = conv_stack(vtx_in, (64, 32, 32, 8), "vtx")
        cpf = layers.LSTM(64, go_backwards=True, name="cpf_lstm")(cpf)
        npf = layers.LSTM(32, name="npf_lstm")(npf)
        vtx = layers.LSTM(32, name="vtx_lstm")(vtx)
        global_normed = layers.BatchNormalization(name="global_bn")(global_in)
        x = layers.Concatenate(name="merge")([global_normed, cpf, npf, vtx, pt_in])
        for i, units in enumerate((200, 100, 100, 100)):
            x = layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        out = layers.Dense(len(CLASSES), activation="softmax", name="ID_pred")(x)
        return keras.Model([global_in, cpf_in, npf_in, vtx_in, pt_in], out, name="deepjet")


NETWORK = DeepJet()
