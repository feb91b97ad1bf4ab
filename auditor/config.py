"""Run options as one frozen dataclass: what the CLI parses and what the report records."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunOptions:
    """Every option of an audit run. The report prints all of them, so keep them plain data."""

    model: str = "efficientnet_lite0"
    weights: str | None = None
    trust_pickle: bool = False
    images: tuple[str, ...] = ()
    labels: str | None = None
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    out: str = "audit-report"
    pdf: bool = True
    figures: bool = False
    device: str = "auto"
    seed: int = 0
    batch_size: int = 16
    techniques: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    top_k: int = 5
    graph_depth: int = 1
    tensorboard: str | None = None
    strict: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    def as_record(self) -> dict[str, Any]:
        """The options as JSON-ready values, for the report header and report.json."""
        record: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            record[f.name] = value
        return record
