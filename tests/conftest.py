"""Shared fixtures: tiny_model (a seeded TinyNet), make_image (writes images under tmp_path), and
lite0_model (the real default model, loaded once per session)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so `tests.fixtures_models:tiny` imports without an editable install
    sys.path.append(str(REPO_ROOT))

from tests.fixtures_models import tiny  # noqa: E402

# Model specs for the tiny model: import TINY_FACTORY_IMPORT_SPEC / TINY_FACTORY_FILE_SPEC from
# tests.fixtures_models ("tests.fixtures_models:tiny" and "/abs/path/tests/fixtures_models.py:tiny").


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
