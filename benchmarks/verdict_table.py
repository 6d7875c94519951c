"""The README's "what FP16 and INT8 cost" table, from the reports of a `hepdeploy build`.

    .venv/bin/hepdeploy build -o /tmp/build && .venv/bin/python benchmarks/verdict_table.py /tmp/build

One row per network and variant: the verdict, the largest numerical error, and the physics
metrics that moved most (all events), each with its change and 95 % interval, plus the reason of
an UNDECIDED or FAIL verdict.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _moved(checks: list[dict[str, Any]]) -> list[str]:
    """Per metric family (auc, signal_efficiency, ...), the inclusive check whose change is largest."""
    best: dict[str, dict[str, Any]] = {}
    for check in checks:
        if check["bin"] is not None or check["informational"] or check["change"] is None and check["kind"] != "level":
            continue
        family = check["metric"].split("[")[0]
        size = abs(check["change"] or 0.0) if check["kind"] != "level" else 1.0 - check["candidate"]
        if family not in best or size > best[family]["_size"]:
            best[family] = {**check, "_size": size}
    texts = []
    for check in best.values():
        interval = check["interval"]
        if check["kind"] == "level":
            text = f"{check['metric']} {check['candidate']:.4f}"
            text += f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
        else:
            text = f"{check['metric']} {check['change']:+.4f}"
            text += f" [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else ""
        texts.append(text)
    return texts


def table(build_dir: Path) -> str:
    summary = json.loads((build_dir / "build-summary.json").read_text())
    lines = ["| network | variant | verdict | max abs error | physics change [95 % interval] (the class that moved most) |",
             "|---|---|---|---:|---|"]
    for model in summary["models"]:
        report_file = build_dir / model["name"] / "reports" / "report.json"
        if not report_file.is_file():
            continue
        for variant in json.loads(report_file.read_text())["variants"]:
            errors = [o["max_abs_error"] for o in variant["numerical"]["outputs"] if o["max_abs_error"] is not None]
            verdict = variant["outcome"] if variant["passed"] else f"**{variant['outcome']}**"
            physics = "; ".join(_moved(variant["physics"]["checks"])) or "-"
            deciding = [c for c in variant["physics"]["checks"] if c["outcome"] == variant["physics"]["outcome"]
                        and c["outcome"] in ("FAIL", "UNDECIDED")]
            if deciding and not variant["passed"]:
                first = deciding[0]
                where = f" in {first['bin']}" if first["bin"] else ""
                physics += f"; {variant['physics']['outcome']} on {first['metric']}{where}" + (
                    f" ({len(deciding)} checks)" if len(deciding) > 1 else "")
            lines.append(f"| {model['name']} | {variant['variant']} | {verdict} ({variant['policy']}) | "
                         f"{max(errors, default=0.0):.3g} | {physics} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "hepdeploy-out")))
