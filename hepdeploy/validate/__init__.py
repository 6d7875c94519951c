"""hepdeploy.validate: does an exported or optimized model still compute what the source did?

Entry points (the CLI and ``hepdeploy build`` call these), each judged as a
:class:`~hepdeploy.judgement.Judgement` says (precision, tolerances, policy, chunk size):

- ``make_reference`` / ``save_reference`` / ``load_reference``: the golden set (``reference.py``).
- ``validate_runner(runner, reference, ...)``: any Runner (ONNX Runtime, Triton client,
  TensorRT engine ...) against a reference set -> VariantReport (``candidate.py``).
- ``validate_candidate(path, reference, ...)``: an artifact file; reads the variant's
  precision from its sidecar, can localise the first divergent node (ONNX) against the FP32
  ancestor (``ancestry.py``).
- ``validate_served(target, model, golden, ...)``: what a live Triton server returns (``served.py``).
- ``validate_served_ensemble(target, model, data, ...)``: a preprocessing ensemble fed raw ROOT
  events, against the same events preprocessed inline and run in ONNX Runtime (``served.py``).
- ``write_reports(reports, folder, decisions=None)``: JSON, JUnit XML, Markdown, HTML with plots (``report.py``);
  ``decisions`` (a build's ``ModelDecisions``) make the headline the model's outcome.

How the numerical and physics outcomes make a verdict under a policy: ``verdict.py``.
"""
from __future__ import annotations

from hepdeploy.validate.candidate import Localization, validate_candidate, validate_runner
from hepdeploy.validate.reference import (
    ReferenceSet,
    load_reference,
    make_reference,
    read_onnx_test_data,
    save_reference,
    write_onnx_test_data,
)
from hepdeploy.validate.report import VariantReport, console_table, write_reports
from hepdeploy.validate.served import validate_served, validate_served_ensemble

__all__ = [
    "Localization", "ReferenceSet", "VariantReport", "console_table", "load_reference", "make_reference",
    "read_onnx_test_data", "save_reference", "validate_candidate", "validate_runner", "validate_served",
    "validate_served_ensemble", "write_onnx_test_data", "write_reports",
]
