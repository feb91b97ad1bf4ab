"""The registry: built-ins in report order, third-party entry points, clashes, selection."""

from __future__ import annotations

import pytest
from plugin_fixture import install_fake_plugin

from auditor.errors import AuditorError, TechniqueClashError
from auditor.registry import BUILTINS, Technique, discover, select


def test_builtins_come_first_in_report_order() -> None:
    found = discover()
    names = list(found)
    assert names[: len(BUILTINS)] == ["predictions", "trust", "architecture", "kernels", "feature-maps",
                                      "reconstructions", "cam", "maximization"]
    for registered in found.values():
        assert isinstance(registered.technique(), Technique)
        assert registered.technique.summary.strip()


def test_third_party_entry_point_registers_like_a_builtin(tmp_path, monkeypatch) -> None:
    install_fake_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = discover()
    assert "echo" in found
    assert "fake-plugin-echo" in found["echo"].source
    assert found["echo"].technique.__name__ == "EchoTechnique"
    assert list(found)[-1] == "echo"  # plugins after the built-ins


def test_name_clash_with_a_builtin_is_a_clear_error(tmp_path, monkeypatch) -> None:
    install_fake_plugin(tmp_path, name="predictions")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TechniqueClashError, match="two techniques are named 'predictions': built-in and "
                                                  "fake-plugin-predictions"):
        discover()


def test_select_keeps_registry_order_and_rejects_unknown_names() -> None:
    found = discover()
    assert [t.name for t in select(found, ("architecture", "predictions"), ())] == ["predictions", "architecture"]
    assert "architecture" not in [t.name for t in select(found, (), ("architecture",))]
    with pytest.raises(AuditorError, match=r"--skip: unknown technique grad-cma; known: predictions"):
        select(found, (), ("grad-cma",))
