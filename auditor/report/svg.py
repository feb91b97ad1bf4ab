"""SVG that the page may inline: no script or embedded HTML, no prolog, ids made unique on the page."""

from __future__ import annotations

import re

_PROLOG = re.compile(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<!--.*?-->", re.DOTALL)
_ID = re.compile(r'(?<=\s)id="([^"]*)"')
_HREF = re.compile(r'((?:xlink:)?href)="#([^"]*)"')
_URL = re.compile(r"url\(#([^)]*)\)")

_ACTIVE = re.compile(r"<script|\bon[a-z]+\s*=|javascript:|<foreignObject", re.IGNORECASE)


def check_passive(svg: str, name: str) -> None:
    """Refuse SVG that could run code or embed HTML; the report promises a page with no script."""
    if _ACTIVE.search(svg):
        raise ValueError(f"figure {name!r}: SVG with scripts, event handlers or foreignObject is not allowed")


def strip_prolog(svg: str) -> str:
    """The SVG element alone: no XML prolog, DOCTYPE or comments, which have no place inside HTML."""
    return _PROLOG.sub("", svg).strip()


def prefix_ids(svg: str, prefix: str) -> str:
    """Every id, and every reference to one (href="#x", url(#x)), with `prefix`: unique on a shared page."""
    svg = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = _HREF.sub(lambda m: f'{m.group(1)}="#{prefix}{m.group(2)}"', svg)
    return _URL.sub(lambda m: f"url(#{prefix}{m.group(1)})", svg)
