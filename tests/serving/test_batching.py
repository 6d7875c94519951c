"""The queue model and the search, on simulated t(b) curves whose best configuration is known."""
from __future__ import annotations

import pytest

from hepdeploy.errors import BadInputError
from hepdeploy.serving.batching import (
    BatchingConfig,
    SearchGrid,
    batch_candidates,
    choose_batching,
    predict_latency,
)

ROWS = 64  # rows per request


def linear(b: int) -> float:
    """High per-call overhead (2 ms), cheap rows: batching pays."""
    return 2e-3 + 2e-6 * b


def step(b: int) -> float:
    """4 ms per call, 1 µs per row, and 20 ms more once a batch exceeds 512 rows."""
    return 4e-3 + 1e-6 * b + (20e-3 if b > 512 else 0.0)


def test_at_very_low_load_a_request_takes_t_of_its_rows_and_never_queues() -> None:
    p50, p99, utilisation = predict_latency(linear, 1.0, ROWS, BatchingConfig(1024), requests=2000)
    assert p50 == pytest.approx(linear(ROWS), rel=1e-9)
    assert p99 < linear(2 * ROWS)  # nobody ever waited for another request
    assert utilisation < 0.01


def test_batching_pays_when_each_call_costs_much_more_than_its_rows() -> None:
    rate, budget = 1000.0, 0.02
    # Without batching one instance is busy 2.1 ms per request: 1000 requests/s would need 2.1 instances.
    with pytest.raises(BadInputError, match="no batching config"):
        choose_batching(linear, rate, budget, ROWS, max_rows_cap=ROWS, instances_max=2)
    choice = choose_batching(linear, rate, budget, ROWS, max_rows_cap=4096, instances_max=4)
    assert choice.instances == 1 and choice.max_batch_size > ROWS
    assert choice.predicted_p99_s <= budget
    assert choice.throughput_per_s > rate
    assert set(choice.why) >= {"max_batch_size", "preferred_batch_size", "max_queue_delay_microseconds", "instances"}


def test_a_step_in_t_of_b_gives_a_queue_delay_inside_the_grid() -> None:
    # One instance carries at most 8 requests / 4.5 ms = 1778 requests/s below the step, so 2500/s needs two.
    # With two instances and no delay, each idle instance takes one or two requests and pays 4 ms for them;
    # waiting a little fills batches; waiting long costs the wait itself.
    rate, budget = 2500.0, 0.02
    choice = choose_batching(step, rate, budget, ROWS, max_rows_cap=1024, instances_max=3)
    grid = SearchGrid()
    delays = sorted({round(budget * f * 1e6) for f in grid.delay_fractions})
    assert choice.instances == 2
    assert choice.max_batch_size <= 512  # never past the step
    assert delays[0] < choice.max_queue_delay_us < delays[-1]
    config = choice.config
    chosen_p99 = predict_latency(step, rate, ROWS, config)[1]
    for delay in (0, delays[-1]):
        edge = BatchingConfig(config.max_batch_size, config.preferred_batch_size, delay, config.instances)
        assert predict_latency(step, rate, ROWS, edge)[1] > chosen_p99 * 1.1


def test_a_rate_one_instance_cannot_carry_takes_two() -> None:
    # Largest batch 1024 rows: 16 requests in 3.05 ms, at most 5250 requests/s per instance.
    choice = choose_batching(linear, 7000.0, 0.05, ROWS, max_rows_cap=1024, instances_max=4)
    assert choice.instances == 2
    assert "fewer than 2 instances" in choice.why["instances"]


def test_the_search_is_deterministic_and_the_seed_is_its_only_randomness() -> None:
    first = choose_batching(linear, 1000.0, 0.02, ROWS, max_rows_cap=4096, seed=3)
    second = choose_batching(linear, 1000.0, 0.02, ROWS, max_rows_cap=4096, seed=3)
    assert first == second
    config = BatchingConfig(512, (256,), 1000, 1)
    assert predict_latency(linear, 1000.0, ROWS, config, seed=1) == predict_latency(linear, 1000.0, ROWS, config, seed=1)
    assert predict_latency(linear, 1000.0, ROWS, config, seed=1) != predict_latency(linear, 1000.0, ROWS, config, seed=2)


def test_an_impossible_budget_is_said_with_what_one_request_takes() -> None:
    with pytest.raises(BadInputError, match=r"within 1 ms .* one request alone takes t\(64\) = 2.13 ms"):
        choose_batching(linear, 100.0, 0.001, ROWS, max_rows_cap=1024, instances_max=2)


def test_candidates_are_whole_requests_and_configs_are_checked() -> None:
    assert batch_candidates(100, 1000) == [100, 200, 400, 800]
    with pytest.raises(BadInputError):
        BatchingConfig(256, (512,), 0, 1)  # Triton refuses a preferred size above the max
    with pytest.raises(BadInputError):
        predict_latency(linear, 10.0, ROWS, BatchingConfig(32))  # one request does not fit


def test_a_measured_curve_s_spread_reaches_the_predicted_tail_and_its_median_stays() -> None:
    from hepdeploy.serving.latency import LatencyCurve, LatencyPoint

    # t(b) measured with p99 twice its p50 at every size.
    curve = LatencyCurve([LatencyPoint(b, linear(b), 2 * linear(b), 1.2 * linear(b), 1000, 3, True)
                          for b in (64, 256, 1024, 4096)], "simulated", "")
    config = BatchingConfig(1024)
    p50, p99, _ = predict_latency(curve, 1.0, ROWS, config, requests=5000)
    assert p50 == pytest.approx(linear(ROWS), rel=0.05)
    assert p99 == pytest.approx(2 * linear(ROWS), rel=0.1)  # the tail of t(b) itself, nobody queued
    exact = predict_latency(curve, 1.0, ROWS, config, requests=5000, spread=False)
    assert exact[0] == exact[1] == pytest.approx(linear(ROWS))
    choice = choose_batching(curve, 1000.0, 0.02, ROWS, max_rows_cap=4096)
    assert "measured spread" in choice.why["predicted"]
    assert choice.predicted_p99_s > choose_batching(linear, 1000.0, 0.02, ROWS, max_rows_cap=4096).predicted_p99_s
