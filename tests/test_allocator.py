"""The allocator setting that makes CPU forward passes reuse freed blocks (auditor.allocator)."""

from __future__ import annotations

import platform
import sys

import pytest

from auditor import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt")
def test_glibc_keeps_freed_blocks() -> None:
    assert allocator.reuse_freed_memory() is True
    assert allocator.reuse_freed_memory() is True  # again: the same settings


def test_elsewhere_nothing_is_changed(monkeypatch) -> None:
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.reuse_freed_memory() is False


def test_the_heap_is_frozen_for_the_block_and_a_callers_own_freeze_is_kept():
    import gc

    assert gc.get_freeze_count() == 0
    with allocator.frozen_heap():
        assert gc.get_freeze_count() > 1000  # this test process's objects
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with allocator.frozen_heap():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen  # not undone
    finally:
        gc.unfreeze()
