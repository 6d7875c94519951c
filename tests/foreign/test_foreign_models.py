"""Models we did not make, as deployed HEP networks come: old exporters (IR 3, opset 9 and 11),
TensorFlow-style tensor names, batch dims named ``N`` / ``batch_size`` / ``unk__7``, a fixed
batch of 1, an LSTM. Each goes through optimize (fp32, fp16, int8-cpu), reference, validate,
``triton add`` and ``triton check`` from the command line, without a spec."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from hepdeploy.cli import main
from hepdeploy.triton.config import read_model_config

torch = pytest.importorskip("torch")


@dataclass(frozen=True)
class Foreign:
    path: Path
    data: Path
    input_name: str
    output_name: str
    batched: bool
    dims: tuple[int, ...]  # the input's config dims: without the batch axis when batched
    int8_refusal: str | None = None  # the one-line refusal we expect where int8-cpu cannot apply


def _rename(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in [*model.graph.input, *model.graph.output]:
        if value.name == old:
            value.name = new


def _ir3(model: onnx.ModelProto) -> None:
    """IR 3 as old exporters wrote it: every initializer is also listed as a graph input."""
    listed = {v.name for v in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in listed:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    model.ir_version = 3


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 5), torch.nn.Softmax(dim=1)).eval()


def _transformer() -> torch.nn.Module:
    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(7, 32)
            layer = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True,
                                                     dropout=0.0)
            self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = torch.nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.head(self.encoder(self.embed(x)).mean(dim=1)), dim=1)

    return Encoder().eval()


def _export(module, example, path: Path, opset: int, inp: str, out: str, batch: str | None) -> onnx.ModelProto:  # noqa: ANN001
    axes = {inp: {0: batch}, out: {0: batch}} if batch else None
    torch.onnx.export(module, (example,), str(path), opset_version=opset, input_names=[inp], output_names=[out],
                      dynamic_axes=axes, dynamo=False)
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Foreign]:
    folder = tmp_path_factory.mktemp("foreign")
    rng = np.random.default_rng(0)
    made: dict[str, Foreign] = {}

    # hls4ml-style jet MLP: ONNX IR 3, opset 9, batch N, TensorFlow-style output name.
    for key, batch in (("ir3_opset9_N", "N"), ("ir3_fixed_batch_1", None)):
        path = folder / f"{key}.onnx"
        example = torch.randn(4 if batch else 1, 16)
        model = _export(_mlp(), example, path, 9, "input_1", "out", batch)
        _rename(model, "out", "ID_pred/Softmax:0")
        _ir3(model)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        data = folder / f"{key}.npz"
        np.savez(data, input_1=rng.standard_normal((200, 16)).astype(np.float32))  # rows, also for batch 1
        made[key] = Foreign(path, data, "input_1", "ID_pred/Softmax:0", batched=batch is not None,
                            dims=(16,) if batch else (1, 16))

    # ParticleNet-like Conv1d tagger at opset 11 (per-channel int8 needs opset 13), batch "batch_size".
    class Conv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv1d(8, 16, 3, padding=1), torch.nn.Conv1d(16, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean(dim=2)), dim=1)

    torch.manual_seed(1)
    path = folder / "conv_opset11.onnx"
    _export(Conv().eval(), torch.randn(4, 8, 20), path, 11, "pf_points", "softmax", "batch_size")
    data = folder / "conv_opset11.npz"
    np.savez(data, pf_points=rng.standard_normal((200, 8, 20)).astype(np.float32))
    made["conv_opset11_batch_size"] = Foreign(path, data, "pf_points", "softmax", batched=True, dims=(8, 20))

    # DeepFlavour-like LSTM at opset 13, batch unk__7, output named as in a TensorFlow graph.
    class Lstm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.fc = torch.nn.LSTM(6, 32, batch_first=True), torch.nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.fc(self.lstm(x)[0][:, -1]), dim=1)

    torch.manual_seed(2)
    path = folder / "lstm_opset13.onnx"
    _export(Lstm().eval(), torch.randn(4, 10, 6), path, 13, "cpf", "output/BiasAdd", "unk__7")
    data = folder / "lstm_opset13.npz"
    np.savez(data, cpf=rng.standard_normal((200, 10, 6)).astype(np.float32))
    # ONNX Runtime quantizes neither LSTM statically nor, by default, the last Gemm (kept FP32 as an edge).
    made["lstm_opset13_unk"] = Foreign(path, data, "cpf", "output/BiasAdd", batched=True, dims=(10, 6),
                                       int8_refusal="nothing to quantize: no Q/DQ node was placed")

    # Particle-Transformer-like encoder at opset 15, batch N, a fixed number of particles.
    torch.manual_seed(3)
    path = folder / "transformer_opset15.onnx"
    _export(_transformer(), torch.randn(4, 12, 7), path, 15, "pf_features", "softmax", "N")
    data = folder / "transformer_opset15.npz"
    np.savez(data, pf_features=rng.standard_normal((200, 12, 7)).astype(np.float32))
    made["transformer_opset15_N"] = Foreign(path, data, "pf_features", "softmax", batched=True, dims=(12, 7))
    return made


def _cli(*args: str | Path) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.output)
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("key", ["ir3_opset9_N", "ir3_fixed_batch_1", "conv_opset11_batch_size", "lstm_opset13_unk",
                                 "transformer_opset15_N"])
def test_a_foreign_model_goes_through_every_stage(foreign: dict[str, Foreign], tmp_path: Path, key: str) -> None:
    model = foreign[key]
    shown = _cli("inspect", model.path)
    assert ("batch axis: the leading dim" in shown) is model.batched, shown

    golden = tmp_path / "golden.npz"
    _cli("reference", model.path, "--data", model.data, "-o", golden, "--max-samples", "100")
    for variant in ("fp32", "fp16", "int8-cpu"):
        out = tmp_path / f"{variant}.onnx"
        result = CliRunner().invoke(main, ["optimize", str(model.path), "--variant", variant, "-o", str(out),
                                           "--calibration", str(model.data)])
        if variant == "int8-cpu" and model.int8_refusal:
            assert result.exit_code == 2 and model.int8_refusal in result.output
            assert result.output.count("\n") <= 2  # one clear line, no traceback
            continue
        assert result.exit_code == 0, (variant, result.output)
        written = onnx.load(str(out), load_external_data=False)
        assert [o.name for o in written.graph.output] == [model.output_name]  # names kept verbatim
        assert written.ir_version >= 4
        if variant == "int8-cpu":
            assert written.opset_import[0].version >= 13  # raised for per-channel Q/DQ
            import json

            assert json.loads(out.with_suffix(".json").read_text())["opset"] >= 13  # and the sidecar says so
        _cli("validate", out, "--golden", golden)

    # tune: a confirmed mix written with the names kept, or the answer FP32 in one line (nothing written),
    # or a chosen mix its confirmation does not pass (exit 1 or 3, one line).
    tuned = tmp_path / "tuned.onnx"
    result = CliRunner().invoke(main, ["tune", str(model.path), "--variant", "int8-cpu", "-o", str(tuned),
                                       "--golden", str(golden), "--calibration", str(model.data)])
    lines = [line for line in result.output.splitlines() if line.startswith(("error", "answer"))]
    if model.int8_refusal:  # the LSTM is kept FP32 as an edge layer: nothing to decide, said in one line
        assert result.exit_code == 2 and "nothing to keep or lower" in result.output.splitlines()[-1]
    elif result.exit_code == 0 and tuned.exists():
        assert [o.name for o in onnx.load(str(tuned)).graph.output] == [model.output_name], result.output
    elif result.exit_code == 0:
        assert lines[-1].startswith("answer: FP32: no mix of int8-cpu"), result.output
    else:
        assert result.exit_code in (1, 3) and lines[-1].startswith("error: tune int8-cpu: chosen on the tuning half")

    repo = tmp_path / "repo"
    _cli("triton", "add", repo, model.path, "--name", "served", "--warmup", golden)
    config = read_model_config(repo / "served" / "config.pbtxt")
    assert [t.name for t in config.output] == [model.output_name]
    assert tuple(config.input[0].dims) == model.dims
    if model.batched:  # spec-less: the batch axis named N / batch_size / unk__7 is found
        assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    else:  # fixed batch 1: published as it is, and its warm-up is one sample
        assert config.max_batch_size == 0
    entry = config.model_warmup[0].inputs[model.input_name]
    warm = repo / "served" / "warmup" / entry.input_data_file
    assert warm.stat().st_size == 4 * int(np.prod(entry.dims))
    _cli("triton", "check", repo)


def test_tensor_names_are_kept_and_file_names_escaped(tmp_path: Path) -> None:
    from hepdeploy.fsutil import file_name_for
    from hepdeploy.spec import TensorSpec, infer_batch_axis

    assert TensorSpec(name="ID_pred/Softmax:0", shape=["N", 5]).name == "ID_pred/Softmax:0"
    assert file_name_for("ID_pred/Softmax:0") == "ID_pred%2FSoftmax%3A0"
    assert file_name_for("input_1") == "input_1"
    assert "/" not in file_name_for("../../etc/passwd") and file_name_for("..") == "%2E%2E"
    with pytest.raises(Exception, match="control characters"):
        TensorSpec(name="a\nb", shape=[1])
    assert infer_batch_axis([TensorSpec(name="x", shape=["unk__12", 3]), TensorSpec(name="y", shape=["unk__13"])])[0]
    assert infer_batch_axis([TensorSpec(name="x", shape=["n", 3]), TensorSpec(name="y", shape=["n"])])[0]
    assert not infer_batch_axis([TensorSpec(name="x", shape=[1, 3]), TensorSpec(name="y", shape=[1])])[0]
    # -1 leading dims (hepdeploy names them dim<position>_0) are one batch axis too.
    batched, why = infer_batch_axis([TensorSpec(name="x", shape=["dim0_0", 3]), TensorSpec(name="y", shape=["dim1_0"])])
    assert batched and "unnamed" in why
    # A very long name still makes one file name that a file system takes, and two names never meet.
    long_a, long_b = file_name_for("a/" * 400), file_name_for("a/" * 399 + "b")
    assert len(long_a.encode()) <= 255 and long_a != long_b


@pytest.mark.slow
def test_fp16_of_a_transformer_that_crashes_onnx_runtime_is_made_with_the_crashing_layer_kept(tmp_path: Path) -> None:
    # Exported with a dynamic particle count, the TorchScript exporter bakes the sequence length into the
    # attention's Reshape nodes; ONNX Runtime segfaults creating a session on its FP16 (AutoCast) graph here.
    # The crash is contained in a child process, and the layers whose FP16 conversion causes it are found by
    # bisection and kept in FP32: the variant is made, and it passes.
    torch.manual_seed(3)
    path = tmp_path / "transformer_dynamic.onnx"
    torch.onnx.export(_transformer(), (torch.randn(4, 12, 7),), str(path), opset_version=15,
                      input_names=["pf_features"], output_names=["softmax"],
                      dynamic_axes={"pf_features": {0: "N", 1: "n_pf"}, "softmax": {0: "N"}}, dynamo=False)
    data = tmp_path / "data.npz"
    np.savez(data, pf_features=np.random.default_rng(0).standard_normal((64, 12, 7)).astype(np.float32))
    fp16 = tmp_path / "fp16.onnx"
    result = CliRunner().invoke(main, ["optimize", str(path), "--variant", "fp16", "-o", str(fp16),
                                       "--calibration", str(data)])
    assert result.exit_code == 0, result.output
    import json

    steps = json.loads(fp16.with_suffix(".json").read_text())["steps"]
    made = next(step for step in steps if step["name"] == "fp16")["parameters"]
    import onnxruntime

    if onnxruntime.__version__.startswith("1.31."):  # the version it was found to crash in
        assert "kept_fp32_after_crash" in made, made
    if "kept_fp32_after_crash" in made:
        assert made["kept_fp32_after_crash"] and "ONNX Runtime crashed" in made["crash"]
        kept = set(made["kept_fp32_after_crash"])
        assert len(kept) < sum(1 for n in onnx.load(str(path)).graph.node if n.op_type in ("MatMul", "Gemm"))
    golden = tmp_path / "golden.npz"
    _cli("reference", path, "--data", data, "-o", golden)
    _cli("validate", fp16, "--golden", golden)  # exits 0 only on PASS
