"""report.pdf: WeasyPrint on the same HTML, with the print stylesheet doing page numbers and breaks."""

from __future__ import annotations

import logging
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
