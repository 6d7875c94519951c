"""The conversion self-check: the new ONNX graph must reproduce its source.

Runs the converted model in ONNX Runtime (CPU) next to the source model on seeded sample
inputs at every ``self_check_sizes`` combination (batch 1 and 64 or the spec's max, two
values of every other dynamic dimension) and compares with the conversion tolerance
(atol 1e-5 + rtol 1e-4).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hepdeploy.backend.base import Runner
from hepdeploy.backend.onnxrt import OnnxRuntimeRunner
from hepdeploy.compare import (
    CONVERSION_ATOL,
    CONVERSION_RTOL,
    OutputComparison,
    Tolerances,
    compare_outputs,
)
from hepdeploy.errors import DataError, DisagreementError, HepDeployError, first_line
from hepdeploy.graph_bounds import graph_dim_bounds, minimums
from hepdeploy.sampling import sample_inputs, self_check_sizes
from hepdeploy.spec import ModelSpec

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("hepdeploy.convert.selfcheck")


@dataclass
class SelfCheckReport:
    """What the self-check compared and how far apart the two models were."""

    sizes: list[dict[str, int]]
    seed: int
    atol: float
    rtol: float
    passed: bool
    max_abs_error: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)

    def as_parameters(self) -> dict[str, Any]:
        return {
            "sizes": self.sizes, "seed": self.seed, "atol": self.atol, "rtol": self.rtol, "passed": self.passed,
            "max_abs_error": self.max_abs_error, "providers": self.providers,
        }


def self_check(
    candidate: onnx.ModelProto | bytes | str,
    source: Runner,
    spec: ModelSpec,
    seed: int | None = None,
    sizes: list[dict[str, int]] | None = None,
    raise_on_failure: bool = True,
) -> SelfCheckReport:
    """Compare ``candidate`` (in ONNX Runtime CPU) with ``source``; DisagreementError when they differ."""
    seed = spec.data.seed if seed is None else seed
    if sizes is None:
        import onnx

        graph = onnx.load_from_string(candidate) if isinstance(candidate, bytes) else candidate
        sizes = self_check_sizes(spec, minimums(graph_dim_bounds(graph)))
    runner = OnnxRuntimeRunner(candidate, providers=["CPUExecutionProvider"], name="converted ONNX")
    tolerance = Tolerances(CONVERSION_ATOL, CONVERSION_RTOL)
    report = SelfCheckReport(sizes=sizes, seed=seed, atol=tolerance.atol, rtol=tolerance.rtol, passed=True,
                             providers=runner.providers_used)
    for k, size in enumerate(sizes):
        inputs = sample_inputs(spec.inputs, size, seed + k)
        try:
            reference = source.run(inputs)
        except HepDeployError:
            raise
        except Exception as error:
            first = first_line(error)
            raise DataError(f"{spec.name}: the source model fails on spec-shaped inputs {size}: "
                            f"{type(error).__name__}: {first}") from error
        try:
            produced = runner.run(inputs)
        except DataError as error:
            report.passed = False
            report.failures.append(f"at sizes {size}: {error}")
            continue
        results: list[OutputComparison] = compare_outputs(produced, reference, tolerance)
        for result in results:
            previous = report.max_abs_error.get(result.name, 0.0)
            report.max_abs_error[result.name] = max(previous, float(result.max_abs_error))
            if not result.passed:
                report.passed = False
                report.failures.append(f"at sizes {size}: {result.summary()}")
    if not report.passed and raise_on_failure:
        raise DisagreementError(
            f"{spec.name}: the converted model disagrees with its source: {report.failures[0]}"
            + (f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else "")
        )
    log.info("%s: self-check ok at %s (max |d| %s)", spec.name, sizes,
             {k: f"{v:.2g}" for k, v in report.max_abs_error.items()})
    return report
