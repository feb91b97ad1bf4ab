"""The `auditor` command: thin click wrappers over the library; no torch logic here."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import click

from auditor.config import RunOptions, config_defaults, core_fields, flag_names
from auditor.errors import AuditorError
from auditor.options import Option

EXIT_TECHNIQUE_FAILED = 3
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by Ctrl-C


def _technique_options() -> tuple[Option, ...]:
    """The options every registered technique declares (no torch import: see auditor.sections)."""
    from auditor.registry import declared_options, discover

    return declared_options(discover())


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Make the file's options the defaults of every other parameter, so command-line flags win."""
    if value is not None:
        try:
            defaults = config_defaults(Path(value), _technique_options())
        except AuditorError as error:
            raise click.BadParameter(str(error).removeprefix("--config: ")) from None
        ctx.default_map = {**(ctx.default_map or {}), **defaults}


def _click_option(option: Option) -> click.Option:
    """A declared technique option as a click flag; its own parser checks the value (also from --config)."""

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return option.parse(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None

    shown = option.format(option.default) or "automatic"
    if option.kind == "flag":
        return click.Option([f"{option.flag}/--no-{option.name}", option.key], default=None, callback=parse,
                            help=f"{option.help} [default: {shown}]")
    metavar = option.metavar or ("|".join(option.choices) if option.choices else "TEXT")
    return click.Option([option.flag, option.key], default=None, type=click.UNPROCESSED, callback=parse,
                        metavar=metavar, help=f"{option.help} [default: {shown}]")


def _core_option(f: dataclasses.Field[Any]) -> click.Option:
    """A RunOptions field as its flag, with the field's default (a default factory's is click's empty one)."""
    flag = f.metadata["flag"]
    default = None if f.default is dataclasses.MISSING else f.default
    return click.Option(["/".join(flag_names(f)), *filter(None, [flag.short]), f.name], default=default,
                        is_flag=isinstance(default, bool), type=flag.type, multiple=flag.multiple, show_default=True,
                        help=flag.help)


class RunCommand(click.Command):
    """`auditor run`, whose flags also include every option the registered techniques declare.

    They are read per invocation, not at import, so an installed plugin's options appear at once
    and a broken plugin is a one-line error of `run` alone.
    """

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if "auditor.declared" not in ctx.meta:
            try:
                ctx.meta["auditor.declared"] = [_click_option(option) for option in _technique_options()]
            except AuditorError as error:
                raise click.ClickException(str(error)) from None
        params = super().get_params(ctx)  # ours, then --help
        return [*params[:len(self.params)], *ctx.meta["auditor.declared"], *params[len(self.params):]]


def options_from_params(params: dict[str, Any]) -> RunOptions:
    """RunOptions from the `run` command's parsed parameters: core fields, and technique options given."""
    values = dict(params)
    values.pop("debug", None)  # how errors are shown, not an option of the audit
    images = (*values.pop("image_args"), *values.pop("images"))
    core = {f.name for f in core_fields()}
    settings = {key: values.pop(key) for key in list(values) if key not in core}
    return RunOptions(images=images, extra=dict(values.pop("extra")),
                      settings={k: v for k, v in settings.items() if v is not None}, **values)


class _StderrWarnings(logging.Handler):
    """Library warnings (a skipped image, say) as one plain line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        from auditor.progress import TerminalProgress

        line = f"warning: {record.getMessage()}"
        TerminalProgress.write(click.style(line, fg="yellow") if sys.stderr.isatty() else line)  # above any bar


def _setup_logging(main: bool = True) -> None:
    """Warnings on stderr, one line each; under torchrun from rank 0 alone (the others say the same)."""
    logger = logging.getLogger("auditor")
    if not main:
        logger.setLevel(logging.ERROR)
    if not any(isinstance(h, _StderrWarnings) for h in logger.handlers):
        logger.addHandler(_StderrWarnings(logging.WARNING))
    logger.propagate = False


def _progress(quiet: bool) -> Any:
    """A bar per technique on a terminal (auditor.progress), unless --quiet; nothing without a terminal."""
    from auditor.progress import NO_PROGRESS, TerminalProgress

    return TerminalProgress(sys.stderr) if sys.stderr.isatty() and not quiet else NO_PROGRESS


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="auditor")
def cli() -> None:
    """Audit a PyTorch image classifier: one self-contained HTML (and PDF) report of what it looks at."""


@cli.command(cls=RunCommand, params=[_core_option(f) for f in core_fields()])
@click.argument("image_args", metavar="[IMAGES]...", nargs=-1, type=click.Path())
@click.option("--debug", is_flag=True, help="Show the full traceback of any error (for bug reports).")
@click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False, callback=_load_config,
              help="A TOML file of options (names as in the report's option list); flags given here win.")
def run(**params: Any) -> None:
    """Audit a model on images and write the report.

    Exit status: 0 on success, 1 for bad input, 3 when the report was written but a technique failed.
    Under torchrun (`torchrun --nproc-per-node N -m auditor run ...`) each rank computes a shard and rank
    0 writes the one report; a rank that fails makes every rank exit with status 1.
    """
    from auditor.distributed import launched

    main = launched()[0] == 0  # under torchrun, only rank 0 prints and writes
    _setup_logging(main)
    debug = params["debug"]
    options = options_from_params(params)
    try:
        from auditor.audit import run_audit
        from auditor.report import output_folder, write_report

        if main:
            output_folder(options.out)  # fail before the audit, not after it
        if options.tensorboard is not None:
            from auditor.techniques.architecture.tensorboard import require_tensorboard

            require_tensorboard()  # fail before the audit, not in its section
        report = run_audit(options=options, progress=_progress(options.quiet or not main))
        if report is None:  # a torchrun rank other than 0: its share is merged into rank 0's report
            return
        if sys.stderr.isatty() and not options.quiet:
            click.echo("writing report" + (" and PDF" if options.pdf else ""), err=True)
        written = write_report(report, options.out, pdf=options.pdf, figures=options.figures)
    except AuditorError as error:
        if debug:
            raise
        if not main:
            sys.exit(1)  # rank 0 says it, once
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        if debug:
            raise
        if main:
            click.secho("interrupted: no report file was written or changed", fg="red", err=True)
        sys.exit(EXIT_INTERRUPTED)
    for kind, path in written.items():
        click.echo(f"{kind}: {path}")
    if report.failed:
        names = ", ".join(f"{s.technique} ({s.error})" for s in report.failed)
        click.secho(f"error: technique failed, see its section in the report: {names}", fg="red", err=True)
        sys.exit(EXIT_TECHNIQUE_FAILED)


@cli.command()
def techniques() -> None:
    """List the registered techniques (built-in and plugins) with a one-line summary each."""
    from auditor.registry import discover

    try:
        found = discover()
    except AuditorError as error:
        raise click.ClickException(str(error)) from None
    width = max(len(name) for name in found)
    for name, registered in found.items():
        source = "" if registered.source == "built-in" else f"  [{registered.source}]"
        click.echo(f"{name:<{width}}  {registered.technique.summary}{source}")


@cli.command()
@click.option("--model", "-m", default=RunOptions.model, show_default=True, help="As for `auditor run`.")
@click.option("--weights", "-w", default="none", show_default=True,
              help="As for `auditor run`; the tree does not depend on the weights.")
@click.option("--trust-pickle", is_flag=True, help="As for `auditor run`.")
@click.option("--depth", default=None, type=click.IntRange(1), help="Show modules down to this depth only.")
def layers(model: str, weights: str, trust_pickle: bool, depth: int | None) -> None:
    """Print the module tree with the names that layer options accept."""
    from auditor.inputs.models import load_model
    from auditor.nn.layers import layer_listing

    try:
        loaded = load_model(model, weights, trust_pickle=trust_pickle)
    except AuditorError as error:
        raise click.ClickException(str(error)) from None
    for line in layer_listing(loaded.module, depth):
        click.echo(line)


@cli.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", default="compare-report", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the compare report's report.html, report.json and report.pdf.")
@click.option("--pdf/--no-pdf", default=True, show_default=True, help="Also write report.pdf.")
@click.option("--figures", is_flag=True, help="Also write every figure and table as its own file in OUT/figures/.")
def compare(run_a: str, run_b: str, out: str, pdf: bool, figures: bool) -> None:
    """Compare two report folders of `auditor run`: records, changed predictions, accuracy, map similarity, trust."""
    from auditor.compare import compare_runs, load_run
    from auditor.report import output_folder, write_report

    if Path(out).resolve() in (Path(run_a).resolve(), Path(run_b).resolve()):
        raise click.ClickException("--out: write the comparison into another folder than RUN_A and RUN_B, whose "
                                   "report files it would replace")
    try:
        output_folder(out)
        report = compare_runs(load_run(run_a, "RUN_A"), load_run(run_b, "RUN_B"))
        written = write_report(report, out, pdf=pdf, figures=figures)
    except AuditorError as error:
        raise click.ClickException(str(error)) from None
    for kind, path in written.items():
        click.echo(f"{kind}: {path}")


@cli.command()
@click.argument("kind", default="report", type=click.Choice(["report", "compare"]))
def schema(kind: str) -> None:
    """Print the JSON Schema (draft 2020-12) of report.json: KIND report (auditor run, the default) or compare
    (auditor compare)."""
    from auditor.report.schema import schema_text

    click.echo(schema_text(kind), nl=False)


def main() -> None:
    cli(prog_name="auditor")


if __name__ == "__main__":
    main()
