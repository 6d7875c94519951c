"""The build's page (OUT/index.html, OUT/index.md), the reports' headlines and `hepdeploy report`, on the
shared real two-model build (tests/pipeline/conftest.py)."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from click.testing import CliRunner

from hepdeploy.cli import main
from hepdeploy.triton.layout import newest_manifest

pytestmark = pytest.mark.slow


class _Page(HTMLParser):
    """The links, images, table ids and the cells of the table with id 'summary' of an HTML page; it fails on
    an end tag that closes nothing open (a broken page)."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.links: list[str] = []
        self.tables: list[str] = []
        self.rows: list[list[str]] = []
        self.in_summary = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag not in self.VOID:
            self.open.append(tag)
        if tag == "a" and found.get("href"):
            self.links.append(found["href"])
        if tag == "img" and found.get("src"):
            self.links.append(found["src"])
        if tag == "table":
            self.tables.append(found.get("id") or "")
            self.in_summary = found.get("id") == "summary"
        if tag == "tr" and self.in_summary:
            self.rows.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()
        if tag == "table":
            self.in_summary = False

    def handle_data(self, data: str) -> None:
        if self.in_summary and self.rows and self.open and self.open[-1] in ("td", "a"):
            self.rows[-1].append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.open == [], f"unclosed: {page.open}"
    return page


def _variants(build) -> dict[str, list[str]]:  # noqa: ANN001 - conftest.TwoModelBuild
    """model -> every variant the build judged (a tuned answer as 'VARIANT (tuned)')."""
    found: dict[str, list[str]] = {}
    for model in build.summary["models"]:
        steps = model["steps"]
        names = [s["variant"] for s in steps if s["step"].startswith("validate:")]
        names += [f"{s['variant']} (tuned)" for s in steps
                  if s["step"].startswith("tune:") and s["details"].get("confirmation_verdict") is not None]
        found[model["name"]] = names
    return found


def test_the_page_names_every_variant_with_its_verdict_and_role(two_model_build) -> None:  # noqa: ANN001
    out = two_model_build.out
    page = _parse(out / "index.html")
    assert "summary" in page.tables and "repository" in page.tables
    rows = {(cells[0], cells[1]): cells for cells in page.rows if cells}
    variants = _variants(two_model_build)
    assert set(variants) == {"facile", "jet_mlp"}
    markdown = (out / "index.md").read_text(encoding="utf-8")
    for model, names in variants.items():
        reports = {v["variant"]: v for v in json.loads((out / model / "reports" / "report.json").read_text())["variants"]}
        for name in names:
            cells = rows[(model, name)]
            judged = reports[name if not name.endswith(" (tuned)") else f"{name[:-8]} (tuned, confirmation half)"]
            assert cells[2] == judged["outcome"], cells
            assert cells[3] == judged["deciding"]  # the deciding check, with its interval
            assert f"| {model} | {name} | {judged['outcome']} |" in markdown
    # The published role comes from the repository's manifests: every published model is in a row.
    repository = out / "model_repository"
    for folder in sorted(p for p in repository.iterdir() if p.is_dir()):
        manifest = newest_manifest(folder)
        label = f"{manifest.role} {folder.name} v{manifest.version}"
        assert any(label in cells[5] for cells in rows.values()), label
        assert label in markdown
        assert f"| {folder.name} | {manifest.version} | {manifest.platform} | {manifest.role} |" in markdown
    # FP32 is the measure of speed; each model has its chart of speed against harm next to the page.
    assert rows[("jet_mlp", "fp32")][6] == "1.00x (measured)"
    for model in variants:
        assert (out / "page" / f"{model}-speed-harm.png").read_bytes()[:4] == b"\x89PNG"


def test_every_link_in_the_page_resolves_to_a_file(two_model_build) -> None:  # noqa: ANN001
    out = two_model_build.out
    links = _parse(out / "index.html").links
    assert any("reports/report.html#" in link for link in links)
    for link in links:
        target = urlsplit(link)
        assert not target.scheme and not target.netloc, link  # relative: the folder can be moved or downloaded
        path = out / unquote(target.path)
        assert path.is_file(), link
        if target.fragment:  # the anchor is a section of the report
            assert f"id='{target.fragment}'" in path.read_text(encoding="utf-8"), link


def test_a_model_whose_published_variants_pass_has_a_passing_headline(two_model_build) -> None:  # noqa: ANN001
    for model in ("facile", "jet_mlp"):
        steps = two_model_build.steps(model)
        report = json.loads((two_model_build.out / model / "reports" / "report.json").read_text())
        decisions = {d["variant"]: d for d in report["decisions"]}
        published = [d for d in decisions.values() if d["decision"] == "published"]
        assert published and steps["publish"]["status"] == "ok"
        # Every published variant passed: the headline passes, even where a rejected candidate fails.
        assert report["headline"]["outcome"] == "PASS", report["headline"]
        html = (two_model_build.out / model / "reports" / "report.html").read_text(encoding="utf-8")
        assert f"<h1>hepdeploy validation: {model}: <span class='pass'>PASS</span></h1>" in html
        markdown = (two_model_build.out / model / "reports" / "report.md").read_text(encoding="utf-8")
        assert markdown.startswith(f"## hepdeploy validation: {model}: ✅ PASS")
        # The opening table names each variant's decision; the per-bin tables follow, folded unless failing.
        page = _parse(two_model_build.out / model / "reports" / "report.html")
        assert page.tables[0] == "decisions"
        for name, decision in decisions.items():
            assert f"{name}</a></td><td class='text'>{decision['decision']}" in html
        assert "<details><summary>all events:" in html or "<details open><summary>all events:" in html
    jet = json.loads((two_model_build.out / "jet_mlp" / "reports" / "report.json").read_text())
    rejected = [d["variant"] for d in jet["decisions"] if d["decision"] == "rejected"]
    assert rejected and f"rejected {', '.join(rejected)}" in jet["headline"]["line"]
    # A rejected candidate's failing or undecided bins are unfolded.
    failing = [v for v in jet["variants"] if v["outcome"] != "PASS" and v["physics"]["ran"]]
    if failing:
        assert "<details open>" in (two_model_build.out / "jet_mlp" / "reports" / "report.html").read_text()


def test_report_makes_the_page_again_in_a_moved_build(two_model_build, tmp_path: Path) -> None:  # noqa: ANN001
    moved = tmp_path / "copied-build"
    shutil.copytree(two_model_build.out, moved)
    (moved / "index.html").unlink()
    (moved / "index.md").unlink()
    result = CliRunner().invoke(main, ["report", str(moved)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str((moved / "index.html").resolve())
    assert (moved / "index.md").read_text() == (two_model_build.out / "index.md").read_text()
    for link in _parse(moved / "index.html").links:  # the recorded paths are read under the new folder
        assert (moved / unquote(urlsplit(link).path)).is_file(), link


def test_report_on_a_folder_that_is_no_build(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "no build-summary.json here" in result.output


def test_a_browser_renders_the_summary_table(two_model_build) -> None:  # noqa: ANN001
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
    if browser is None:
        pytest.skip("no chromium on PATH: the page is checked with the HTML parser only")
    page = (two_model_build.out / "index.html").resolve()
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'id="summary"' in dom
    assert "jet_mlp" in dom and "facile" in dom
