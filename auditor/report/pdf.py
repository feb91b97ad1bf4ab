"""report.pdf: WeasyPrint on the same HTML, with the print stylesheet doing page numbers and breaks."""

from __future__ import annotations

import logging
import re
from typing import Any


def render_pdf(html: str) -> bytes:
    """The PDF bytes of a self-contained HTML page; WeasyPrint may read data: URIs and nothing else."""
    from weasyprint import (
        HTML,  # imported here: it is slow to import and only the PDF needs it
    )

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    return HTML(string=html, url_fetcher=_data_only_fetcher()).write_pdf()


def _data_only_fetcher() -> Any:
    try:  # WeasyPrint >= 68
        from weasyprint.urls import URLFetcher

        return URLFetcher(allowed_protocols={"data"}, fail_on_errors=True)
    except ImportError:  # older WeasyPrint: a plain function
        from weasyprint import default_url_fetcher

        def fetch(url: str, *args: Any, **kwargs: Any) -> Any:
            if not url.startswith("data:"):
                raise ValueError(f"the report may not load {url!r}")
            return default_url_fetcher(url, *args, **kwargs)

        return fetch


_LENGTH = {"": 1.0, "px": 1.0, "pt": 96 / 72, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4}


def svg_size(svg: str) -> tuple[float, float]:
    """The SVG's width and height in CSS pixels: its width and height attributes, else its viewBox."""
    root = re.search(r"<svg\b[^>]*>", svg, re.DOTALL)
    tag = root.group(0) if root else ""

    def length(name: str) -> float | None:
        found = re.search(rf'\s{name}="\s*([0-9.]+)\s*([a-z]*)\s*"', tag)
        if not found or found.group(2) not in _LENGTH:
            return None
        return float(found.group(1)) * _LENGTH[found.group(2)]

    width, height = length("width"), length("height")
    box = re.search(r'viewBox="\s*[-0-9.]+[\s,]+[-0-9.]+[\s,]+([0-9.]+)[\s,]+([0-9.]+)\s*"', tag)
    if (width is None or height is None) and box:
        box_w, box_h = float(box.group(1)), float(box.group(2))
        if width is None and height is None:
            width, height = box_w, box_h
        elif width is None:
            width = height * box_w / box_h
        else:
            height = width * box_h / box_w
    return (width or 600.0, height or 400.0)


def svg_to_pdf(svg: bytes) -> bytes:
    """An SVG figure alone as a one-page vector PDF of its own size, for pdflatex (WeasyPrint draws it)."""
    from weasyprint import HTML

    from auditor.drawing import data_uri

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    width, height = svg_size(svg.decode("utf-8"))
    page = (f"<!doctype html><html><head><style>@page {{ size: {width:.2f}px {height:.2f}px; margin: 0 }} "
            f"html, body {{ margin: 0; padding: 0 }} img {{ display: block; width: {width:.2f}px; "
            f"height: {height:.2f}px }}</style></head><body><img src=\"{data_uri(svg, 'image/svg+xml')}\"></body>"
            f"</html>")
    return HTML(string=page, url_fetcher=_data_only_fetcher()).write_pdf()
