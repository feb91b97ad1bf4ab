"""Render a Report to files: report.html, report.json, report.pdf and optionally figures/."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from auditor.document import Report
from auditor.errors import AuditorError
from auditor.report.files import DEFAULT_DPI, write_atomic, write_figures
from auditor.report.html import render_html
from auditor.report.manifest import render_json
from auditor.report.maps import MAPS_FILE, maps_bytes
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
    """Write the report files into `out` (created if needed); return their paths. maps.safetensors is written
    when a section kept arrays (the CAM maps), and an older one is removed when none did.

    The raster figure files' resolution is the record's --figure-dpi.

    Everything is rendered, then written into a hidden staging folder inside `out`, then moved into
    place: a failure (a full disk, Ctrl-C) leaves the folder as it was, never half a report.
    """
    folder = output_folder(out)
    html = render_html(report)
    rendered = {"html": ("report.html", html.encode("utf-8")),
                "json": ("report.json", render_json(report).encode("utf-8"))}
    if pdf:
        rendered["pdf"] = ("report.pdf", render_pdf(html))
    maps = maps_bytes(report.sections)
    if maps is not None:  # the arrays the sections kept (the CAM maps), for auditor compare
        rendered["maps"] = (MAPS_FILE, maps)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".auditor-staging-"))
    try:
        for name, data in rendered.values():
            write_atomic(staging / name, data)
        if figures:
            options = report.record.get("options", {}) if isinstance(report.record, dict) else {}
            write_figures(report, staging / "figures", options.get("figure_dpi", DEFAULT_DPI))
        written = {}
        for kind, (name, _) in rendered.items():
            os.replace(staging / name, folder / name)
            written[kind] = folder / name
        if maps is None and (folder / MAPS_FILE).exists():
            os.remove(folder / MAPS_FILE)  # a previous run's maps, not this report's
        if figures:
            shutil.rmtree(folder / "figures", ignore_errors=True)
            os.replace(staging / "figures", folder / "figures")
            written["figures"] = folder / "figures"
    except OSError as error:
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise AuditorError(f"--out: could not write the report into {folder} ({reason}); no report file was "
                           f"changed") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
