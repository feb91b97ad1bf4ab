"""report.json against its shipped JSON Schema (draft 2020-12): every example report, a fresh one, and a bad one."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_models import tiny
from toolkit import audit

from auditor.cli import cli
from auditor.report.manifest import render_json
from auditor.report.schema import schema, schema_kinds

jsonschema = pytest.importorskip("jsonschema")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "example_reports").glob("*/report.json"))


def _validator(kind: str = "report"):
    found = schema(kind)
    jsonschema.Draft202012Validator.check_schema(found)
    return jsonschema.Draft202012Validator(found)


@pytest.fixture(scope="module")
def fresh() -> dict:
    report = audit(tiny(), ("predictions", "cam", "architecture"), gallery_images=2)
    return json.loads(render_json(report))


@pytest.mark.parametrize("kind", ["report", "compare"])
def test_the_schemas_are_draft_2020_12_and_versioned(kind: str) -> None:
    found = _validator(kind).schema
    assert found["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert found["$id"] == f"urn:auditor:schema:{kind}.json:v1"
    assert schema_kinds() == ["report", "compare"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_every_example_report_is_valid(path: Path) -> None:
    errors = [f"{list(e.path)}: {e.message}" for e in _validator().iter_errors(json.loads(path.read_text()))]
    assert not errors


def test_a_fresh_report_is_valid(fresh: dict) -> None:
    assert EXAMPLES, "no example report"
    errors = [f"{list(e.path)}: {e.message}" for e in _validator().iter_errors(fresh)]
    assert not errors
    assert {b["type"] for s in fresh["sections"] for b in s["blocks"]} >= {"figure", "table", "cards"}


@pytest.mark.parametrize("break_it", [
    lambda d: d.pop("record"),
    lambda d: d["record"]["model"].update(state_dict_sha256="not a hash"),
    lambda d: d["sections"][0].update(seconds="fast"),
    lambda d: d["sections"][0]["blocks"][0].update(type="movie"),
    lambda d: d["record"]["techniques"][0].update(status="maybe"),
    lambda d: d["findings"].append({"text": "no rule"}),
], ids=["no record", "bad hash", "seconds a string", "unknown block", "unknown status", "finding without rule"])
def test_a_broken_report_is_not(fresh: dict, break_it) -> None:
    broken = copy.deepcopy(fresh)
    break_it(broken)
    assert not _validator().is_valid(broken)


@pytest.mark.parametrize("kind", ["report", "compare"])
def test_auditor_schema_prints_it(kind: str) -> None:
    result = CliRunner().invoke(cli, ["schema", *([kind] if kind != "report" else [])], catch_exceptions=False)
    assert result.exit_code == 0 and json.loads(result.output) == schema(kind)
