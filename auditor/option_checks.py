"""Layer and class names that options refer to, checked against the model before any technique runs.

A typo in `--cam-layer` or `--cam-classes` is then one line and exit status 1 at once, not a
failed section after a long audit.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from torch import nn

from auditor.config import RunOptions
from auditor.errors import AuditorError
from auditor.nn.layers import resolve_layer


def _simple(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name).strip().lower()


def resolve_classes(given: Sequence[str], class_names: Sequence[str], option: str = "--cam-classes") -> list[int]:
    """Class indices for names (case, `_` and spaces ignored) or indices; a bad one is a one-line error."""
    lookup = {_simple(name): index for index, name in reversed(list(enumerate(class_names)))}
    found = []
    for item in given:
        if item.isdigit():
            if int(item) >= len(class_names):
                raise AuditorError(f"{option}: class {item} is out of range; the model has {len(class_names)} "
                                   f"classes (0 to {len(class_names) - 1})")
            found.append(int(item))
        elif _simple(item) in lookup:
            found.append(lookup[_simple(item)])
        else:
            close = difflib.get_close_matches(_simple(item), list(lookup), n=3, cutoff=0.6)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise AuditorError(f"{option}: no class named {item!r}{hint}; give a class name or index")
    return list(dict.fromkeys(found))


def check_references(options: RunOptions, module: nn.Module, model_name: str, class_names: Sequence[str]) -> None:
    """Every declared option of kind layer, layers or classes names something the model has."""
    for option in options.declared:
        value = options.settings.get(option.key)
        if not value:
            continue
        if option.kind in ("layer", "layers"):
            for name in (value,) if isinstance(value, str) else value:
                resolve_layer(module, name, option.flag, model_name)
        elif option.kind == "classes":
            resolve_classes(value, class_names, option.flag)
