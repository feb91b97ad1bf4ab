"""Progress: a bar per technique under a pseudo-terminal; nothing but the written files without one, or with --quiet."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_models import TINY_FACTORY_FILE_SPEC

from auditor.progress import NO_PROGRESS, Callback, TerminalProgress, as_progress

ROOT = Path(__file__).resolve().parents[1]
pty = pytest.importorskip("pty")  # POSIX only


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "auditor", "run", "-m", TINY_FACTORY_FILE_SPEC, "--input-size", "32", "--no-pdf",
            "-t", "predictions,cam", "--device", "cpu", "-o", str(out), *extra]


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _under_terminal(command: list[str]) -> tuple[str, str, int]:
    """What the command writes to a pseudo-terminal (its stderr), its stdout (a pipe) and its exit status."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, stdin=slave, stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=_environment())
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stdout = proc.stdout.read().decode()
    proc.stdout.close()
    return b"".join(chunks).decode(errors="replace"), stdout, proc.wait()


def _written_lines(stdout: str, out: Path) -> list[str]:
    return [f"html: {out / 'report.html'}", f"json: {out / 'report.json'}", f"maps: {out / 'maps.safetensors'}"]


def test_a_bar_per_technique_on_a_terminal(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")  # 2 names for 5 outputs: a warning while the bars run
    terminal, stdout, status = _under_terminal(_command(tmp_path, "--labels", str(names)))
    assert status == 0, terminal
    warnings = [line for line in terminal.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "--labels: the model has 5 outputs but 2 class names" in warnings[0]
    assert "forward pass" in terminal and "[1/2] predictions" in terminal
    assert "[2/2] cam" in terminal and "100%" in terminal and " images" in terminal  # the CAM gallery, counted
    assert "<00:00" in terminal  # the time left
    assert stdout.splitlines() == _written_lines(stdout, tmp_path)


def test_quiet_on_a_terminal_shows_no_bar(tmp_path: Path) -> None:
    terminal, stdout, status = _under_terminal(_command(tmp_path, "--quiet"))
    assert status == 0, terminal
    assert terminal.strip() == ""
    assert stdout.splitlines() == _written_lines(stdout, tmp_path)


def test_without_a_terminal_only_the_written_files(tmp_path: Path) -> None:
    done = subprocess.run(_command(tmp_path), check=False, capture_output=True, text=True, cwd=ROOT, env=_environment())
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines() == _written_lines(done.stdout, tmp_path)


def test_terminal_progress_counts_and_the_default_is_silent() -> None:
    stream = io.StringIO()
    shown = TerminalProgress(stream)
    shown.start("cam", 1, 4)
    assert list(shown.each(range(3), "images")) == [0, 1, 2]
    shown.close()
    assert "[2/4] cam" in stream.getvalue() and "3/3" in stream.getvalue()
    assert list(NO_PROGRESS.each([1, 2], "steps")) == [1, 2] and NO_PROGRESS(5, "images")() is None
    calls: list[tuple[str, int, int]] = []
    as_progress(lambda *a: calls.append(a)).start("grad-cam", 0, 2)  # the older (name, index, total) callback
    assert calls == [("grad-cam", 0, 2)] and isinstance(as_progress(print), Callback)
    assert as_progress(None) is NO_PROGRESS
