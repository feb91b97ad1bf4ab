"""Memory the audit process manages for speed.

Freed memory kept for reuse: glibc's malloc returns every block above its mmap threshold (at most 32 MiB)
to the kernel when it is freed, so a CPU forward pass of a batch allocates its activations as fresh pages,
which the kernel zero-fills one page fault at a time. On EfficientNet-Lite0 at 16 images of 224 px that is
a third of the pass (bench/bench_trust.py). Raising the mmap and trim thresholds to 1 GiB makes the heap
reuse those blocks instead, at the price of a peak resident size that is not handed back until the process
ends (about 0.8 GB more on the default audit). Torch-free; a no-op where the C library is not glibc.

The objects alive when an audit starts kept out of the garbage collector's scans (`frozen_heap`): torch,
matplotlib and the model are some 400,000 objects, which each full collection Python starts on its own
walks again, 0.4 s each time on the default audit, for nothing to free.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["KEEP_BYTES", "frozen_heap", "reuse_freed_memory"]

KEEP_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to KEEP_BYTES for this process (and the workers it forks);
    True when they were set. Calling it again changes nothing."""
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # musl and other C libraries have none
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Within the block, the objects alive at its start are frozen (gc.freeze): the collector still frees what
    the block makes, and scans only that. A caller that froze objects itself keeps its own freeze."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
