"""Issue 9's guarantees across every technique: the model comes back as given, no hook survives (also
when a run fails), reports are all-or-nothing, memory errors retry once, runs reproduce, names are escaped."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from auditor import RunOptions, load_images, load_model, run_audit, write_report
from auditor.cli import cli
from auditor.errors import AuditorError
from auditor.inputs.images import BUNDLED_PHOTOS
from auditor.registry import discover
from tests.toolkit import CHEAP, assert_unchanged, audit, audit_section, snapshot

TECHNIQUES = list(discover())


class UserNet(nn.Module):
    """A user's model as found in the wild: in-place and reused ReLUs, dropout, a GAP head."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)  # used twice per forward
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(16, 4)
        self.fail_after = fail_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("the user's model failed on purpose")
        x = self.relu(self.conv2(self.relu(self.bn(self.conv1(x)))))
        return self.fc(self.drop(x.mean(dim=(2, 3))))


def user_model(fail_after: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    module = UserNet(fail_after)
    module.train()
    module.bn.eval()  # a mixed mode, as when fine-tuning with frozen batch norm
    module.conv1.weight.requires_grad_(False)
    module.fc.register_forward_hook(lambda *args: None)  # the user's own hook must survive
    return module


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_every_technique_returns_the_model_exactly_as_given(technique: str) -> None:
    module = user_model()
    before = snapshot(module)
    section = audit_section(module, technique, **CHEAP)
    assert section.error is None, section.error_detail
    assert_unchanged(module, before)


@pytest.mark.parametrize("technique", [t for t in TECHNIQUES if t != "architecture"] + ["architecture"])
def test_a_failing_run_leaves_no_hook_and_no_change(technique: str) -> None:
    module = user_model(fail_after=4)  # the layout probe and shared forward pass, the technique's own passes fail
    before = snapshot(module)
    audit(module, technique, **CHEAP)  # fails inside the technique (or not at all, if it needs no forward pass)
    module.fail_after = None
    assert_unchanged(module, before)


def test_out_of_memory_retries_once_with_half_the_batch() -> None:
    from auditor.audit import _run_one
    from auditor.context import AuditContext
    from auditor.document import Section

    seen: list[int] = []

    class Hungry:
        name, title, summary = "hungry", "Hungry", "Needs small batches."

        def run(self, ctx, options):
            seen.append(ctx.options.batch_size)
            if ctx.options.batch_size > 4:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return Section(self.name, self.title)

    model = load_model(user_model(), input_size=32)
    options = RunOptions(batch_size=8, device="cpu")
    ctx = AuditContext(model, load_images(None, model.preprocess), options, torch.device("cpu"), {})
    section = _run_one(Hungry, ctx, options)
    assert seen == [8, 4] and section.error is None
    assert "ran out of memory with --batch-size 8 and was run again with 4" in section.notes[0]
    assert ctx.options.batch_size == 8  # the retry ran on its own context; this one is unchanged
    seen.clear()
    larger = ctx.with_batch_size(16)
    failed = _run_one(Hungry, larger, larger.options)
    assert seen == [16, 8] and failed.error.startswith("OutOfMemoryError")


def test_a_full_disk_leaves_the_previous_report_untouched(tmp_path: Path, monkeypatch) -> None:
    import auditor.report as report_module

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("the previous report")
    report = run_audit(options=RunOptions(model="tests.fixtures_models:tiny", techniques=("predictions",),
                                          device="cpu"))
    real = report_module.write_atomic

    def full(path: Path, data: bytes) -> Path:
        if path.name == "report.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(report_module, "write_atomic", full)
    with pytest.raises(AuditorError, match=r"--out: could not write the report into .* \(the disk is full\); "
                                           r"no report file was changed"):
        write_report(report, out, pdf=False, figures=True)
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]  # no staging folder, no new file
    assert (out / "report.html").read_text() == "the previous report"


def test_ctrl_c_writes_nothing_and_exits_130(tmp_path: Path, monkeypatch) -> None:
    import auditor.audit

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(auditor.audit, "run_audit", interrupted)
    result = CliRunner().invoke(cli, ["run", "--out", str(tmp_path / "out"), "--no-pdf"])
    assert result.exit_code == 130
    assert "interrupted: no report file was written or changed" in result.output
    assert not list((tmp_path / "out").glob("report.*"))


def test_debug_shows_the_traceback_of_a_user_error(tmp_path: Path) -> None:
    plain = CliRunner().invoke(cli, ["run", "--model", "resnet5O", "--out", str(tmp_path)])
    assert plain.exit_code == 1 and "Traceback" not in plain.output
    debug = CliRunner().invoke(cli, ["run", "--model", "resnet5O", "--out", str(tmp_path), "--debug"])
    assert isinstance(debug.exception, AuditorError) and "resnet5O" in str(debug.exception)


