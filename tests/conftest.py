"""Shared fixtures: tiny_model (a seeded TinyNet), make_image (writes images under tmp_path),
lite0_model (the real default model, loaded once per session) and default_report (the default audit
with its PDF, run once per session: tests that use it are marked slow); every test runs on one torch
thread unless OMP_NUM_THREADS says otherwise.

The rest of the toolkit: tests/toolkit.py (snapshot, assert_unchanged, audit, audit_section, CHEAP) and
tests/fixtures_models.py (tiny, tiny_vit, tiny_swin)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so `tests.fixtures_models:tiny` imports without an editable install
    sys.path.append(str(REPO_ROOT))

from tests.fixtures_models import tiny

# Model specs for the tiny model: import TINY_FACTORY_IMPORT_SPEC / TINY_FACTORY_FILE_SPEC from
# tests.fixtures_models ("tests.fixtures_models:tiny" and "/abs/path/tests/fixtures_models.py:tiny").


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread unless OMP_NUM_THREADS asks for more: the tests' inputs are small and gain
    little from more, and on busy shared cores more threads thrash (the fast run took 8.7 min with two
    threads on two cores that others were using too)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model():
    """A fresh TinyNet (tests/fixtures_models.py): 3x?x? input, 5 classes, seeded weights, eval mode."""
    return tiny()


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """make_image(name, size=(w, h), color=(r, g, b), mode="RGB", **save_options) -> path under tmp_path.

    `name` may contain folders ("cat/x.png"); the format comes from its suffix. Pass `image=` to save
    an existing PIL image instead of a solid colour.
    """

    def make(name: str, size: tuple[int, int] = (64, 48), color=(200, 100, 50), mode: str = "RGB",
             image: Image.Image | None = None, **save_options) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (image if image is not None else Image.new(mode, size, color)).save(path, **save_options)
        return path

    return make


@pytest.fixture(scope="session")
def lite0_model():
    """The built-in default model (EfficientNet-Lite0, real weights), loaded once. Do not modify it."""
    from auditor.inputs.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def default_report(tmp_path_factory: pytest.TempPathFactory):
    """`auditor run --figures` as it comes (EfficientNet-Lite0 on the bundled photos, every technique at
    its defaults), written once with the PDF and the figure files: (report, {"html": path, ...}).
    Some 45 s on one core; mark the tests that use it slow."""
    from auditor import RunOptions, run_audit, write_report

    out = tmp_path_factory.mktemp("default-report")
    report = run_audit(options=RunOptions(out=str(out)))
    return report, write_report(report, out, pdf=True, figures=True)


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses default_report is slow, marked or not: the fast run never builds it."""
    for item in items:
        if "default_report" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
