"""Run options as one frozen dataclass: what the CLI parses and what the report records.

Each field declares its `auditor run` flag beside its default (`Flag`); the command's core flags, the
config-file keys and the reproducing command are all read from there.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from auditor.errors import AuditorError
from auditor.options import Option, complete_settings, split_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Flag:
    """How `auditor run` takes a RunOptions field; the field holds the one default."""

    help: str
    short: str = ""  # "-m"
    type: click.ParamType | None = None  # None: click's type for the default
    multiple: bool = False  # repeatable
    name: str = ""  # the flag without "--", where it is not the field's name


def _flag(default: Any, help: str, **how: Any) -> Any:
    """A RunOptions field with its default and its flag."""
    return field(default=default, metadata={"flag": Flag(help, **how)})


class _Parsed(click.ParamType):
    """A click type from a parser that raises ValueError saying what to write instead."""

    def __init__(self, parse: Callable[[Any], Any], name: str = "text") -> None:
        self.parse, self.name = parse, name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.parse(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def _triple(value: str) -> tuple[float, float, float]:
    """"0.5" or "0.485,0.456,0.406" as three per-channel floats."""
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        raise ValueError("give one number or three comma-separated numbers, e.g. 0.5 or 0.485,0.456,0.406") from None
    if len(numbers) == 1:
        numbers *= 3
    if len(numbers) != 3:
        raise ValueError("give one number or three (one per RGB channel)")
    return (numbers[0], numbers[1], numbers[2])


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"{item!r} is not KEY=VALUE")
    return key.strip(), value.strip()


def _size(value: str) -> int | tuple[int, int]:
    """"224" or "224,192" (height, width), each side 16 to 4096 pixels."""
    try:
        sides = [int(v) for v in value.replace("x", ",").split(",")]
    except ValueError:
        raise ValueError(f"{value!r} is not a size; give N or H,W, e.g. 224 or 256,192") from None
    if len(sides) not in (1, 2) or not all(16 <= s <= 4096 for s in sides):
        raise ValueError(f"{value!r}: give N or H,W with each side from 16 to 4096 pixels")
    return sides[0] if len(sides) == 1 or sides[0] == sides[1] else (sides[0], sides[1])


def _colormap(name: str) -> str:
    """A matplotlib colour map's name, or a ValueError naming the close ones (matplotlib imported only here)."""
    import difflib

    from matplotlib import colormaps

    if name in colormaps:
        return name
    known = list(colormaps)
    lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lower), n=4, cutoff=0.6)
    hint = (f"close names: {', '.join(lower[c] for c in close)}" if close
            else "for example cividis, viridis, jet, inferno, magma or gray")
    raise ValueError(f"{name!r} is not a matplotlib colour map; {hint}")


_NAMES, _TRIPLE = _Parsed(split_names), _Parsed(_triple)


