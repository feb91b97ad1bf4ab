"""The report files: self-contained HTML, escaping, JSON numbers, PDF pages, atomic writes, figure files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from plugin_fixture import install_plugin
from pypdf import PdfReader

from auditor import RunOptions, load_images, run_audit
from auditor.document import Report, Section, Table
from auditor.inputs.images import BUNDLED_PHOTOS
from auditor.registry import discover
from auditor.report.files import write_atomic
from auditor.report.html import breakable, render_html
from auditor.report.manifest import render_json
from tests.fixtures_models import tiny
from tests.toolkit import audit

ROOT = Path(__file__).resolve().parents[1]
NETWORK_URL = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)


class _Links(HTMLParser):
    """Every URL-bearing attribute value and every CSS url(...) in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.meta: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "meta" and values.get("http-equiv"):
            self.meta[values["http-equiv"].lower()] = values.get("content") or ""
        for name, value in attrs:
            if value is None:
                continue
            if name in {"src", "href", "xlink:href", "action", "srcset", "poster", "data", "background"}:
                self.urls.append(value)
            if name == "style":
                self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", value)

    def handle_data(self, data: str) -> None:
        self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", data)
        self.urls += re.findall(r"@import\s+['\"]([^'\"]+)", data)


@pytest.mark.slow  # the default report (conftest)
def test_html_loads_nothing_from_the_network(default_report) -> None:
    _, written = default_report
    html = written["html"].read_text()
    links = _Links()
    links.feed(html)
    assert links.urls, "the parser found no URL at all: the test would pass vacuously"
    offending = [u for u in links.urls if NETWORK_URL.match(u) or not (u.startswith("data:") or u.startswith("#"))]
    assert offending == []
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", html, re.IGNORECASE)
    assert "script" not in links.tags and "link" not in links.tags and "iframe" not in links.tags
    policy = links.meta["content-security-policy"]
    assert "default-src 'none'" in policy and "img-src data:" in policy


@pytest.mark.slow  # the default report (conftest)
def test_html_carries_the_audit_record(default_report) -> None:
    report, written = default_report
    html = written["html"].read_text()
    for photo in sorted(BUNDLED_PHOTOS.glob("*.[pj][np]g")):
        digest = hashlib.sha256(photo.read_bytes()).hexdigest()
        assert digest in html, photo.name
    record = report.record
    assert record["model"]["state_dict_sha256"] in html
    assert record["model"]["parameters"] == 4_652_008
    assert "4,652,008 parameters" in html
    for needle in ("torch " + record["environment"]["torch"], "Seed", "batch_size", "resize 256 (bicubic)"):
        assert needle in html
    assert [t["name"] for t in record["techniques"]] == list(discover())  # every built-in, in registry order
    assert all(t["status"] == "ok" for t in record["techniques"])


@pytest.mark.slow  # the default report (conftest)
def test_json_holds_the_numbers_the_html_shows(default_report) -> None:
    report, written = default_report
    data = json.loads(written["json"].read_text())
    predictions = next(s for s in data["sections"] if s["technique"] == "predictions")
    by_image = {entry["image"]: entry for entry in predictions["metrics"]["images"]}
    coffee = by_image["coffee.png"]["top"]
    assert coffee[0]["class"] == "espresso" and coffee[0]["probability"] == pytest.approx(0.951, abs=0.01)
    html = written["html"].read_text()
    assert f"{coffee[0]['probability']:.3f}" in html
    assert [b["number"] for b in predictions["blocks"] if b["type"] != "table"] == [1]
    assert predictions["blocks"][0]["file"] == "fig01-predictions.png"


@pytest.mark.slow  # the default report (conftest)
def test_pdf_has_the_expected_pages(default_report) -> None:
    _, written = default_report
    reader = PdfReader(written["pdf"])
    assert 3 <= len(reader.pages) <= 36  # the performance section added pages in issue 17
    first = reader.pages[0].extract_text()
    assert "EfficientNet-Lite0" in first and "Contents" in first
    assert "Page 1 of" in first
    assert any("espresso" in page.extract_text() for page in reader.pages)


