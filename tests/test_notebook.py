"""The Report run_audit returns: inline HTML in Jupyter (_repr_html_, the same as report.html) and .save(dir)."""

from __future__ import annotations

import json
from pathlib import Path

from fixtures_models import tiny
from toolkit import audit

from auditor.document import Report
from auditor.report.html import render_html


def test_the_report_shows_inline_and_saves(tmp_path: Path) -> None:
    report = audit(tiny(), ("predictions", "cam"), gallery_images=2)
    assert isinstance(report, Report)
    html = report._repr_html_()
    assert html == render_html(report) and "<html" in html
    written = report.save(tmp_path / "out", pdf=False, figures=True)
    assert set(written) >= {"html", "json", "figures"} and "pdf" not in written
    assert (tmp_path / "out" / "report.html").read_text(encoding="utf-8") == html
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["technique"] for s in saved["sections"]] == ["predictions", "cam"]
    assert any((tmp_path / "out" / "figures").iterdir())
