"""The technique registry: built-ins and third-party plugins register the same way.

A plugin declares, in its pyproject.toml:

    [project.entry-points."auditor.techniques"]
    my-technique = "my_package.module:MyTechnique"

Built-ins are listed below as the same "module:attribute" strings. Two techniques with one name is a
TechniqueClashError that names both.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from auditor.config import RunOptions, core_fields, flag_names
from auditor.errors import AuditorError, TechniqueClashError
from auditor.options import Option, declared

if TYPE_CHECKING:
    from auditor.context import AuditContext
    from auditor.document import Section

ENTRY_POINT_GROUP = "auditor.techniques"

BUILTINS: tuple[str, ...] = (
    "auditor.declarations:Predictions",
    "auditor.declarations:Performance",
    "auditor.declarations:Trust",
    "auditor.declarations:Architecture",
    "auditor.declarations:Kernels",
    "auditor.declarations:FeatureMaps",
    "auditor.declarations:Reconstructions",
    "auditor.declarations:ClassActivationMaps",
    "auditor.declarations:Attribution",
    "auditor.declarations:MaximizingInputs",
)

# Flags of `auditor run` itself and names of RunOptions (config-file keys), which no technique option may take.
CORE_FLAGS = frozenset({f.name.replace("_", "-") for f in dataclasses.fields(RunOptions)}
                       | {name.removeprefix("--") for f in core_fields() for name in flag_names(f)}
                       | {"config", "debug", "help", "version"})


@runtime_checkable
class Technique(Protocol):
    """A visualization technique: the contract every built-in and plugin technique keeps.

    - `name`, `title`, `summary`: the CLI key (`--techniques NAME`), the section heading, and the line
      `auditor techniques` prints.
    - `options` (optional): a tuple of `auditor.options.Option`. Each becomes an `auditor run` flag, a
      config-file key and a line of the audit record; `run` reads the values with `options.of(self)`.
      Keep the module light to import (torch inside `run`): `auditor run --help` reads the declarations.
    - `after` (optional): names of techniques whose shared results this one reuses. It then runs after
      them when they run at all (report order stays registry order), and reads what they published on
      `ctx.shared`; it must still work, computing for itself, when they do not run.
    - `spreads` (optional, False): under torchrun, every rank runs it, not rank 0 alone; it splits its
      per-image work with `ctx.spread` (after `ctx.share_from_main()` when it reuses `ctx.shared`), and
      only rank 0's Section is kept.
    - `run(ctx, options)`: returns a Section of plain data (auditor.document) and leaves the model as it
      was; hooks go through auditor.nn.hooks. A technique that does not apply returns a Section saying
      why; one that raises gets its error shown in its own section while the rest of the report is kept.
    `ctx` is an AuditContext (auditor.context): the model, the images in batches, the shared forward
    pass, the gallery and `ctx.shared`, the typed results techniques pass on (see its docstring).
    """

    name: ClassVar[str]  # CLI key, e.g. "grad-cam"
    title: ClassVar[str]  # section heading
    summary: ClassVar[str]  # one line for `auditor techniques`

    def run(self, ctx: AuditContext, options: RunOptions) -> Section: ...


@dataclass(frozen=True)
class Registered:
    technique: type[Technique]
    source: str  # "built-in" or the distribution and entry point that provided it


def _load(target: str) -> type[Technique]:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def discover() -> dict[str, Registered]:
    """Every technique, built-ins first in report order, then plugins by name."""
    found: dict[str, Registered] = {}

    def add(technique: type[Technique], source: str) -> None:
        for attribute in ("name", "title", "summary", "run"):
            if not hasattr(technique, attribute):
                raise AuditorError(f"technique from {source} has no {attribute!r}; see the README's plugin guide")
        if not all(isinstance(o, Option) for o in declared(technique)):
            raise AuditorError(f"technique {technique.name!r} from {source}: `options` must be a tuple of "
                               f"auditor.options.Option")
        if technique.name in found:
            raise TechniqueClashError(
                f"two techniques are named {technique.name!r}: {found[technique.name].source} and {source}; "
                f"uninstall one or rename it"
            )
        found[technique.name] = Registered(technique, source)

    for target in BUILTINS:
        add(_load(target), "built-in")
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        distribution = entry.dist.name if entry.dist is not None else "unknown package"
        try:
            technique = entry.load()
        except Exception as error:  # a broken plugin must not break the tool
            raise AuditorError(f"plugin {entry.name!r} from {distribution} failed to load: {error}") from None
        add(technique, f"{distribution} ({entry.name} = {entry.value})")
    return found


def select(available: dict[str, Registered], only: tuple[str, ...], skip: tuple[str, ...]) -> list[type[Technique]]:
    """The techniques to run, in registry order; unknown names are a user error listing the known ones."""
    for option, names in (("--techniques", only), ("--skip", skip)):
        unknown = [n for n in names if n not in available]
        if unknown:
            raise AuditorError(
                f"{option}: unknown technique {', '.join(unknown)}; known: {', '.join(available)} "
                f"(see `auditor techniques`)"
            )
    return [r.technique for n, r in available.items() if (not only or n in only) and n not in skip]


def declared_options(available: dict[str, Registered]) -> tuple[Option, ...]:
    """Every technique's own options, in registry order. A flag taken twice is an error naming both owners."""
    owners: dict[str, str] = {flag: "auditor run" for flag in CORE_FLAGS}
    found: list[Option] = []
    for name, registered in available.items():
        for option in declared(registered.technique):
            owner = f"technique {name!r} ({registered.source})"
            if option.name in owners:
                raise TechniqueClashError(f"--{option.name} is declared twice: by {owners[option.name]} and by "
                                          f"{owner}; uninstall one plugin or rename its option")
            owners[option.name] = owner
            found.append(option)
    return tuple(found)
