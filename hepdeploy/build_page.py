"""One page for a whole build: ``OUT/index.html``, and the same content as ``OUT/index.md``.

Made only from files a build already wrote: ``build-summary.json`` (every step, the twin's measured
throughput ratios), each model's ``reports/report.json`` (verdicts, the deciding check, the use of the
allowance), the tune reports (``reports/tune-<variant>/tune.json``: the mixes searched) and the model
repository's manifests (what was published, in which role). So ``hepdeploy report OUT`` rebuilds the
page of a build made elsewhere; paths the summary recorded under another ``out_dir`` are read under
``OUT``.

Per model, a chart puts every variant (and every mix ``tune`` judged) at its speed against FP32 and its
physics harm: the worst check's use of its allowance (1 = at the allowance). Speeds are the twin step's
measurements where there are some, else the tune cost model's; a variant with neither is named under the
chart.
"""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hepdeploy.errors import BadInputError
from hepdeploy.fsutil import atomic_path, atomic_write_text
from hepdeploy.triton.layout import Manifest, typed_manifest, version_folders
from hepdeploy.validate.report import md_cell, safe_name

PAGE_NAME = "index.html"
MARKDOWN_NAME = "index.md"
CHART_FOLDER = "page"  # the charts, next to the page
SUMMARY_NAME = "build-summary.json"
TUNED = " (tuned)"


@dataclass
class VariantRow:
    """One variant of one model (a tuned answer is a row of its own) as the page shows it."""

    variant: str
    status: str = "-"  # of the step that decided it: ok | rejected | failed | skipped
    outcome: str = "-"  # PASS | FAIL | UNDECIDED, or '-' when it was never validated
    why: str = ""
    deciding: str = "-"
    roles: list[str] = field(default_factory=list)  # "cpu_twin jet_mlp_cpu v1"
    speed: float | None = None  # throughput against FP32
    speed_source: str = ""  # measured | modelled
    harm: float | None = None  # the worst check's use of its allowance
    size_bytes: int | None = None
    file: Path | None = None
    report: str | None = None  # the report section that judged it

    @property
    def decision(self) -> str:
        if self.roles:
            return "published"
        return {"ok": "passed, not published", "rejected": "rejected", "failed": "failed"}.get(self.status, self.status)


@dataclass
class TunePoint:
    """One mix ``tune`` judged on its tuning half: modelled speed and harm."""

    variant: str
    speed: float
    harm: float
    outcome: str
    chosen: bool


@dataclass
class ModelSection:
    name: str
    folder: Path
    headline: str = "-"  # PASS | FAIL | UNDECIDED
    line: str = ""
    rows: list[VariantRow] = field(default_factory=list)
    tune_points: list[TunePoint] = field(default_factory=list)
    report: Path | None = None
    chart: Path | None = None
    failed_steps: list[str] = field(default_factory=list)


@dataclass
class PublishedModel:
    """One model folder of the repository, from its newest manifest."""

    name: str
    versions: list[int]
    manifest: Manifest | None


@dataclass
class BuildPage:
    out_dir: Path
    summary: dict[str, Any]
    models: list[ModelSection]
    published: list[PublishedModel]


# ---------------------------------------------------------------------------- reading


def read_build_page(out_dir: Path) -> BuildPage:
    """Everything the page shows, read from the files of the build in ``out_dir``."""
    summary_path = out_dir / SUMMARY_NAME
    if not summary_path.is_file():
        raise BadInputError(f"{out_dir}: no {SUMMARY_NAME} here: not a hepdeploy build folder")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"{summary_path}: unreadable ({type(error).__name__})") from error
    where = _Rebase(Path(summary.get("out_dir") or out_dir), out_dir)
    repository = where(summary["repository"]) if summary.get("repository") else None
    published = _published(repository) if repository is not None and repository.is_dir() else []
    roles: dict[tuple[str, str], list[str]] = {}
    for entry in published:
        if entry.manifest is not None and not entry.manifest.source.path.startswith("<"):
            source = Path(entry.manifest.source.path)
            label = f"{entry.manifest.role} {entry.name} v{entry.manifest.version}"
            roles.setdefault((source.parent.name, source.name), []).append(label)
    models = [_model_section(model, where, roles) for model in summary.get("models", [])]
    return BuildPage(out_dir, summary, models, published)


class _Rebase:
    """A path the summary recorded, read under the folder the build is in now."""

    def __init__(self, recorded: Path, here: Path) -> None:
        self.recorded, self.here = recorded, here

    def __call__(self, path: str) -> Path:
        try:
            return self.here / Path(path).relative_to(self.recorded)
        except ValueError:
            return Path(path)


