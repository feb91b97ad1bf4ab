"""maps.safetensors: the arrays the sections keep for later (Section.arrays), in one safetensors file.

Torch-free (safetensors' numpy interface). The bytes depend only on the arrays, so the record can
name the file's sha256 before the file is written; `read_maps` gives them back as float32 arrays.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from auditor.document import Section

MAPS_FILE = "maps.safetensors"


def kept_arrays(sections: list[Section]) -> dict[str, Any]:
    """Every section's arrays by key, in section order."""
    return {key: array for section in sections for key, array in section.arrays.items()}


def maps_bytes(sections: list[Section]) -> bytes | None:
    """The safetensors file of the sections' arrays; None when none kept any (no CAM section, say)."""
    arrays = kept_arrays(sections)
    if not arrays:
        return None
    from safetensors.numpy import save

    # one metadata entry: the header keeps metadata in a hash map, whose order (and so the bytes) would vary
    return save({key: np.ascontiguousarray(value) for key, value in sorted(arrays.items())},
                metadata={"format": "auditor maps: <image sha256>/<method key>"})


def maps_record(sections: list[Section]) -> dict[str, Any] | None:
    """The record's entry: the file, its sha256 and its keys; None when there is no file."""
    data = maps_bytes(sections)
    if data is None:
        return None
    return {"file": MAPS_FILE, "sha256": hashlib.sha256(data).hexdigest(),
            "keys": sorted(kept_arrays(sections)), "dtype": "float16"}


def read_maps(folder: str | Path) -> dict[str, np.ndarray]:
    """The maps a report folder kept, as float32 arrays by key; {} when it has no maps.safetensors."""
    path = Path(folder) / MAPS_FILE
    if not path.exists():
        return {}
    from safetensors.numpy import load

    return {key: value.astype(np.float32) for key, value in load(path.read_bytes()).items()}