@pytest.mark.slow  # the default report (conftest)
def test_figures_are_written_with_stable_names(default_report) -> None:
    _, written = default_report
    names = sorted(p.name for p in written["figures"].iterdir())
    assert "fig01-predictions.png" in names
    assert "table01-predictions-summary.csv" in names
    csv_text = (written["figures"] / "table01-predictions-summary.csv").read_text()
    assert csv_text.splitlines()[0] == "image,top-1 class,probability"  # no labels: no truth columns
    assert "coffee.png,espresso," in csv_text


def test_user_strings_are_escaped(tmp_path: Path, lite0_model) -> None:
    # A file can't hold "/" in its name, but a folder "<script>x<" and a file "script>.png" display
    # as "<script>x</script>.png"; the folder name is also shown as a label.
    (tmp_path / "<script>x<").mkdir()
    shutil.copy(BUNDLED_PHOTOS / "coffee.png", tmp_path / "<script>x<" / "script>.png")
    shutil.copy(BUNDLED_PHOTOS / "chelsea.png", tmp_path / "<img src=x onerror=alert(1)>.png")
    images = load_images([tmp_path], lite0_model.preprocess, lite0_model.class_names)
    assert "<script>x</script>.png" in images.names
    html = render_html(audit(lite0_model, "predictions", images=images))
    assert "<script>x</script>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;.png" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;.png" in html


