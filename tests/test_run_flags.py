"""The core flags of `auditor run` come from RunOptions: one flag per field, with the field's own default."""

from __future__ import annotations

import dataclasses

import click
from click.testing import CliRunner

from auditor.cli import cli, options_from_params, run
from auditor.config import RunOptions, core_fields, flag_names


def test_every_run_option_is_one_flag_with_the_field_default() -> None:
    names = [p.name for p in run.params if isinstance(p, click.Option) and p.name not in ("debug", "config")]
    assert sorted(names) == sorted(f.name for f in core_fields())  # each once, none written by hand
    assert {f.name for f in core_fields()} == {f.name for f in dataclasses.fields(RunOptions)} - {"settings",
                                                                                                  "declared"}
    defaults = {p.name: p.default for p in run.params}
    for f in core_fields():
        assert defaults[f.name] == (None if f.default is dataclasses.MISSING else f.default), f.name
    with run.make_context("run", []) as ctx:
        assert options_from_params(ctx.params) == RunOptions()


def test_run_help_lists_every_core_flag_and_its_default() -> None:
    text = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    for f in core_fields():
        flag = f.metadata["flag"]
        names = " / ".join(flag_names(f))
        assert (f"{flag.short}, {names}" if flag.short else names) in text, f.name
        assert " ".join(flag.help.split()) in text, f.name
        if f.default not in (None, (), dataclasses.MISSING) and f.default is not False:
            assert f"[default: {f.name if f.default is True else f.default}" in text, f.name