def test_config_file_with_a_wrong_core_type_names_the_option(tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text('batch-size = "many"\n')
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 2 and "Invalid value for '--batch-size'" in result.output
    assert "Traceback" not in result.output


def _numbers(report_json: str) -> Any:
    """report.json without what may differ between two identical runs: timings and the creation date."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not k.endswith("seconds") and k != "created"}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value
    return clean(json.loads(report_json))


def test_the_same_run_twice_gives_identical_numbers_and_the_seed_changes_only_what_is_random() -> None:
    from auditor.report.manifest import render_json

    def run(seed: int) -> Any:
        return _numbers(render_json(audit(user_model(), seed=seed, **CHEAP)))

    first, second, other = run(0), run(0), run(1)
    assert first == second
    by_technique = {s["technique"]: s for s in first["sections"]}
    other_by = {s["technique"]: s for s in other["sections"]}
    assert by_technique["predictions"]["metrics"] == other_by["predictions"]["metrics"]
    assert by_technique["cam"]["metrics"] == other_by["cam"]["metrics"]
    assert by_technique["maximization"]["metrics"] != other_by["maximization"]["metrics"]  # random starts


HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def test_every_user_string_is_escaped_in_the_html(tmp_path: Path, monkeypatch) -> None:
    from plugin_fixture import install_plugin

    folder = tmp_path / "images" / "<b>folder<b>"
    folder.mkdir(parents=True)
    shutil.copy(BUNDLED_PHOTOS / "coffee.png", folder / "<img src=x onerror=alert(3)>.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join([HOSTILE, "<b>bold</b>", "cat & dog", "<svg onload=alert(4)>"]))
    install_plugin(tmp_path, "hostile", "fake_plugin_hostile", f'''
from auditor.document import Section, Table
class Hostile:
    name = "hostile"
    title = {HOSTILE!r}
    summary = "x"
    def run(self, ctx, options):
        return Section(self.name, self.title, text={HOSTILE!r}, notes=[{HOSTILE!r}],
                       blocks=[Table("t", {HOSTILE!r}, [{HOSTILE!r}], [[{HOSTILE!r}]])])
''', "Hostile")
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = tmp_path / "<i>model.py"
    factory.write_text("from tests.fixtures_models import TinyNet\ndef make():\n    return TinyNet(4)\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "run", str(tmp_path / "images"), "--model", f"{factory}:make", "--labels", str(labels), "--out", str(out),
        "--no-pdf", "--techniques", "predictions,cam,kernels,hostile", "--cam-classes", "<b>bold</b>",
        "--input-size", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    for raw in ("<script>", "<img src=x", "<b>", "<i>", "<svg onload"):
        assert raw not in html, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html.replace("<wbr>", "")
    assert "&lt;img src=x onerror=alert(3)&gt;.png" in html.replace("<wbr>", "")
    assert "&lt;i&gt;model.py" in html.replace("<wbr>", "")


def test_figure_files_stay_inside_the_output_folder(tmp_path: Path) -> None:
    from auditor.document import Figure, Report, Section
    from auditor.report.files import write_figures

    evil = Section("x", "x", blocks=[Figure("../../../escape", "c", b"\x89PNG", "image/png")])
    folder = write_figures(Report({}, [evil]), tmp_path / "out" / "figures")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(written) == [folder / "fig01-escape.png", folder / "figures.tex"]


class FixedSize(nn.Module):
    """Like torchvision's ViT: only the input size it was built for."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[-1] == 64, f"Wrong image width! Expected 64 but got {x.shape[-1]}!")
        return self.fc(x.mean(dim=(2, 3)))


def test_a_model_that_refuses_the_input_size_is_one_line_naming_input_size() -> None:
    with pytest.raises(AuditorError, match=r"--input-size: FixedSize fails on 3×32×32 inputs \(Wrong image width! "
                                           r"Expected 64 but got 32!\); give the input size it was built for"):
        audit(FixedSize(), "predictions", size=32)


def test_a_symlink_loop_under_images_is_not_followed_forever(tmp_path: Path) -> None:
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    shutil.copy(BUNDLED_PHOTOS / "chelsea.png", tmp_path / "photos" / "cats" / "chelsea.png")
    (tmp_path / "photos" / "cats" / "loop").symlink_to(tmp_path / "photos")
    images = load_images([tmp_path / "photos"])
    assert images.names == ["cats/chelsea.png"]


def test_a_folder_of_non_images_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.jpg").write_text("not a jpeg either")
    result = CliRunner().invoke(cli, ["run", str(tmp_path), "--out", str(tmp_path / "out"), "--no-pdf"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--images: none of the files could be read as an image (fake.jpg: not a recognised image format" \
        in result.output