def _published(repository: Path) -> list[PublishedModel]:
    found = []
    for folder in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = version_folders(folder)
        manifest = typed_manifest(folder / str(versions[-1])) if versions else None
        found.append(PublishedModel(folder.name, versions, manifest))
    return found


def _model_section(model: dict[str, Any], where: _Rebase, roles: dict[tuple[str, str], list[str]]) -> ModelSection:
    folder = where(model["folder"])
    section = ModelSection(model["name"], folder)
    rows: dict[str, VariantRow] = {}
    ratios: dict[str, float] = {}
    for step in model.get("steps", []):
        if step["status"] == "failed":
            section.failed_steps.append(f"{step['step']}: {step['reason']}")
        if step["step"] == "twin":
            ratios = step["details"].get("throughput_vs_fp32") or {}
        elif step.get("variant"):
            _apply_step(rows, step, where)
    reports = _read_json(folder / "reports" / "report.json") or {}
    judged = {v["variant"]: v for v in reports.get("variants", [])}
    for row in rows.values():
        _fill_row(row, judged, ratios, roles)
    for variant in list(rows):
        section.tune_points += _tune_points(folder / "reports" / f"tune-{variant}" / "tune.json", variant, rows)
    section.rows = list(rows.values())
    headline = reports.get("headline") or {}
    section.headline, section.line = headline.get("outcome", "-"), headline.get("line", "")
    if not headline and section.failed_steps:
        section.headline, section.line = "FAIL", "failed before its validation report was written"
    report = folder / "reports" / "report.html"
    section.report = report if report.is_file() else None
    return section


def _apply_step(rows: dict[str, VariantRow], step: dict[str, Any], where: _Rebase) -> None:
    """What one variant step says about its row (a tune step with an answer makes the tuned row)."""
    variant, name, details = step["variant"], step["step"], step.get("details", {})
    outputs = [where(p) for p in step.get("outputs", [])]
    if name.startswith("tune:") and details.get("confirmation_verdict") is not None:
        tuned = rows.setdefault(variant + TUNED, VariantRow(variant + TUNED, report=f"{variant} (tuned, confirmation half)"))
        tuned.status, tuned.why = step["status"], step["reason"]
        tuned.file = outputs[0] if outputs else None
        if details.get("speed") is not None:
            tuned.speed, tuned.speed_source = float(details["speed"]), "measured"
        elif details.get("modelled_cost"):
            tuned.speed, tuned.speed_source = 1.0 / float(details["modelled_cost"]), "modelled"
        return
    if not name.startswith(("optimize:", "validate:", "tune:")) and step["status"] == "ok":
        return  # a check that let the variant through (the TensorRT precheck)
    row = rows.setdefault(variant, VariantRow(variant))
    if name.startswith("optimize:"):
        row.status, row.why = step["status"], step["reason"]
        row.file = next((p for p in outputs if p.suffix != ".json"), None)
    elif name.startswith("tune:"):
        row.why += f"; tune: {step['reason']}"
    else:
        row.status, row.why = step["status"], step["reason"]


def _fill_row(row: VariantRow, judged: dict[str, dict[str, Any]], ratios: dict[str, float],
              roles: dict[tuple[str, str], list[str]]) -> None:
    report = judged.get(row.report or row.variant)
    if report is not None:
        row.report = report["variant"]
        row.outcome, row.deciding = report.get("outcome", "-"), report.get("deciding") or "-"
        row.harm = report.get("allowance_use")
    else:
        row.report = None
    made = row.file is not None and row.file.is_file()
    if row.variant == "fp32" and made:  # the measure of every other speed
        row.speed, row.speed_source = 1.0, "measured"
    elif row.variant in ratios:
        row.speed, row.speed_source = float(ratios[row.variant]), "measured"
    if made:
        row.size_bytes = row.file.stat().st_size
        row.roles = roles.get((row.file.parent.name, row.file.name), [])


def _tune_points(path: Path, variant: str, rows: dict[str, VariantRow]) -> list[TunePoint]:
    """The mixes ``tune`` judged on its tuning half; the fully lowered one gives the plain variant its
    modelled speed when none was measured."""
    tune = _read_json(path)
    if tune is None:
        return []
    best = tune.get("best") or {}
    points = []
    for evaluation in tune.get("evaluations", []):
        cost, harm = evaluation.get("modelled_cost"), evaluation.get("harm")
        if evaluation.get("phase") != "search" or not cost or harm is None:
            continue
        points.append(TunePoint(variant, 1.0 / cost, harm, evaluation.get("outcome", "-"),
                                chosen=evaluation.get("kept") == best.get("kept") and bool(best)))
        plain = rows.get(variant)
        if not evaluation.get("kept") and plain is not None and plain.speed is None:
            plain.speed, plain.speed_source = 1.0 / cost, "modelled"
    return points


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------- writing


