"""report.html: one self-contained page (inline CSS, data-URI images, inline SVG, no script).

Autoescape is always on: file names, labels and class names are user data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from auditor.document import Cards, Figure, Report, Table
from auditor.drawing import data_uri
from auditor.report.numbering import Numbered, numbered_blocks
from auditor.report.svg import check_passive, prefix_ids, strip_prolog

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
    "base-uri 'none'; form-action 'none'"
)


def templates_dir() -> Path:
    """Templates ship inside the wheel as auditor/templates; a source checkout keeps them at the top."""
    packaged = Path(__file__).resolve().parent.parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "templates"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(templates_dir())),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["data_uri"] = lambda block: data_uri(block.data if isinstance(block, Figure) else block.image,
                                                     block.mime)
    env.filters["page_svg"] = page_svg
    env.filters["number"] = format_number
    env.filters["breakable"] = breakable
    env.filters["option"] = format_option
    env.filters["paragraphs"] = lambda text: [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    env.tests["table"] = lambda block: isinstance(block, Table)
    env.tests["figure"] = lambda block: isinstance(block, Figure)
    env.tests["cards"] = lambda block: isinstance(block, Cards)
    env.tests["number"] = lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)
    return env


def page_svg(figure: Figure, id_prefix: str) -> Markup:
    """SVG markup to place in the page, its ids unique on the page.

    Any technique, a plugin's too, may return SVG: the report layer, not each technique, keeps
    several SVGs on one page from sharing ids (WeasyPrint warns, and links would jump wrongly).
    """
    text = strip_prolog(figure.data.decode("utf-8"))
    check_passive(text, figure.key)  # run_audit has checked already; this guards reports built by hand
    return Markup(prefix_ids(text, id_prefix))


_BREAK = re.compile(r"(?<=[._/])(?=[^\s._/])|(?<=[a-z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[A-Za-z]")


def breakable(value: Any) -> Markup:
    """Escaped text with line-break opportunities (<wbr>) after "." "_" "/" and inside CamelCase, so that
    `encoder.layers.encoder_layer_0.self_attention` and `NonDynamicallyQuantizableLinear` wrap in a
    table cell instead of widening it past the page. Tokens without a letter ("197×3072", "12.50%") never
    break: the stylesheet lets anything else break anywhere as a last resort."""
    pieces = [Markup("<wbr>").join(map(escape, _BREAK.split(token))) if _WORD.search(token)
              else Markup('<span class="nw">%s</span>') % token if token.strip() else escape(token)
              for token in re.split(r"(\s+)", str(value))]
    return Markup("").join(pieces)


def format_number(value: Any, digits: int = 4) -> str:
    """Integers with thousands separators, floats with `digits` significant digits."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"
    return str(value)


def format_option(value: Any) -> str:
    """An option value as a user would type it: true/false, comma lists, KEY=VALUE, "—" for unset."""
    if value is None or value == [] or value == {}:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _model_summary(report: Report) -> dict[str, Any]:
    """Parameters, MACs, size and input size, from the architecture section when it ran."""
    model = report.record["model"]
    summary: dict[str, Any] = {"parameters": model["parameters"], "input_size": model["input_size"]}
    for section in report.sections:
        if section.technique == "architecture" and section.error is None:
            for key in ("total_macs", "model_size_mb"):
                if key in section.metrics:
                    summary[key] = section.metrics[key]
    return summary


def section_anchor(name: str) -> str:
    """The id of a technique's section on the page ("appendix" is the appendix's)."""
    return "appendix" if name == "appendix" else f"section-{name}"


def render_html(report: Report) -> str:
    by_section: dict[int, list[Numbered]] = {}
    for numbered in numbered_blocks(report):
        by_section.setdefault(id(numbered.section), []).append(numbered)
    sections = [{"section": s, "number": i + 1, "anchor": section_anchor(s.technique),
                 "blocks": by_section.get(id(s), [])} for i, s in enumerate(report.sections)]
    links = {s.technique: (f"section {i + 1}", s.title) for i, s in enumerate(report.sections)}
    links["appendix"] = ("appendix", "Appendix: images, timings and options")
    findings = [{"finding": f, "anchor": section_anchor(f.section), "link": links.get(f.section, (f.section, ""))}
                for f in report.findings]
    compare = report.record.get("kind") == "compare"  # auditor compare's report: its own page around the sections
    template = _environment().get_template("compare.html.j2" if compare else "report.html.j2")
    return template.render(
        record=report.record,
        sections=sections,
        findings=findings,
        summary={} if compare else _model_summary(report),
        failed=report.failed,
        csp=CONTENT_SECURITY_POLICY,
    )
