"""A spec whose source is a zoo network converts like any other, and records the zoo as its source."""
from __future__ import annotations

from pathlib import Path

import pytest

from hepdeploy.artifacts import read_artifact
from hepdeploy.convert import convert_zoo
from hepdeploy.model_zoo import merge_zoo_spec
from hepdeploy.spec import spec_from_dict


def _zoo_spec(**extra: object) -> object:
    return spec_from_dict({
        "name": "tagger",
        "source": {"framework": "zoo", "zoo": "jet_mlp", "zoo_flavour": "torch"},
        "inputs": [{"name": "input_1", "shape": ["batch", 16]}],
        "outputs": [{"name": "output", "shape": ["batch", 5]}],
        **extra,
    })


@pytest.mark.slow
def test_zoo_source_converts_and_is_recorded(tmp_path: Path, zoo_cache_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEPDEPLOY_CACHE", str(zoo_cache_dir))
    artifact = convert_zoo(_zoo_spec(), tmp_path / "tagger.onnx", budget="reduced", work_dir=tmp_path / "src")
    sidecar = read_artifact(artifact.path).sidecar
    assert sidecar.model_name == "tagger"
    assert sidecar.source.model_extra["zoo"] == "jet_mlp"
    assert sidecar.source.model_extra["zoo_flavour"] == "torch"
    assert sidecar.source.framework == "torch"
    assert [t.name for t in sidecar.inputs] == ["input_1"]
    assert (tmp_path / "src" / "jet_mlp_torch.pt").is_file()


def test_user_fields_win_over_the_zoo_spec(tmp_path: Path) -> None:
    from hepdeploy.model_zoo import get_network
    from hepdeploy.model_zoo.export import spec_dict

    network = get_network("jet_mlp")
    zoo = spec_from_dict(spec_dict(network, "keras", "jet_mlp", "jet_mlp.keras"), base_dir=tmp_path / "zoo")
    user = _zoo_spec(dims={"batch": {"min": 1, "opt": 8, "max": 32}}, triton={"max_batch_size": 32})
    merged = merge_zoo_spec(user, zoo)
    assert merged.name == "tagger"
    assert merged.source.framework == "keras"  # the concrete source comes from the zoo
    assert merged.dims["batch"].max == 32
    assert merged.triton.max_batch_size == 32
    assert merged.data.reference == zoo.data.reference  # not set by the user: the zoo's
    assert Path(merged.data.reference).is_relative_to(tmp_path / "zoo")

    # Data the user's spec names stays where the user's spec put it (resolved when that spec was loaded).
    with_data = spec_from_dict({**user.model_dump(exclude_defaults=True), "name": "tagger",
                                "data": {"calibration": "mine.npz"}}, base_dir=tmp_path / "user")
    merged = merge_zoo_spec(with_data, zoo)
    assert merged.data.calibration == str(tmp_path / "user" / "mine.npz")
    assert merged.data.reference is None  # the user's data block wins whole