def test_labels_give_accuracy_and_verdicts(tmp_path: Path, lite0_model) -> None:
    for folder, photo in (("espresso", "coffee.png"), ("tabby", "chelsea.png"), ("tripod", "camera.png")):
        (tmp_path / folder).mkdir()
        shutil.copy(BUNDLED_PHOTOS / photo, tmp_path / folder / photo)
    report = audit(lite0_model, "predictions", images=tmp_path)
    accuracy = report.sections[0].metrics["accuracy"]
    # Lite0 calls chelsea a tiger cat (tabby is third): 2 of 3 right at top-1, all 3 within the top 5.
    assert accuracy == {"labelled_images": 3, "top1": pytest.approx(2 / 3), "top5": 1.0}
    html = render_html(report)
    assert "top-1 accuracy is 66.7%" in html
    assert html.count("tag ok\">correct<") == 2 and html.count("tag bad\">incorrect<") == 1


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_written_files_respect_the_umask(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "x.html", b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.slow
def test_built_wheel_ships_the_templates_and_renders_the_same_report(tmp_path: Path) -> None:
    """A non-editable install finds its templates inside the package, not in the source tree."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True)
    wheel = next((tmp_path / "dist").glob("auditor-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "auditor/templates/report.html.j2" in names
        assert "auditor/templates/report.css" in names
        assert "auditor/data/photos/coffee.png" in names
        archive.extractall(tmp_path / "site")
    script = (
        "import sys, auditor, auditor.report.html as h; from auditor import *;"
        "assert auditor.__file__.startswith(sys.argv[1]), auditor.__file__;"
        "print(h.templates_dir());"
        "r = run_audit(options=RunOptions(techniques=('predictions',)));"
        "r.record['created'] = 'fixed'; r.record['seconds'] = 0; r.record['techniques'] = [];"
        "print(h.render_html(r), end='')"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "site")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    templates, html = done.stdout.split("\n", 1)
    assert templates == str(tmp_path / "site" / "auditor" / "templates")
    report = run_audit(options=RunOptions(techniques=("predictions",)))
    report.record.update(created="fixed", seconds=0, techniques=[])
    assert html == render_html(report)


def test_svg_figures_from_any_technique_get_page_unique_ids() -> None:
    """Two plugins' SVGs with the same ids (as matplotlib or Graphviz would write) stay distinct on one page."""
    from auditor.document import Figure, Report, Section

    svg = ('<?xml version="1.0"?><!-- made by hand --><svg xmlns="http://www.w3.org/2000/svg" '
           'xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="0 0 10 10"><defs><clipPath id="clip1">'
           '<rect width="5" height="5"/></clipPath></defs><g id="node1" clip-path="url(#clip1)">'
           '<use xlink:href="#node1"/></g></svg>')
    figures = [Figure(f"same-{i}", "An SVG.", svg.encode(), "image/svg+xml") for i in range(2)]
    report = run_audit(options=RunOptions(techniques=("predictions",)))
    report = Report(report.record, [*report.sections, Section("svg", "SVG", blocks=figures)])
    html = render_html(report)
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert 'id="figure-2-clip1"' in html and 'id="figure-3-clip1"' in html
    assert 'clip-path="url(#figure-3-clip1)"' in html and 'xlink:href="#figure-2-node1"' in html
    assert "<?xml" not in html and "made by hand" not in html


def test_svg_with_a_script_fails_only_its_own_technique(tmp_path, monkeypatch) -> None:
    install_plugin(tmp_path, "scripted", "scripted_svg_plugin", """
        from auditor.document import Figure, Section

        class Scripted:
            name, title, summary = "scripted", "Scripted", "Returns an SVG with a script."

            def run(self, ctx, options):
                svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"></svg>'
                return Section(self.name, self.title, blocks=[Figure("bad", "Bad.", svg, "image/svg+xml")])
        """, "Scripted")
    monkeypatch.syspath_prepend(str(tmp_path))
    report = run_audit(options=RunOptions(techniques=("predictions", "scripted")))
    assert report.sections[0].error is None
    assert report.sections[1].error == ("ValueError: figure 'bad': SVG with scripts, event handlers or "
                                        "foreignObject is not allowed")
    html = render_html(report)
    assert "alert(1)" not in html and "espresso" in html


def test_hostile_module_names_are_escaped_in_table_and_graph() -> None:
    """ModuleDict keys are arbitrary strings: they reach the layer table and the Graphviz labels."""
    from torch import nn

    class Hostile(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.parts = nn.ModuleDict({"<script>alert(1)</script>": nn.Conv2d(3, 4, 3), 'q"b\\\\c': nn.ReLU()})
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = self.parts['q"b\\\\c'](self.parts["<script>alert(1)</script>"](x))
            return self.fc(x.mean((2, 3)))

    report = audit(Hostile(), "architecture", size=None, graph_depth=2)
    assert report.sections[0].error is None
    html = render_html(report)
    assert "<script" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 1  # the graph box
    assert html.count("&lt;script&gt;alert(1)&lt;/<wbr>script&gt;") >= 1  # the table row, with a break opportunity


def test_breakable_wraps_long_names_and_keeps_user_strings_escaped() -> None:
    assert breakable("encoder.layers.encoder_layer_0.out_proj") == (
        "encoder.<wbr>layers.<wbr>encoder_<wbr>layer_<wbr>0.<wbr>out_<wbr>proj")
    assert breakable("NonDynamicallyQuantizableLinear ReLU6") == "Non<wbr>Dynamically<wbr>Quantizable<wbr>Linear ReLU6"
    assert breakable("<script>a.b</script>") == "&lt;script&gt;a.<wbr>b&lt;/<wbr>script&gt;"
    assert breakable('x_"<1.5>"') == "x_<wbr>&#34;&lt;1.<wbr>5&gt;&#34;"
    assert breakable("197×3072 12.50%") == '<span class="nw">197×3072</span> <span class="nw">12.50%</span>'


def folded_report() -> Report:
    table = Table("t", "Every row.", ["name", "value"], [["a.b_c", 1], ["<i>", 2]], ["total", 3],
                  folded=True, unfold="--some-option 0")
    report = audit(tiny(), "predictions", size=None)
    report.sections.append(Section("folding", "Folding", blocks=[table]))
    return report


def test_a_folded_table_is_one_click_away_in_html_and_a_pointer_in_print() -> None:
    report = folded_report()
    page = render_html(report)
    folded = page[page.index('<details class="folded">'):page.index("</details>")]
    assert "<td>a.<wbr>b_<wbr>c</td>" in folded and "<td>&lt;i&gt;</td>" in folded and '<td class="n">3</td>' in folded
    pointer = page[page.index('class="caption print-only"'):]
    assert "Not printed (2 rows)" in pointer[:pointer.index("</p>")] and "--some-option 0 prints it here" in pointer
    css = (ROOT / "templates" / "report.css").read_text()
    assert re.search(r"@media print \{[^@]*details\.folded \{ display: none; \}[^@]*\.print-only \{ display: block; \}",
                     css)
    manifest = json.loads(render_json(report))
    assert manifest["sections"][-1]["blocks"][0]["folded"] is True
