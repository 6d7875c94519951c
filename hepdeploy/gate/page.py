"""The gate's HTML page: one self-contained file (plots embedded as PNG) with the headline, the checks,
N's and N+1's ROC curves with their bootstrap bands, and the change map's plots.

Every user string (model names, paths, reasons, class names) is escaped.
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from hepdeploy.gate.outcome import CheckResult, GateResult
from hepdeploy.gate.report_text import OUTCOME_RANK, interval_text, model_label, named_message, number_text

HTML_ROWS_PER_CHECK = 500
_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;overflow-wrap:anywhere}th{background:#eee}"
    ".PASS{color:#070;font-weight:bold}.FAIL{color:#b00;font-weight:bold}.UNDECIDED{color:#a60;font-weight:bold}"
    ".INFO{color:#555}img{max-width:100%;margin:0.5em 0}summary{cursor:pointer;margin:0.5em 0}")


def gate_html(result: GateResult) -> str:
    """The page: headline and exit code, the checks table, then per check its plots and findings (folded
    unless the check failed or is undecided)."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>hepdeploy gate: {esc(model_label(result))}: {result.outcome}</title>",
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>hepdeploy gate: {esc(model_label(result))}: <span class='{result.outcome}'>{result.outcome}</span>"
             f" (exit {result.exit_code})</h1>", _models_table(result),
             "<table id='checks'><tr><th>check</th><th>outcome</th><th>why</th><th>findings</th></tr>"]
    for c in result.checks:
        parts.append(f"<tr><td><a href='#{esc(c.check)}'>{esc(c.check)}</a></td><td class='{c.outcome}'>{c.outcome}</td>"
                     f"<td>{esc(c.reason)}</td><td>{len(c.findings)}</td></tr>")
    parts.append("</table>")
    for check in result.checks:
        parts += _check_section(check)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _models_table(result: GateResult) -> str:
    esc = html.escape
    rows = ["<table id='models'><tr><th></th><th>model</th><th>version</th><th>path</th><th>sha256</th></tr>"]
    for who, model in (("N", result.baseline), ("N+1", result.candidate)):
        if model is not None:
            rows.append(f"<tr><td>{who}</td><td>{esc(model.name)}</td><td>{esc(str(model.version))}</td>"
                        f"<td><code>{esc(model.path)}</code></td><td><code>{esc(model.sha256 or '-')}</code></td></tr>")
    events = f", {result.events:,} events" if result.events is not None else ""
    allowed = "".join(f"; allowed {esc(k)}: {esc(v)}" for k, v in result.allowed.items())
    return "\n".join(rows) + f"</table><p>Seed {result.seed}{events}{allowed}.</p>"


def _check_section(check: CheckResult) -> list[str]:
    esc = html.escape
    opened = " open" if check.outcome in ("FAIL", "UNDECIDED") else ""
    parts = [f"<h2 id='{esc(check.check)}'>{esc(check.check)}: <span class='{check.outcome}'>{check.outcome}</span></h2>",
             f"<p>{esc(check.reason)}</p>"]
    parts += [f"<div><img alt='{esc(alt)}' src='data:image/png;base64,{png}'></div>" for alt, png in _plots(check)]
    if not check.findings:
        return parts
    parts += [f"<details{opened}><summary>{len(check.findings)} findings</summary>",
              "<table><tr><th>finding</th><th>metric</th><th>class</th><th>bin</th><th>N</th><th>N+1</th>"
              "<th>change</th><th>95 % interval</th><th>allowance</th><th>outcome</th></tr>"]
    ordered = sorted(check.findings, key=lambda f: OUTCOME_RANK.get(f.outcome, 4))
    for f in ordered[:HTML_ROWS_PER_CHECK]:
        cells = [named_message(f), f.metric, f.klass, f.bin, number_text(f.baseline),
                 number_text(f.candidate), number_text(f.change, "+.4g"), interval_text(f),
                 number_text(f.allowance)]
        parts.append("<tr>" + "".join(f"<td>{esc(number_text(c))}</td>" for c in cells)
                     + f"<td class='{f.outcome}'>{f.outcome}{' (improved)' if f.improved else ''}</td></tr>")
    parts.append("</table>")
    if len(ordered) > HTML_ROWS_PER_CHECK:
        parts.append(f"<p>… and {len(ordered) - HTML_ROWS_PER_CHECK:,} more findings (all of them in gate.json)</p>")
    parts.append("</details>")
    return parts


