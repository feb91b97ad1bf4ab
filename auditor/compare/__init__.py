"""`auditor compare RUN_A RUN_B`: what changed between two report folders, as a Report of its own.

Torch-free: it reads each folder's report.json and maps.safetensors (auditor.report.maps) and builds
plain Sections (auditor.document), rendered by the same machinery as an audit (auditor.report).
"""

from __future__ import annotations

from auditor.compare.build import compare_runs
from auditor.compare.runs import Run, load_run
from auditor.compare.similarity import spearman, top_iou

__all__ = ["Run", "compare_runs", "load_run", "spearman", "top_iou"]