@dataclass(frozen=True)
class RunOptions:
    """Every option of an audit run. The report prints all of them, so keep them plain data."""

    model: str = _flag("efficientnet_lite0", "efficientnet_lite0 (built in, ImageNet weights), a torchvision model "
                       "name (resnet50, vgg16, ...), a TorchScript or model file, or package.module:factory (also "
                       "path/to/file.py:factory).", short="-m")
    weights: str | None = _flag(None, "For torchvision names: DEFAULT (default), an enum name like IMAGENET1K_V1, "
                                "or none. For any architecture: a state_dict file.", short="-w")
    trust_pickle: bool = _flag(False, "Allow loading a fully pickled model file. Unpickling runs code from the file: "
                               "only for files you trust.")
    images: tuple[str, ...] = _flag((), "Image file or folder (repeatable; subfolders named after classes give true "
                                    "labels). Default: the bundled demo photos.", short="-i", type=click.Path(),
                                    multiple=True)
    labels: str | None = _flag(None, "Class names: a .txt file (one per line) or .json (list or index-to-name "
                               "mapping). Default: ImageNet names for ImageNet models.", type=click.Path())
    labels_csv: str | None = _flag(None, "True classes from a CSV file of image,class rows (image: a file name as "
                                   "in the report; class: a name or index); rows override subfolder labels.",
                                   type=click.Path(dir_okay=False))
    input_size: int | tuple[int, int] | None = _flag(None, "Input size fed to the model (center crop): N for N x N, "
                                                     "or H,W (height, width) for a model trained on rectangular inputs.",
                                                     type=_Parsed(_size, "N|H,W"))
    channels: int | None = _flag(None, "Input channels the model takes: 1 (grayscale), 3 (RGB) or 4 (RGBA). "
                                 "Default: read from the first convolution.", type=click.IntRange(1, 4))
    head: str = _flag("auto", "How scores become probabilities: softmax (one class per image), sigmoid (each "
                      "label on its own: binary and multi-label models), or auto (sigmoid for one output or a "
                      "multi-label config, else softmax).", type=click.Choice(["auto", "softmax", "sigmoid"]))
    threshold: float = _flag(0.5, "With a sigmoid head: a label is predicted when its probability is at least "
                             "this.", type=click.FloatRange(0, 1))
    mean: tuple[float, float, float] | None = _flag(None, "Normalization mean: one number or three, e.g. "
                                                    "0.485,0.456,0.406.", type=_TRIPLE)
    std: tuple[float, float, float] | None = _flag(None, "Normalization std: one number or three.", type=_TRIPLE)
    out: str = _flag("audit-report", "Folder for report.html, report.json and report.pdf.", short="-o",
                     type=click.Path(file_okay=False))
    pdf: bool = _flag(True, "Also write report.pdf.")
    figures: bool = _flag(False, "Also write every figure as its own file in OUT/figures/ (PNG/JPEG, SVG where "
                          "vector), named figNN-technique-subject, every table as CSV, and figures.tex: all of them "
                          "for a LaTeX document, with a PDF copy of each SVG (it needs only graphicx and booktabs).")
    figure_dpi: int = _flag(200, "With --figures: pixels per inch of the raster figure files, at the size each "
                            "figure prints in report.pdf (96 pixels per inch, at most the text width); "
                            "figures.tex includes them at that size.", type=click.IntRange(50, 1200))
    colormap: str = _flag("jet", "Matplotlib colour map of the saliency overlays, heat maps and their colour bars "
                          "(default jet: blue low, red high). For readers with colour blindness and for grayscale "
                          "print, choose cividis or viridis.", type=_Parsed(_colormap, "NAME"))
    device: str = _flag("auto", "cpu, cuda, cuda:N, or auto (CUDA when present).")
    seed: int = _flag(0, "Random seed: same inputs and seed, same numbers.")
    batch_size: int = _flag(16, "Images per forward pass.", type=click.IntRange(1))
    workers: int | None = _flag(None, "Processes that decode and preprocess the images of a pass over the folder "
                                "(torch DataLoader, in file order; the numbers do not change). 0: in the main "
                                "process. Default: min(4, CPUs per process - 1), 0 on a pass of one batch.",
                                type=click.IntRange(0, 64))
    precision: str = _flag("fp32", "Numeric precision of the model's forward and gradient passes: fp32, or mixed "
                           "precision under torch.autocast: bf16 (CPU or CUDA) or fp16 (CUDA only). "
                           "Probabilities and metrics stay float32.", type=click.Choice(["fp32", "bf16", "fp16"]))
    techniques: tuple[str, ...] = _flag((), "Comma-separated techniques to run (default: all; see `auditor "
                                        "techniques`).", short="-t", type=_NAMES)
    skip: tuple[str, ...] = _flag((), "Comma-separated techniques not to run.", type=_NAMES)
    top_k: int = _flag(5, "Classes listed per image.", type=click.IntRange(1, 100))
    gallery_images: int = _flag(6, "Images shown in each technique's figures (every number still counts all "
                                "images).", type=click.IntRange(1, 1000))
    tensorboard: str | None = _flag(None, "Also write the model graph as a TensorBoard event file into this folder "
                                    "(needs tensorboard).", type=click.Path(file_okay=False))
    strict: bool = _flag(False, "Stop at the first failing technique and show its traceback (default: report the "
                         "failure in its section and go on).")
    quiet: bool = _flag(False, "No progress bars on the terminal (there are none without one); warnings and "
                        "errors still go to stderr, one line each.")
    settings: dict[str, Any] = field(default_factory=dict)  # options the techniques declare, by key
    extra: dict[str, str] = field(default_factory=dict, metadata={"flag": Flag(
        "An option for a plugin technique that declares none (repeatable), read from options.extra.",
        type=_Parsed(_key_value, "KEY=VALUE"), multiple=True, name="option")})
    declared: tuple[Option, ...] = field(default=(), repr=False, compare=False)  # set by with_declared

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)

    def with_declared(self, options: tuple[Option, ...]) -> RunOptions:
        """These options with every declared technique option parsed and defaulted; a bad value names its flag."""
        try:
            settings = complete_settings(self.settings, options)
        except ValueError as error:
            raise AuditorError(str(error)) from None
        try:
            _colormap(self.colormap)  # also when given from Python, not through the flag's parser
        except ValueError as error:
            raise AuditorError(f"--colormap: {error}") from None
        return self.replace(settings=settings, declared=options)

    def of(self, technique: type | object) -> dict[str, Any]:
        """A technique's own option values by key (`kernel_layers`), defaults where not given."""
        return {o.key: self.settings.get(o.key, o.default) for o in getattr(technique, "options", ())}

    def as_record(self) -> dict[str, Any]:
        """Every option as JSON-ready values, the techniques' own after the core ones: the audit record."""
        record: dict[str, Any] = {}
        for f in core_fields():
            value = getattr(self, f.name)
            record[f.name] = list(value) if isinstance(value, tuple) else value
        for key, value in self.settings.items():
            record[key] = list(value) if isinstance(value, tuple) else value
        return record

    def command_line(self) -> str:
        """The `auditor run` command that reproduces these options (defaults left out)."""
        defaults = RunOptions()
        args = ["auditor", "run", *self.images]
        for f in core_fields():
            value = getattr(self, f.name)
            if f.name == "images" or value == getattr(defaults, f.name):
                continue
            flag, *negation = flag_names(f)
            if isinstance(value, bool):
                args += [flag] if value else negation
            elif isinstance(value, dict):
                args += [part for key, val in value.items() for part in (flag, f"{key}={val}")]
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


def core_fields() -> list[dataclasses.Field[Any]]:
    """The RunOptions fields that are `auditor run` flags: all but the techniques' settings."""
    return [f for f in dataclasses.fields(RunOptions) if "flag" in f.metadata]


def flag_names(f: dataclasses.Field[Any]) -> list[str]:
    """A core field's flags: ["--batch-size"], or ["--pdf", "--no-pdf"] for one that is on by default."""
    name = f.metadata["flag"].name or f.name.replace("_", "-")
    return [f"--{name}", f"--no-{name}"] if f.default is True else [f"--{name}"]


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
    known = {f.name for f in core_fields()} | technique_keys
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise AuditorError(f"--config: {path} has an unknown option {key!r}; known: {', '.join(sorted(known))}")
        if name == "images":
            defaults["images"] = [value] if isinstance(value, str) else list(value)
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