def _plots(check: CheckResult) -> list[tuple[str, str]]:
    """(alt text, base64 PNG) of a check's plots: the ROC curves of non_inferiority, the change map's histograms."""
    curves = check.details.get("curves") if check.check == "non_inferiority" else None
    per_class = check.details.get("per_class") if check.check == "change_map" else None
    if not curves and not per_class:
        return []
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figures = []
    if curves:
        figures.append(("ROC curves of N and N+1 with their 95 % bootstrap bands", _roc_figure(plt, curves)))
    if per_class:
        figures.append(("score distributions of N and N+1 per class", _change_map_figure(plt, check.details)))
    plots = []
    for alt, fig in figures:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        plots.append((alt, base64.b64encode(buffer.getvalue()).decode("ascii")))
    return plots


def _roc_figure(plt: Any, curves: Mapping[str, Mapping[str, Any]]) -> Any:
    """Per class: N solid, N+1 dashed, each with its pointwise 95 % band (signal efficiency against mistag)."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for k, (label, curve) in enumerate(curves.items()):
        colour = f"C{k % 10}"
        # JSON-able curves hold None where a value was not finite: NaN, which matplotlib leaves out.
        values = {key: np.asarray([np.nan if v is None else v for v in points], dtype=float)
                  for key, points in curve.items()}
        for who, name, style in (("ref", "N", "-"), ("cand", "N+1", "--")):
            if f"tpr_{who}" in values:
                ax.plot(values[f"tpr_{who}"], np.maximum(values[f"fpr_{who}"], 1e-6), color=colour,
                        linestyle=style, linewidth=2.0 if who == "ref" else 1.2, label=f"{label} {name}")
            if "band_fpr" in values and f"band_{who}_low" in values:
                ax.fill_betweenx(values["band_fpr"], values[f"band_{who}_low"], values[f"band_{who}_high"],
                                 color=colour, alpha=0.25 if who == "ref" else 0.12, linewidth=0)
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 1.0)
    ax.set_xlabel("signal efficiency")
    ax.set_ylabel("background efficiency (mistag)")
    ax.set_title("ROC: N (solid) vs N+1 (dashed), 95 % bands")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _change_map_figure(plt: Any, details: Mapping[str, Any]) -> Any:
    """One panel per class: N's and N+1's score histograms, the distance in the title; the flip fraction above."""
    per_class = details["per_class"]
    n = len(per_class)
    columns = min(n, 3)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, (label, values) in zip(axes.flat, per_class.items(), strict=False):
        edges = np.asarray(values.get("edges", []), float)
        filled: list[float] = []
        for who, name, style in (("baseline_hist", "N", "-"), ("candidate_hist", "N+1", "--")):
            counts = np.asarray(values.get(who, []), float)
            if edges.size == counts.size + 1 and counts.size:
                ax.stairs(counts, edges, linestyle=style, linewidth=1.8 if name == "N" else 1.2, label=name)
                filled += counts[counts > 0].tolist()
        if filled and max(filled) > 20 * min(filled):  # classifier scores crowd at 0 and 1: show the tails
            ax.set_yscale("log")
        ax.set_title(f"{label}: {values.get('distance_name', 'distance')} {number_text(values.get('distance'), '.3g')}",
                     fontsize=9)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    flip = details.get("flip_fraction")
    interval = details.get("flip_interval")
    band = f" [{interval[0]:.2%}, {interval[1]:.2%}]" if interval else ""
    fig.suptitle("change map: N vs N+1" if flip is None else
                 f"change map: top class flips in {number_text(flip, '.2%')}{band} of events", fontsize=10)
    fig.tight_layout()
    return fig
