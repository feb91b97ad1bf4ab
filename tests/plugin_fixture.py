"""Write a fake third-party plugin distribution (dist-info with an entry point) into a folder on sys.path."""

from __future__ import annotations

import textwrap
from pathlib import Path

PLUGIN_SOURCE = '''
from auditor.document import Section, Table


class EchoTechnique:
    name = "{name}"
    title = "Echo <plugin>"
    summary = "Counts the images (a test plugin)."

    def run(self, ctx, options):
        count = len(ctx.images)
        if options.extra.get("explode"):
            raise RuntimeError("boom from the plugin")
        return Section(self.name, self.title, text="Hello from a plugin.",
                       blocks=[Table("echo", "Image count.", ["images"], [[count]])],
                       metrics={{"images": count}})
'''


def install_plugin(folder: Path, name: str, module: str, source: str, attribute: str) -> None:
    """A module `module` holding `source`, and a `fake-plugin-NAME` distribution whose entry point
    registers `module:attribute` as technique NAME, in `folder` (which the test puts on sys.path)."""
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    dist = folder / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-plugin-{name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[auditor.techniques]\n{name} = {module}:{attribute}\n")


def install_fake_plugin(folder: Path, name: str = "echo") -> None:
    """The echo plugin above as technique NAME. Its module name depends on NAME because Python caches
    imported modules across tests."""
    install_plugin(folder, name, f"fake_plugin_{name.replace('-', '_')}", PLUGIN_SOURCE.format(name=name),
                   "EchoTechnique")


DECLARING_PLUGIN_SOURCE = '''
from auditor.options import Option
from auditor.document import Section


class Levels:
    name = "levels"
    title = "Levels"
    summary = "Echoes its declared options (a test plugin)."
    options = (
        Option("levels-depth", "How deep to look.", default=2, kind="int", low=1, metavar="N"),
        Option("levels-layers", "Layers to show.", default=(), kind="names", metavar="A,B"),
        Option("levels-mode", "How to look.", default="fast", kind="choice", choices=("fast", "slow")),
    )

    def run(self, ctx, options):
        return Section(self.name, self.title, metrics=options.of(self))
'''


def install_declaring_plugin(folder: Path) -> None:
    """A plugin technique `levels` that declares three options (int, names, choice)."""
    install_plugin(folder, "levels", "fake_plugin_levels", DECLARING_PLUGIN_SOURCE, "Levels")
