"""The JSON Schemas (draft 2020-12) of the report.json files, shipped in the package: `auditor schema`.

One file per kind and version under auditor/report/schemas/, `KIND.vN.schema.json`; its "$id" names the
version. The newest version of each kind is the one `auditor run` and `auditor compare` write.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

_NAME = re.compile(r"^(?P<kind>[a-z]+)\.v(?P<version>\d+)\.schema\.json$")


def _files() -> dict[str, tuple[int, str]]:
    """kind -> (newest version, file name)."""
    found: dict[str, tuple[int, str]] = {}
    for entry in resources.files("auditor.report").joinpath("schemas").iterdir():
        match = _NAME.match(entry.name)
        if match:
            version = int(match["version"])
            if match["kind"] not in found or version > found[match["kind"]][0]:
                found[match["kind"]] = (version, entry.name)
    return found


def schema_kinds() -> list[str]:
    """The kinds of report.json there is a schema for: "report" (auditor run), "compare" (auditor compare)."""
    return sorted(_files(), key=lambda kind: (kind != "report", kind))


def schema_text(kind: str = "report") -> str:
    """The schema file of `kind` as shipped (newest version)."""
    _, name = _files()[kind]
    return resources.files("auditor.report").joinpath("schemas", name).read_text(encoding="utf-8")


def schema(kind: str = "report") -> dict[str, Any]:
    """The schema of `kind`, parsed."""
    return json.loads(schema_text(kind))