def write_build_page(out_dir: Path) -> Path:
    """Write ``index.html``, ``index.md`` and the charts (under ``page/``) into ``out_dir``; the page's path."""
    page = read_build_page(out_dir)
    for section in page.models:
        section.chart = speed_harm_chart(section, out_dir / CHART_FOLDER / f"{safe_name(section.name)}-speed-harm.png")
    atomic_write_text(out_dir / MARKDOWN_NAME, page_markdown(page))
    return atomic_write_text(out_dir / PAGE_NAME, page_html(page))


def speed_harm_chart(section: ModelSection, path: Path) -> Path | None:
    """Speed against FP32 (x) and the worst use of an allowance (y) of every variant with both, and of every
    mix ``tune`` judged; None when no variant has both."""
    placed = [r for r in section.rows if r.speed is not None and r.harm is not None and math.isfinite(r.harm)]
    if not placed and not section.tune_points:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for variant in sorted({p.variant for p in section.tune_points}):
        mine = [p for p in section.tune_points if p.variant == variant]
        axis.scatter([p.speed for p in mine], [p.harm for p in mine], s=18, facecolors="none",
                     edgecolors="grey", label=f"tune {variant}: mixes (modelled speed)", zorder=2)
    for k, row in enumerate(placed):
        marker = "o" if row.speed_source == "measured" else "s"
        axis.scatter([row.speed], [row.harm], s=60, marker=marker, color=f"C{k % 10}", zorder=3,
                     label=f"{row.variant} ({row.outcome}, {row.speed_source})")
    axis.axhline(1.0, color="red", lw=0.8, ls=":")
    axis.axvline(1.0, color="grey", lw=0.8, ls=":")
    axis.set_xlabel("throughput against FP32 (measured: circles; modelled: squares)")
    axis.set_ylabel("worst use of an allowance (1 = at it)")
    axis.set_title(f"{section.name}: speed against physics harm")
    axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)
    return path


_COLUMNS = ("model", "variant", "verdict", "deciding check", "decision", "published as", "speed vs FP32",
            "size", "report")


def _cells(page: BuildPage, section: ModelSection, row: VariantRow) -> list[str]:
    """The table's cells of one row, as text (the report cell: its relative link)."""
    speed = "-" if row.speed is None else f"{row.speed:.2f}x ({row.speed_source})"
    size = "-" if row.size_bytes is None else f"{row.size_bytes / 1024:.1f} KiB"
    return [section.name, row.variant, row.outcome, row.deciding, row.decision, ", ".join(row.roles) or "-", speed,
            size, _report_link(page, section, row)]


def _report_link(page: BuildPage, section: ModelSection, row: VariantRow) -> str:
    if section.report is None:
        return ""
    link = Path(os.path.relpath(section.report, page.out_dir)).as_posix()
    return link + (f"#{safe_name(row.report)}" if row.report else "")


def _unchart(page: BuildPage, section: ModelSection) -> str:
    """Which variants the chart could not place, and why."""
    missing = [r.variant for r in section.rows if r.speed is None and r.outcome != "-"]
    return f"No speed measured or modelled for {', '.join(missing)}." if missing else ""


def page_html(page: BuildPage) -> str:
    esc = html.escape
    passed = page.summary.get("passed")
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>hepdeploy build: {'passed' if passed else 'FAILED'}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#eee}"
             ".PASS{color:#070;font-weight:bold}.FAIL,.failed{color:#b00;font-weight:bold}.UNDECIDED{color:#a60}"
             "img{max-width:100%}</style></head><body>",
             f"<h1>hepdeploy build: <span class='{'PASS' if passed else 'FAIL'}'>"
             f"{'passed' if passed else 'FAILED'}</span></h1>", f"<p>{esc(_build_line(page))}</p>",
             "<h2>Variants</h2>", "<table id='summary'><tr>" + "".join(f"<th>{c}</th>" for c in _COLUMNS) + "</tr>"]
    for section in page.models:
        for row in section.rows:
            cells = _cells(page, section, row)
            link = cells.pop()
            verdict = cells[2]  # coloured by its outcome (the style's PASS, FAIL, UNDECIDED)
            parts.append("<tr>" + "".join(f"<td class='{esc(verdict)}'>{esc(c)}</td>" if i == 2 else f"<td>{esc(c)}</td>"
                                          for i, c in enumerate(cells))
                         + (f"<td><a href='{esc(link)}'>report</a></td>" if link else "<td>-</td>") + "</tr>")
    parts.append("</table>")
    for section in page.models:
        parts += _html_model(page, section)
    parts += _html_repository(page)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _build_line(page: BuildPage) -> str:
    summary = page.summary
    tools = ", ".join(f"{k} {v}" for k, v in (summary.get("versions") or {}).items())
    rejected = ", ".join(summary.get("rejected_variants") or []) or "none"
    finished = summary.get("finished") or "not (interrupted, or still running)"
    return f"Started {summary.get('started')}, finished {finished}; rejected by validation: {rejected}. Tools: {tools}."


