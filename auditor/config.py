"""Run options as one frozen dataclass: what the CLI parses and what the report records."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.errors import AuditorError
from auditor.options import Option, complete_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class RunOptions:
    """Every option of an audit run. The report prints all of them, so keep them plain data."""

    model: str = "efficientnet_lite0"
    weights: str | None = None
    trust_pickle: bool = False
    images: tuple[str, ...] = ()
    labels: str | None = None
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    out: str = "audit-report"
    pdf: bool = True
    figures: bool = False
    device: str = "auto"
    seed: int = 0
    batch_size: int = 16
    techniques: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    top_k: int = 5
    gallery_images: int = 6
    tensorboard: str | None = None
    strict: bool = False
    settings: dict[str, Any] = field(default_factory=dict)  # options the techniques declare, by key
    extra: dict[str, str] = field(default_factory=dict)  # --option KEY=VALUE, for plugins that declare none
    declared: tuple[Option, ...] = field(default=(), repr=False, compare=False)  # set by with_declared

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    def with_declared(self, options: tuple[Option, ...]) -> RunOptions:
        """These options with every declared technique option parsed and defaulted; a bad value names its flag."""
        try:
            settings = complete_settings(self.settings, options)
        except ValueError as error:
            raise AuditorError(str(error)) from None
        return self.replace(settings=settings, declared=options)

    def of(self, technique: type | object) -> dict[str, Any]:
        """A technique's own option values by key (`kernel_layers`), defaults where not given."""
        return {o.key: self.settings.get(o.key, o.default) for o in getattr(technique, "options", ())}

    def _core(self) -> list[dataclasses.Field[Any]]:
        return [f for f in dataclasses.fields(self) if f.name not in ("settings", "declared")]

    def as_record(self) -> dict[str, Any]:
        """Every option as JSON-ready values, the techniques' own after the core ones: the audit record."""
        record: dict[str, Any] = {}
        for f in self._core():
            value = getattr(self, f.name)
            record[f.name] = list(value) if isinstance(value, tuple) else value
        for key, value in self.settings.items():
            record[key] = list(value) if isinstance(value, tuple) else value
        return record

    def command_line(self) -> str:
        """The `auditor run` command that reproduces these options (defaults left out)."""
        defaults = RunOptions()
        args = ["auditor", "run", *self.images]
        for f in self._core():
            value = getattr(self, f.name)
            if f.name == "images" or value == getattr(defaults, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.name == "extra":
                args += [part for key, val in value.items() for part in ("--option", f"{key}={val}")]
            elif isinstance(value, bool):
                args.append(flag if value else f"--no-{f.name}")
            elif isinstance(value, tuple):
                args += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
            else:
                args += [flag, str(value)]
        for option in self.declared:
            value = self.settings.get(option.key, option.default)
            if value == option.default:
                continue
            if option.kind == "flag":
                args.append(option.flag if value else f"--no-{option.name}")
            else:
                args += [option.flag, option.format(value)]
        return shlex.join(args)


def config_defaults(path: Path, declared: tuple[Option, ...] = ()) -> dict[str, Any]:
    """Options from a TOML file, as defaults for the `run` command's parameters (flags still win).

    Keys are RunOptions field names or technique options (`batch_size` or `batch-size`); lists are
    accepted where the command line takes comma-separated values, and `[extra]` is a table of
    options for plugins that declare none. Technique options keep their TOML type: their own
    parser checks them, so a wrong type is an error that names the option.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditorError(f"--config: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise AuditorError(f"--config: cannot read {path} as TOML ({error})") from None
    technique_keys = {o.key for o in declared}
    known = {f.name for f in dataclasses.fields(RunOptions) if f.name not in ("settings", "declared")} | technique_keys
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise AuditorError(f"--config: {path} has an unknown option {key!r}; known: {', '.join(sorted(known))}")
        if name == "images":
            defaults["image_opts"] = [value] if isinstance(value, str) else list(value)
        elif name == "extra":
            if not isinstance(value, dict):
                raise AuditorError(f"--config: 'extra' in {path} must be a table of KEY = VALUE")
            defaults["extra"] = [f"{k}={v}" for k, v in value.items()]
        elif name in technique_keys:
            defaults[name] = value
        elif isinstance(value, list):
            defaults[name] = ",".join(str(v) for v in value)
        else:
            defaults[name] = value
    return defaults
