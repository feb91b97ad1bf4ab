"""One report folder as `auditor compare` reads it: its report.json and the maps it kept."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from auditor.errors import AuditorError
from auditor.report.maps import read_maps


@dataclass
class Run:
    """A finished audit: `data` is its report.json, `maps` its maps.safetensors by "<sha256>/<method>"."""

    folder: Path
    data: dict[str, Any]
    maps: dict[str, np.ndarray]
    json_sha256: str

    @property
    def record(self) -> dict[str, Any]:
        return self.data["record"]

    def section(self, technique: str) -> dict[str, Any] | None:
        """The section of `technique` when it ran without error, else None."""
        return next((s for s in self.data.get("sections", []) if s.get("technique") == technique
                     and not s.get("error")), None)

    @cached_property
    def sha256_of(self) -> dict[str, str]:
        """Image name -> sha256, from the record."""
        return {f["name"]: f["sha256"] for f in self.record.get("images", {}).get("files", [])}

    @property
    def label(self) -> str:
        model = self.record.get("model", {})
        return f"{model.get('name', '?')} ({self.folder.name or self.folder})"


def load_run(folder: str | Path, which: str = "RUN") -> Run:
    """The report folder `folder`, or a one-line error naming the argument (RUN_A, RUN_B)."""
    path = Path(folder)
    report = path / "report.json"
    if not report.is_file():
        raise AuditorError(f"{which}: {path} has no report.json; give a folder written by auditor run")
    raw = report.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise AuditorError(f"{which}: {report} is not JSON ({error})") from None
    if not isinstance(data, dict) or "record" not in data or data["record"].get("kind") == "compare":
        raise AuditorError(f"{which}: {report} is not an audit's report.json")
    from safetensors import SafetensorError

    try:
        maps = read_maps(path)
    except (OSError, SafetensorError) as error:  # a damaged file: say which, compare without maps would hide it
        raise AuditorError(f"{which}: cannot read {path / 'maps.safetensors'} ({error})") from None
    return Run(path, data, maps, hashlib.sha256(raw).hexdigest())
