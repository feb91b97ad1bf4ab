"""The command line, through click's CliRunner with catch_exceptions=False: real errors would surface."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from plugin_fixture import install_fake_plugin

from auditor.cli import cli
from auditor.inputs.images import BUNDLED_PHOTOS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _invoke(runner: CliRunner, *args: str):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_run_writes_the_report(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    shutil.copy(BUNDLED_PHOTOS / "coffee.png", tmp_path / "in")
    out = tmp_path / "out"
    result = _invoke(runner, "run", "--images", str(tmp_path / "in"), "--out", str(out), "--no-pdf",
                     "--techniques", "predictions", "--top-k", "3", "--seed", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"html: {out / 'report.html'}" in result.output
    assert "[1/1] predictions" not in result.output  # progress only on a terminal
    assert not (out / "report.pdf").exists()
    data = json.loads((out / "report.json").read_text())
    assert data["record"]["options"]["top_k"] == 3 and data["record"]["seed"] == 3
    top = data["sections"][0]["metrics"]["images"][0]["top"]
    assert [t["class"] for t in top][0] == "espresso" and len(top) == 3


def test_progress_shows_on_a_terminal_unless_quiet(monkeypatch) -> None:
    from auditor import cli as cli_module
    from auditor.progress import NO_PROGRESS, TerminalProgress

    monkeypatch.setattr(cli_module.sys.stderr, "isatty", lambda: True)
    assert isinstance(cli_module._progress(quiet=False), TerminalProgress)
    assert cli_module._progress(quiet=True) is NO_PROGRESS  # tests/test_progress.py runs it under a terminal


def test_positional_images_and_mean_std_overrides(runner: CliRunner, tmp_path: Path) -> None:
    result = _invoke(runner, "run", str(BUNDLED_PHOTOS / "coffee.png"), "--out", str(tmp_path), "--no-pdf",
                     "-t", "predictions", "--input-size", "160", "--mean", "0.5", "--std", "0.5,0.5,0.5")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "report.json").read_text())["record"]
    assert record["model"]["preprocess"] == (
        "resize 183 (bicubic), center crop 160, mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)")
    assert record["images"]["count"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet5"], "Error: --model: unknown model 'resnet5'"),
        (["--images", "/no/such/folder"], "Error: --images: /no/such/folder does not exist"),
        (["--model", "resnet18", "--weights", "IMAGENET9K"], "Error: --weights: resnet18 has no weights 'IMAGENET9K'"),
        (["--skip", "nope"], "Error: --skip: unknown technique nope"),
        (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"],
         "Error: --device"),
        (["--mean", "0.1,0.2"], "Invalid value for '--mean'"),
    ],
)
def test_bad_input_is_one_clear_line_without_traceback(runner: CliRunner, tmp_path: Path, args, message) -> None:
    result = _invoke(runner, "run", "--out", str(tmp_path), "--no-pdf", *args)
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert "Traceback" not in result.output


def test_no_readable_image_is_an_error(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    result = _invoke(runner, "run", str(tmp_path), "--out", str(tmp_path / "o"), "--no-pdf")
    assert result.exit_code == 1
    assert ("Error: --images: none of the files could be read as an image (broken.png: not a recognised image "
            "format, or a damaged file)") in result.output


def test_failing_technique_still_writes_the_report_and_exits_3(runner, tmp_path, monkeypatch) -> None:
    install_fake_plugin(tmp_path, name="explosive")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    result = _invoke(runner, "run", "--out", str(out), "--no-pdf", "-t", "predictions,explosive",
                     "--option", "explode=yes")
    assert result.exit_code == 3
    assert "technique failed" in result.output and "explosive (RuntimeError: boom from the plugin)" in result.output
    html = (out / "report.html").read_text()
    assert "This technique failed" in html and "espresso" in html
    assert "Echo &lt;plugin&gt;" in html


def test_techniques_lists_builtins_and_plugins(runner, tmp_path, monkeypatch) -> None:
    install_fake_plugin(tmp_path, name="listed")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = _invoke(runner, "techniques")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["predictions", "performance", "trust"]
    assert re.search(r"^listed\s+Counts the images \(a test plugin\)\.\s+\[fake-plugin-listed", result.output, re.MULTILINE)


def test_layers_prints_names_the_layer_options_accept(runner: CliRunner) -> None:
    result = _invoke(runner, "layers", "--model", "resnet18", "--depth", "2")
    assert result.exit_code == 0
    assert "  layer4  Sequential  8,393,728 params" in result.output
    assert "    layer4.1  BasicBlock" in result.output
    assert "layer4.1.conv1" not in result.output


def test_python_dash_m_runs_the_same_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "auditor", "--help"], capture_output=True, text=True, check=True)
    assert "Audit a PyTorch image classifier" in done.stdout


def _commands() -> list[click.Command]:
    return list(cli.commands.values())


def test_readme_documents_every_command_and_option() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in _commands():
        assert f"auditor {command.name}" in readme, command.name
        for param in command.get_params(click.Context(command)):  # technique options too
            for flag in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
                if flag.startswith("--") and flag != "--help":
                    assert flag in readme, f"{command.name} {flag}"


def test_out_that_is_a_file_is_a_clear_error(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    result = _invoke(runner, "run", str(BUNDLED_PHOTOS / "coffee.png"), "--out", str(tmp_path / "taken" / "sub"),
                     "-t", "predictions", "--no-pdf")
    assert result.exit_code == 1
    assert f"Error: --out: cannot create the folder {tmp_path / 'taken' / 'sub'} (Not a directory)" in result.output
    assert "Traceback" not in result.output


def _parse_run(args: list[str]):
    from auditor.cli import options_from_params, run

    with run.make_context("run", args) as ctx:
        return options_from_params(ctx.params)


def test_recorded_command_line_reproduces_the_options() -> None:
    from auditor.config import RunOptions

    options = RunOptions(model="resnet18", weights="none", images=("a b.png", "photos"), mean=(0.5, 0.25, 0.125),
                         pdf=False, figures=True, seed=3, techniques=("predictions", "architecture"),
                         skip=("x",), top_k=3, extra={"k": "v w"}, input_size=160, out="out dir")
    command = options.command_line()
    assert command.startswith("auditor run 'a b.png' photos --model resnet18 --weights none --input-size 160 ")
    assert "--no-pdf" in command and "--option 'k=v w'" in command
    assert _parse_run(shlex.split(command)[2:]) == options
    assert RunOptions().command_line() == "auditor run"


def test_config_file_gives_defaults_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text('model = "resnet18"\nweights = "none"\nbatch-size = 2\nimages = ["x", "y"]\n'
                      'techniques = ["predictions"]\nstd = [0.5, 0.5, 0.5]\n[extra]\nlevel = 3\n')
    options = _parse_run(["--config", str(config), "--batch-size", "4"])
    assert (options.model, options.weights, options.batch_size) == ("resnet18", "none", 4)
    assert options.images == ("x", "y") and options.techniques == ("predictions",)
    assert options.std == (0.5, 0.5, 0.5) and options.extra == {"level": "3"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("modle = 'resnet18'\n", "has an unknown option 'modle'; known: attribution_images, attribution_methods, batch_size"),
        ("model = \n", "cannot read"),
        ("extra = 3\n", "'extra' in"),
    ],
)
def test_bad_config_file_is_one_line(runner: CliRunner, tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "audit.toml"
    config.write_text(content)
    result = _invoke(runner, "run", "--config", str(config))
    assert result.exit_code == 2
    assert message in result.output and "Invalid value for '--config'" in result.output
    assert "Traceback" not in result.output
