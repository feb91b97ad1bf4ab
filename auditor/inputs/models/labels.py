"""Class names from a --labels file."""

from __future__ import annotations

import json
from pathlib import Path

from auditor.errors import AuditorError


def read_labels(path: Path) -> list[str]:
    """Class names from a text file (one per line) or JSON (a list, or a mapping from index to name)."""
    if not path.is_file():
        raise AuditorError(f"--labels: {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise AuditorError(f"--labels: cannot read {path} as UTF-8 text ({error})") from None
    if path.suffix.lower() != ".json":
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise AuditorError(f"--labels: {path} is not valid JSON ({error})") from None
        if isinstance(data, dict):
            try:
                data = names_by_index(data)
            except ValueError as error:
                raise AuditorError(f"--labels: the keys of {path} must be {error}") from None
        if not isinstance(data, list):
            raise AuditorError(f"--labels: {path} must hold a list of names or an index-to-name mapping")
        names = [str(v) for v in data]
    if not names:
        raise AuditorError(f"--labels: {path} holds no class names")
    return names


def names_by_index(mapping: dict) -> list[str]:
    """An index-to-name mapping ({"0": "cat", ...}) as a list; a gap gets the index itself as its name.

    Raises ValueError("class indices" / "class indices from 0") for keys that are not.
    """
    try:
        items = sorted(((int(k), v) for k, v in mapping.items()), key=lambda item: item[0])
    except (TypeError, ValueError):
        raise ValueError("class indices") from None
    if items and items[0][0] < 0:
        raise ValueError("class indices from 0")
    by_index = {i: (v[-1] if isinstance(v, list) and v else v) for i, v in items}
    return [str(by_index.get(i, str(i))) for i in range(items[-1][0] + 1)] if items else []
