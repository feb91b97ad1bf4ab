"""auditor: a PyTorch image classifier and a folder of images in, a self-contained visual audit report out.

The public names are imported lazily so that `auditor --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "AuditorError": "auditor.errors",
    "ImageSet": "auditor.inputs.images",
    "LoadedModel": "auditor.inputs.models",
    "Report": "auditor.document",
    "RunOptions": "auditor.config",
    "load_images": "auditor.inputs.images",
    "load_model": "auditor.inputs.models",
    "run_audit": "auditor.audit",
    "write_report": "auditor.report",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from auditor.audit import run_audit
    from auditor.config import RunOptions
    from auditor.document import Report
    from auditor.errors import AuditorError
    from auditor.inputs.images import ImageSet, load_images
    from auditor.inputs.models import LoadedModel, load_model
    from auditor.report import write_report


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'auditor' has no attribute {name!r}")