def _html_model(page: BuildPage, section: ModelSection) -> list[str]:
    esc = html.escape
    parts = [f"<h2 id='{esc(safe_name(section.name))}'>{esc(section.name)}: "
             f"<span class='{esc(section.headline)}'>{esc(section.headline)}</span></h2>",
             f"<p>{esc(section.line)}</p>"]
    if section.report is not None:
        parts.append(f"<p><a href='{esc(_report_link(page, section, VariantRow('')).split('#')[0])}'>"
                     "the model's validation report</a></p>")
    parts += [f"<p class='failed'>{esc(line)}</p>" for line in section.failed_steps]
    if section.chart is not None:
        chart = Path(os.path.relpath(section.chart, page.out_dir)).as_posix()
        parts.append(f"<p><img src='{esc(chart)}' alt='{esc(section.name)}: speed against physics harm'></p>")
    if _unchart(page, section):
        parts.append(f"<p>{esc(_unchart(page, section))}</p>")
    return parts


def _repository_rows(page: BuildPage) -> list[list[str]]:
    rows = []
    for entry in page.published:
        m = entry.manifest
        if m is None:
            rows.append([entry.name, ", ".join(map(str, entry.versions)) or "-", "-", "not published by hepdeploy",
                         "-", "-", "-"])
            continue
        verdict = (m.verdict or {}).get("outcome") or "-"
        variant = (m.source.variant or {}).get("name") or Path(m.source.path).name
        rows.append([entry.name, ", ".join(map(str, entry.versions)), m.platform, m.role, m.twin_of or "-",
                     variant, verdict])
    return rows


_REPOSITORY_COLUMNS = ("name", "versions", "platform", "role", "twin of", "source", "verdict")


def _html_repository(page: BuildPage) -> list[str]:
    esc = html.escape
    where = page.summary.get("repository")
    if not where:
        return ["<h2>Repository</h2>", "<p>Not published (--no-publish).</p>"]
    parts = ["<h2>Repository</h2>", f"<p><code>{esc(str(where))}</code></p>",
             "<table id='repository'><tr>" + "".join(f"<th>{c}</th>" for c in _REPOSITORY_COLUMNS) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in _repository_rows(page)]
    parts.append("</table>")
    return parts


def page_markdown(page: BuildPage) -> str:
    """The page as Markdown (for ``$GITHUB_STEP_SUMMARY``)."""
    passed = page.summary.get("passed")
    lines = [f"# hepdeploy build: {'✅ passed' if passed else '❌ FAILED'}", "", _build_line(page), "",
             "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for section in page.models:
        for row in section.rows:
            cells = _cells(page, section, row)
            link = cells.pop()
            lines.append("| " + " | ".join(md_cell(c) for c in cells) + f" | {f'[report]({link})' if link else '-'} |")
    lines.append("")
    for section in page.models:
        lines += [f"## {section.name}: {section.headline}", "", section.line, ""]
        lines += [f"- failed: {md_cell(line)}" for line in section.failed_steps] + ([""] if section.failed_steps else [])
        if section.chart is not None:
            chart = Path(os.path.relpath(section.chart, page.out_dir)).as_posix()
            lines += [f"![{section.name}: speed against physics harm]({chart})", ""]
        if _unchart(page, section):
            lines += [_unchart(page, section), ""]
    lines += ["## Repository", ""]
    if page.summary.get("repository"):
        lines += ["| " + " | ".join(_REPOSITORY_COLUMNS) + " |", "|" + "---|" * len(_REPOSITORY_COLUMNS)]
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in _repository_rows(page)]
    else:
        lines.append("Not published (--no-publish).")
    return "\n".join(lines) + "\n"
