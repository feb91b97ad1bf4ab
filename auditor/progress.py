"""Progress of an audit: what the long techniques report as they go (images, channels, steps done).

Torch-free. A technique asks `ctx.progress(total, unit)` for an `advance(n=1)` callable, or wraps a
loop in `ctx.progress.each(items, unit)`; the default, `Progress`, does nothing, so the library and
notebooks stay quiet. The command line passes `TerminalProgress` on a terminal: one tqdm bar per
technique, with the count done and the time left.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")
Advance = Callable[..., None]  # advance(n=1)


def _nothing(n: int = 1) -> None:
    return None


class Progress:
    """No progress shown: the default. Subclasses override `start`, `bar` and `close`."""

    def start(self, name: str, index: int, total: int) -> None:
        """Technique `name` (number `index` of `total`, from 0) begins."""

    def bar(self, total: int | None, unit: str) -> Advance:
        """A count of `total` `unit` (None: unknown) for the running technique; returns advance(n=1)."""
        return _nothing

    def close(self) -> None:
        """The running technique ended."""

    def __call__(self, total: int | None, unit: str) -> Advance:
        return self.bar(total, unit)

    def each(self, items: Iterable[T], unit: str, total: int | None = None,
             count: Callable[[T], int] | None = None) -> Iterator[T]:
        """`items`, the count advancing once the caller is done with each (by `count(item)`, default 1; total:
        len(items) when it has one)."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        advance = self.bar(total, unit)
        for item in items:
            yield item
            advance(1 if count is None else count(item))


class Callback(Progress):
    """The older interface: a function called with (technique name, index, total) as each one starts."""

    def __init__(self, function: Callable[[str, int, int], None]) -> None:
        self.function = function

    def start(self, name: str, index: int, total: int) -> None:
        self.function(name, index, total)


class TerminalProgress(Progress):
    """One tqdm bar per technique on `stream` (stderr): "[2/9] grad-cam  3/6 images [00:01<00:02]".

    A technique that reports no count still shows its line, with the time it took.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.label = "forward pass"  # before the first technique: the shared forward pass
        self.current: Any = None

    def start(self, name: str, index: int, total: int) -> None:
        self.close()
        self.label = f"[{index + 1}/{total}] {name}"
        self.current = self._new(None, "")

    def _new(self, total: int | None, unit: str) -> Any:
        from tqdm import tqdm

        return tqdm(total=total, unit=f" {unit}" if unit else "", desc=self.label, file=self.stream, leave=True,
                    ncols=self._size()[0], nrows=self._size()[1], bar_format=None if total else "{desc} {n_fmt}{unit} [{elapsed}]",
                    unit_scale=False)

    def _size(self) -> tuple[int, int]:
        """The terminal's columns and rows; 80 x 24 where it reports none (a fresh pseudo-terminal says 0 x 0,
        and tqdm hides bars below a height of 0)."""
        try:
            size = os.get_terminal_size(self.stream.fileno())
        except (OSError, ValueError, AttributeError):
            return 80, 24
        return size.columns or 80, size.lines or 24

    def bar(self, total: int | None, unit: str) -> Advance:
        if self.current is None:
            self.current = self._new(total, unit)
        else:  # a technique's next count (say, its images after its forward pass): the same line, reset
            self.current.reset(total=total)
            self.current.unit = f" {unit}" if unit else ""
            if total:
                self.current.bar_format = None
        bar = self.current
        return lambda n=1: bar.update(n)

    def close(self) -> None:
        if self.current is not None:
            if self.current.total is None or self.current.total == 0:
                self.current.bar_format = "{desc} [{elapsed}]"
            self.current.close()
            self.current = None

    @staticmethod
    def write(line: str, stream: IO[str] | None = None) -> None:
        """One line (a warning) above the bars, which are redrawn below it."""
        from tqdm import tqdm

        tqdm.write(line, file=stream or sys.stderr)


NO_PROGRESS = Progress()


def as_progress(progress: Progress | Callable[[str, int, int], None] | None) -> Progress:
    """A Progress from what run_audit was given: one, a (name, index, total) function, or None (quiet)."""
    if progress is None:
        return NO_PROGRESS
    if isinstance(progress, Progress):
        return progress
    return Callback(progress)
