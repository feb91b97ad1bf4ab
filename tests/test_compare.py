"""auditor compare: a run against itself (no change, similarity 1), and two tiny models whose top-1 changes are
known from their report.json files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_models import tiny
from toolkit import audit

from auditor.cli import cli
from auditor.compare import compare_runs, load_run, spearman, top_iou
from auditor.errors import AuditorError
from auditor.inputs.images import BUNDLED_PHOTOS
from auditor.inputs.models import load_model
from auditor.report import write_report
from auditor.report.schema import schema_kinds

TECHNIQUES = ("predictions", "performance", "cam", "trust")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two report folders: tiny seed 0 and seed 1 on the bundled photos, labelled by class-index subfolders."""
    root = tmp_path_factory.mktemp("compare")
    images = root / "images"
    for index, photo in enumerate(sorted(BUNDLED_PHOTOS.iterdir())):
        if photo.suffix in (".png", ".jpg"):
            (images / "ab"[index % 2]).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, images / "ab"[index % 2])
    names = root / "classes.txt"
    names.write_text("a\nb\nc\nd\ne\n")
    folders = []
    for seed in (0, 1):
        model = load_model(tiny(seed=seed), input_size=32, labels=str(names))
        report = audit(model, TECHNIQUES, images=images, trust_steps=2, trust_images=2)
        write_report(report, root / f"run{seed}", pdf=False)
        folders.append(root / f"run{seed}")
    return folders[0], folders[1]


def _top1(folder: Path) -> dict[str, str]:
    data = json.loads((folder / "report.json").read_text())
    hashes = {f["name"]: f["sha256"] for f in data["record"]["images"]["files"]}
    section = next(s for s in data["sections"] if s["technique"] == "predictions")
    return {hashes[e["image"]]: e["top"][0]["class"] for e in section["metrics"]["images"]}


def _section(report, name):
    return next(s for s in report.sections if s.technique == name)


def test_a_run_against_itself_changes_nothing(runs) -> None:
    a, _ = runs
    report = compare_runs(load_run(a), load_run(a))
    assert _section(report, "records").metrics["differences"] == []
    predictions = _section(report, "predictions").metrics
    assert predictions["changed"] == 0 and predictions["images"] == [] and predictions["matched"] == 5
    similarity = _section(report, "maps").metrics["map_similarity"]
    assert similarity and all(s["spearman"] == 1 and s["iou_top20"] == 1 for s in similarity.values())
    assert not [b for b in _section(report, "maps").blocks if b.key == "compare-moved-maps"]  # nothing moved
    assert _section(report, "trust").metrics["stopped_passing"] == []
    accuracy = _section(report, "accuracy").metrics
    assert all(row["delta"] in (0, None) for row in accuracy["overall"])
    assert all(v == 0 for row in accuracy["confusion_delta"]["counts"] for v in row)


def test_two_models_their_top1_changes(runs, tmp_path: Path) -> None:
    a, b = runs
    before, after = _top1(a), _top1(b)
    expected = {h for h in before if before[h] != after[h]}
    assert expected, "the two tiny models should disagree somewhere"
    result = CliRunner().invoke(cli, ["compare", str(a), str(b), "-o", str(tmp_path), "--no-pdf"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"html: {tmp_path / 'report.html'}", f"json: {tmp_path / 'report.json'}"]
    data = json.loads((tmp_path / "report.json").read_text())
    sections = {s["technique"]: s for s in data["sections"]}
    changed = sections["predictions"]["metrics"]
    assert changed["changed"] == len(expected) == len(changed["images"])
    assert {c["sha256"] for c in changed["images"]} == expected
    assert all(c["before"]["class"] == before[c["sha256"]] and c["after"]["class"] == after[c["sha256"]]
               for c in changed["images"])
    fields = {d["field"] for d in sections["records"]["metrics"]["differences"]}
    assert "model hash (state dict sha256)" in fields
    similarity = sections["maps"]["metrics"]["map_similarity"]
    assert similarity and all(s["spearman"] < 1 for s in similarity.values())
    assert any(b["key"] == "compare-moved-maps" for b in sections["maps"]["blocks"])
    assert "confusion_delta" in sections["accuracy"]["metrics"]
    html = (tmp_path / "report.html").read_text()
    assert "Compare report" in html and "Predictions that changed" in html
    if "compare" in schema_kinds():
        jsonschema = pytest.importorskip("jsonschema")
        from auditor.report.schema import schema

        jsonschema.validate(data, schema("compare"), cls=jsonschema.Draft202012Validator)
        predictions = next(s for s in data["sections"] if s["technique"] == "predictions")
        del predictions["metrics"]["changed"]
        assert not jsonschema.Draft202012Validator(schema("compare")).is_valid(data)


def test_similarity_of_maps() -> None:
    rng = np.random.default_rng(0)
    heat = rng.random((7, 7))
    assert spearman(heat, heat) == 1 and top_iou(heat, heat) == 1
    assert spearman(heat, 2 * heat + 1) == pytest.approx(1) and top_iou(heat, 3 * heat) == 1
    assert spearman(heat, -heat) == pytest.approx(-1) and top_iou(heat, -heat) == 0
    assert spearman(heat, np.zeros((7, 7))) is None
    assert spearman(np.kron(heat, np.ones((2, 2))), heat) > 0.9  # another layer's grid: resized to compare


def test_a_folder_without_a_report_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(AuditorError, match="RUN_A: .* has no report.json"):
        load_run(tmp_path, "RUN_A")
