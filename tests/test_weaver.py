"""weaver preprocess.json rules (hepdeploy.weaver) against a plain, value-by-value implementation of each
convention: CMSSW's deep_helpers (NaN/Inf/|x|>1e32 -> replace_inf_value, centre, scale, clip) and weaver-core
(centre, scale, clip, pad, then NaN -> 0)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hepdeploy.weaver import (
    InputGroup,
    PreprocessConfig,
    PreprocessFormatError,
    VarInfo,
    columns_from_padded,
    group_tensor,
    load_config,
    mask_owners,
)

REAL_JSON = Path(__file__).parent / "data" / "weaver" / "hlt_particlenet_ak4_v01_preprocess.json"


def plain_value(x: float, info: VarInfo, convention: str) -> float:
    """One value the way the convention's own code computes it."""
    if convention == "cmssw":
        if not math.isfinite(x) or abs(x) > 1e32:
            x = info.replace_inf_value
        return min(max((x - info.median) * info.norm_factor, info.lower_bound), info.upper_bound)
    value = (x - info.median) * info.norm_factor
    if not math.isnan(value):
        value = min(max(value, info.lower_bound), info.upper_bound)
    return 0.0 if math.isnan(value) else value


def plain_group(group: InputGroup, events: list[list[list[float]]], convention: str, length: int) -> np.ndarray:
    """events[i][c] = the particles of variable c in event i -> [events, C, length]."""
    out = np.zeros((len(events), len(group.var_names), length))
    for i, event in enumerate(events):
        for c, (values, info) in enumerate(zip(event, group.var_infos)):
            for j in range(length):
                out[i, c, j] = plain_value(values[j], info, convention) if j < len(values) else info.pad
    return out


GROUP = InputGroup("pf", ("a", "b"), (VarInfo(median=1.0, norm_factor=0.5, replace_inf_value=0.0, lower_bound=-5,
                                               upper_bound=5, pad=0.0),
                                       VarInfo(median=-2.0, norm_factor=3.0, replace_inf_value=7.0, lower_bound=-1,
                                               upper_bound=4, pad=-1.0)), 3, 6)
ODD = [1.0, math.nan, math.inf, -math.inf, 3e33, -2e32, 40.0, -40.0, 0.25]


@pytest.mark.parametrize("convention", ["cmssw", "weaver"])
def test_values_match_each_conventions_own_rule(convention: str) -> None:
    rng = np.random.default_rng(3)
    counts = [0, 1, 2, 5, 8, 6]  # an empty jet, short ones (padded to min 3), over-length ones (cut at 6)
    events = []
    for n in counts:
        a = list(rng.choice(ODD, n)) if n else []
        b = list(rng.normal(0, 3, n))
        events.append([a, b])
    columns = [np.array([v for e in events for v in e[c]], dtype=np.float32) for c in range(2)]
    got = group_tensor(GROUP, columns, np.array(counts), convention)
    assert got.shape == (6, 2, 6) and got.dtype == np.float32
    want = plain_group(GROUP, [[list(np.float32(v) for v in ch) for ch in e] for e in events], convention, 6)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_worked_example_where_the_conventions_differ() -> None:
    info = VarInfo(median=1.0, norm_factor=0.5, replace_inf_value=0.0, lower_bound=-5, upper_bound=5)
    group = InputGroup("g", ("x",), (info,))
    values = np.array([math.nan, math.inf, 3.0, 2e32], dtype=np.float32)
    cmssw = group_tensor(group, [values], None, "cmssw")[:, 0]
    weaver = group_tensor(group, [values], None, "weaver")[:, 0]
    np.testing.assert_allclose(cmssw, [-0.5, -0.5, 1.0, -0.5])
    np.testing.assert_allclose(weaver, [0.0, 5.0, 1.0, 5.0])


def test_batch_length_is_the_longest_event_clamped() -> None:
    assert GROUP.target_length(np.array([0, 1, 2])) == 3  # min_length
    assert GROUP.target_length(np.array([4, 1])) == 4
    assert GROUP.target_length(np.array([40])) == 6  # max_length
    assert GROUP.target_length(np.array([], dtype=int)) == 3


def test_padded_raw_arrays_give_back_their_columns() -> None:
    raw = np.arange(2 * 2 * 4, dtype=np.float32).reshape(2, 2, 4)
    columns, counts = columns_from_padded(raw, np.array([3, 9]))  # a count beyond the row is capped
    assert list(counts) == [3, 4]
    np.testing.assert_array_equal(columns[0], [0, 1, 2, 8, 9, 10, 11])
    np.testing.assert_array_equal(columns[1], [4, 5, 6, 12, 13, 14, 15])


def test_a_real_cmssw_preprocess_json_is_read_as_it_is() -> None:
    config = load_config(REAL_JSON)
    assert config.input_names == ("pf_points", "pf_features", "pf_mask", "sv_points", "sv_features", "sv_mask")
    pf = config.groups["pf_features"]
    assert len(pf.var_names) == 23 and (pf.min_length, pf.max_length) == (16, 50)
    assert pf.var_infos[pf.var_names.index("jet_pfcand_track_chi2")] == VarInfo(5.0, 0.2, 0.0, -5.0, 5.0, 0.0)
    assert (config.groups["sv_mask"].min_length, config.groups["sv_mask"].max_length) == (1, 5)
    owners = mask_owners(config)
    assert set(owners) == {"pf_mask", "sv_mask"}
    assert owners["pf_mask"].startswith("pf_") and owners["sv_mask"].startswith("sv_")


@pytest.mark.parametrize("broken, message", [
    ({"var_names": ["x"]}, "input_names"),
    ({"input_names": ["g"]}, "has no block"),
    ({"input_names": ["g"], "g": {"var_names": [], "var_infos": {}}}, "non-empty"),
    ({"input_names": ["g"], "g": {"var_names": ["x"], "var_infos": {}}}, "no var_infos entry for 'x'"),
    ({"input_names": ["g"], "g": {"var_names": ["x"], "var_infos": {"x": {"median": "a"}}}}, "not a number"),
    ({"input_names": ["g"], "g": {"var_names": ["x"], "var_infos": {"x": {}}, "min_length": 5, "max_length": 2}},
     "above max_length"),
])
def test_malformed_json_is_refused_in_one_line(broken: dict, message: str, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(PreprocessFormatError, match=message) as error:
        load_config(path)
    assert "\n" not in str(error.value)
    with pytest.raises(PreprocessFormatError):
        PreprocessConfig.from_dict([1, 2])
