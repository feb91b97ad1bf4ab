"""Render a Report to files: report.html, report.json, report.pdf and optionally figures/."""

from __future__ import annotations

import os
from pathlib import Path

from auditor.audit import Report
from auditor.errors import AuditorError
from auditor.report.files import write_atomic, write_figures
from auditor.report.html import render_html
from auditor.report.manifest import render_json
from auditor.report.pdf import render_pdf


def output_folder(out: str | Path) -> Path:
    """The report folder, created and writable, or a one-line error (checked before a long audit, too)."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AuditorError(f"--out: cannot create the folder {folder} ({error.strerror or error})") from None
    if not os.access(folder, os.W_OK):
        raise AuditorError(f"--out: cannot write into {folder}; choose another folder")
    return folder


def write_report(report: Report, out: str | Path, *, pdf: bool = True, figures: bool = False) -> dict[str, Path]:
    """Write the report files into `out` (created if needed), each atomically; return their paths."""
    folder = output_folder(out)
    html = render_html(report)
    written = {"html": write_atomic(folder / "report.html", html.encode("utf-8"))}
    written["json"] = write_atomic(folder / "report.json", render_json(report).encode("utf-8"))
    if pdf:
        written["pdf"] = write_atomic(folder / "report.pdf", render_pdf(html))
    if figures:
        written["figures"] = write_figures(report, folder / "figures")
    return written
