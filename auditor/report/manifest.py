"""report.json: every number the HTML shows, machine-readable (images replaced by captions and names)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from auditor.document import Cards, Figure, Report, Table
from auditor.report.files import figure_file_name
from auditor.report.numbering import numbered_blocks


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null rather than emit invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _describe(block: Any, number: int) -> dict[str, Any]:
    if isinstance(block, Table):
        return {"type": "table", "number": number, "key": block.key, "caption": block.caption,
                "columns": block.columns, "rows": block.rows, "footer": block.footer, "folded": block.folded}
    if isinstance(block, Figure):
        return {"type": "figure", "number": number, "key": block.key, "caption": block.caption,
                "file": figure_file_name(number, block.key, block.extension), "mime": block.mime}
    assert isinstance(block, Cards)
    return {"type": "cards", "number": number, "key": block.key, "caption": block.caption,
            "file": figure_file_name(number, block.key, "png"),
            "cards": [{"title": c.title, "badge": c.badge, "lines": c.lines,
                       "bars": [dataclasses.asdict(b) for b in c.bars]} for c in block.cards]}


def render_json(report: Report) -> str:
    blocks: dict[int, list[dict[str, Any]]] = {}
    for numbered in numbered_blocks(report):
        blocks.setdefault(id(numbered.section), []).append(_describe(numbered.block, numbered.number))
    sections = [
        {
            "technique": s.technique,
            "title": s.title,
            "text": s.text,
            "notes": s.notes,
            "error": s.error,
            "seconds": round(s.seconds, 3),
            "metrics": s.metrics,
            "blocks": blocks.get(id(s), []),
        }
        for s in report.sections
    ]
    findings = [{"text": f.text, "section": f.section, "value": f.value, "rule": f.rule} for f in report.findings]
    return json.dumps(_clean({"record": report.record, "findings": findings, "sections": sections}), indent=2,
                      ensure_ascii=False)
