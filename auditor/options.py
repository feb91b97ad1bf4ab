"""Options a technique declares for itself, as pytest plugins do with `pytest_addoption`.

From these declarations come the `auditor run` flags and their help, the config-file keys, the
option list in the audit record and the command that reproduces a run, for built-ins and plugins
alike. Torch-free: `auditor run --help` reads every declaration without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

# "layer", "layers" and "classes" parse as "text", "names" and "names" and are then checked against
# the model before any technique runs (auditor.option_checks).
Kind = Literal["int", "float", "text", "names", "indices", "choice", "choices", "flag", "layer", "layers", "classes"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Option:
    """One option of a technique: `--NAME` on the command line, NAME in a config file.

    `parse` accepts what a user can write anywhere (a command-line string, a TOML value, a Python
    value) and returns the checked value, or raises ValueError saying what to write instead.
    `None` always means "not given": the technique's `default` (None itself can mean "automatic").
    """

    name: str  # "kernel-layers"
    help: str
    default: Any = None
    kind: Kind = "text"
    choices: tuple[str, ...] = ()
    low: float | None = None  # inclusive bounds for int and float
    high: float | None = None
    metavar: str = ""

    @property
    def key(self) -> str:
        """The Python name: `kernel_layers`."""
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    def parse(self, value: Any) -> Any:
        if value is None:
            return None
        parser = {"int": self._number, "float": self._number, "text": _text, "names": split_names,
                  "indices": _indices, "choice": self._choice, "choices": self._choices, "flag": _flag, "layer": _text, "layers": split_names,
                  "classes": split_names}[self.kind]
        return parser(value)

    def format(self, value: Any) -> str:
        """The value as typed on the command line ("" for unset)."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (tuple, list)):
            return ",".join(str(v) for v in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    def _number(self, value: Any) -> int | float:
        kind = int if self.kind == "int" else float
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"give {'an integer' if kind is int else 'a number'}, not {value!r}")
        try:
            number = _exact_int(value) if kind is int and isinstance(value, float) else kind(value)
        except ValueError:
            raise ValueError(f"{value!r} is not {'an integer' if kind is int else 'a number'}") from None
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            bounds = [f">= {self.low:g}" if self.low is not None else "", f"<= {self.high:g}" if self.high is not None
                      else ""]
            raise ValueError(f"{number:g} is out of range: give a value {' and '.join(b for b in bounds if b)}")
        return number

    def _choice(self, value: Any) -> str:
        text = _text(value)
        if text not in self.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(self.choices)}")
        return text

    def _choices(self, value: Any) -> tuple[str, ...]:
        """Several of `choices`, comma-separated, in the order given; "all" is every one, in the declared order."""
        names = split_names(value)
        if names == ("all",):
            return self.choices
        unknown = [name for name in names if name not in self.choices]
        if unknown or not names:
            raise ValueError(f"{', '.join(map(repr, unknown)) or 'nothing'} is not among {', '.join(self.choices)} "
                             "(or all)")
        return tuple(dict.fromkeys(names))


def _exact_int(value: float) -> int:
    if not value.is_integer():
        raise ValueError
    return int(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"give a text value, not {value!r}")
    return value.strip()


def split_names(value: Any) -> tuple[str, ...]:
    """"a,b" or ["a", "b"] -> ("a", "b"); numbers are kept as text (class indices, say)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, (str, int)) for v in items):
        raise ValueError(f"give comma-separated names, not {value!r}")
    return tuple(str(v).strip() for v in items if str(v).strip())


def _indices(value: Any) -> tuple[int, ...]:
    """"0:160:10,200" or [0, 5] -> integers; START:STOP[:STEP] ranges stop before STOP, as in Python."""
    parts = value.split(",") if isinstance(value, str) else value
    if isinstance(parts, int) and not isinstance(parts, bool):
        parts = [parts]
    if not isinstance(parts, (list, tuple)):
        raise ValueError(f"give indices such as 0,5,9 or 0:160:10, not {value!r}")
    found: list[int] = []
    for part in parts:
        text = str(part).strip()
        if not text:
            continue
        try:
            numbers = [int(n) for n in text.split(":")]
        except ValueError:
            raise ValueError(f"{text!r} is not an index or a START:STOP[:STEP] range") from None
        if len(numbers) == 1:
            found.append(numbers[0])
        elif len(numbers) in (2, 3) and (len(numbers) == 2 or numbers[2] > 0):
            found.extend(range(*numbers))
        else:
            raise ValueError(f"{text!r} is not a START:STOP[:STEP] range with a positive step")
    if any(n < 0 for n in found):
        raise ValueError("indices start at 0")
    return tuple(dict.fromkeys(found))


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"give true or false, not {value!r}")


def declared(technique: type) -> tuple[Option, ...]:
    """A technique's declared options (none when it declares none, as older plugins do)."""
    return tuple(getattr(technique, "options", ()))


def complete_settings(given: Mapping[str, Any], options: Iterable[Option]) -> dict[str, Any]:
    """Every declared option's value by key: `given` parsed (by key or flag name), defaults for the rest.

    Raises ValueError naming the flag for a bad value, and for a key no technique declares.
    """
    by_key = {o.key: o for o in options}
    settings = {key: option.default for key, option in by_key.items()}
    for name, value in given.items():
        option = by_key.get(name.replace("-", "_"))
        if option is None:
            known = ", ".join(o.flag for o in by_key.values()) or "none"
            raise ValueError(f"no technique declares the option {name!r}; known: {known}")
        try:
            parsed = option.parse(value)
        except ValueError as error:
            raise ValueError(f"{option.flag}: {error}") from None
        if parsed is not None:
            settings[option.key] = parsed
    return settings
