"""Technique-declared options: parsing, defaults, and a plugin's option as flag, config key and record line."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from plugin_fixture import install_declaring_plugin

from auditor.cli import cli, options_from_params, run
from auditor.config import RunOptions
from auditor.errors import AuditorError
from auditor.options import Option, complete_settings

DEPTH = Option("depth", "", default=2, kind="int", low=1, high=5)


@pytest.mark.parametrize(
    ("option", "given", "expected"),
    [
        (DEPTH, "3", 3),
        (DEPTH, 4, 4),
        (DEPTH, 4.0, 4),
        (Option("lr", "", kind="float", low=0), "0.05", 0.05),
        (Option("layers", "", kind="names"), " conv1, layer4.2.conv3 ,", ("conv1", "layer4.2.conv3")),
        (Option("layers", "", kind="names"), ["conv1", 7], ("conv1", "7")),
        (Option("channels", "", kind="indices"), "0:160:10", tuple(range(0, 160, 10))),
        (Option("channels", "", kind="indices"), "3,1,3,0:2", (3, 1, 0)),
        (Option("channels", "", kind="indices"), [5, 2], (5, 2)),
        (Option("target", "", kind="choice", choices=("logit", "prob")), "prob", "prob"),
        (Option("guided", "", kind="flag"), "no", False),
        (Option("guided", "", kind="flag"), True, True),
        (DEPTH, None, None),
    ],
)
def test_parse_accepts_command_line_config_and_python_values(option: Option, given, expected) -> None:
    assert option.parse(given) == expected


@pytest.mark.parametrize(
    ("option", "given", "message"),
    [
        (DEPTH, "x", "'x' is not an integer"),
        (DEPTH, 2.5, "is not an integer"),
        (DEPTH, True, "give an integer"),
        (DEPTH, 9, "9 is out of range: give a value >= 1 and <= 5"),
        (Option("channels", "", kind="indices"), "4:1:-1", "positive step"),
        (Option("channels", "", kind="indices"), "a", "'a' is not an index"),
        (Option("target", "", kind="choice", choices=("logit", "prob")), "probs", "not one of logit, prob"),
        (Option("guided", "", kind="flag"), "maybe", "give true or false"),
        (Option("layers", "", kind="names"), 3, "comma-separated names"),
    ],
)
def test_parse_rejects_bad_values_saying_what_to_write(option: Option, given, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        option.parse(given)


def test_complete_settings_fills_defaults_and_names_the_flag() -> None:
    assert complete_settings({"depth": "4"}, [DEPTH]) == {"depth": 4}
    assert complete_settings({}, [DEPTH]) == {"depth": 2}
    with pytest.raises(ValueError, match="--depth: 0 is out of range"):
        complete_settings({"depth": 0}, [DEPTH])
    with pytest.raises(ValueError, match="no technique declares the option 'dpeth'; known: --depth"):
        complete_settings({"dpeth": 1}, [DEPTH])


def test_run_audit_rejects_a_bad_technique_option_before_loading_anything() -> None:
    from auditor.audit import run_audit

    with pytest.raises(AuditorError, match="--graph-depth: 0 is out of range"):
        run_audit(options=RunOptions(model="does-not-exist", settings={"graph-depth": 0}))


@pytest.fixture
def levels_plugin(tmp_path: Path, monkeypatch) -> Path:
    install_declaring_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _parse(args: list[str]) -> RunOptions:
    with run.make_context("run", args) as ctx:
        return options_from_params(ctx.params)


def test_plugin_option_is_a_flag_with_help_and_a_checked_value(levels_plugin: Path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(cli, ["run", "--help"]).output
    assert "--levels-depth N" in help_text and "How deep to look. [default: 2]" in help_text
    assert "--levels-mode fast|slow" in help_text
    bad = runner.invoke(cli, ["run", "--levels-depth", "0"])
    assert bad.exit_code == 2
    assert "Invalid value for '--levels-depth': 0 is out of range: give a value >= 1" in bad.output
    assert "Traceback" not in bad.output
    options = _parse(["--levels-depth", "3", "--levels-layers", "a,b"])
    assert options.settings == {"levels_depth": 3, "levels_layers": ("a", "b")}


def test_plugin_option_from_config_file_record_and_reproducing_command(levels_plugin: Path, tmp_path: Path) -> None:
    from auditor.audit import run_audit
    from auditor.registry import declared_options, discover

    config = tmp_path / "audit.toml"
    config.write_text('levels-depth = 4\nlevels_layers = ["x", "y"]\n')
    options = _parse(["--config", str(config), "--levels-mode", "slow", "--techniques", "levels"])
    assert options.settings == {"levels_depth": 4, "levels_layers": ("x", "y"), "levels_mode": "slow"}
    report = run_audit(options=options.replace(model="tests.fixtures_models:tiny", device="cpu"))
    section = report.sections[0]
    assert section.metrics == {"levels_depth": 4, "levels_layers": ("x", "y"), "levels_mode": "slow"}
    record = report.record["options"]
    assert (record["levels_depth"], record["levels_layers"], record["graph_depth"]) == (4, ["x", "y"], 1)
    command = report.record["command"]
    assert "--levels-depth 4 --levels-layers x,y --levels-mode slow" in command
    assert "--graph-depth" not in command  # defaults are left out
    again = _parse(shlex.split(command)[2:]).with_declared(declared_options(discover()))
    assert again.command_line() == command


def test_config_file_with_a_wrong_type_names_the_option(levels_plugin: Path, tmp_path: Path) -> None:
    config = tmp_path / "audit.toml"
    config.write_text('levels-depth = "deep"\n')
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert "Invalid value for '--levels-depth': 'deep' is not an integer" in result.output


def test_run_help_does_not_import_torch() -> None:
    code = ("import sys; from click.testing import CliRunner; from auditor.cli import cli; "
            "out = CliRunner().invoke(cli, ['run', '--help']).output; "
            "assert '--graph-depth' in out, out; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr


def test_report_json_lists_technique_options(tmp_path: Path) -> None:
    from auditor.audit import run_audit
    from auditor.report.manifest import render_json

    report = run_audit(options=RunOptions(model="tests.fixtures_models:tiny", device="cpu",
                                          techniques=("predictions",), settings={"graph-depth": 3}))
    assert json.loads(render_json(report))["record"]["options"]["graph_depth"] == 3
