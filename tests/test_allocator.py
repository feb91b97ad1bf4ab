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
