"""The registry: built-ins in report order, third-party entry points, broken plugins, clashes, selection."""

from __future__ import annotations

import pytest
from plugin_fixture import install_fake_plugin, install_plugin

from auditor.errors import AuditorError, TechniqueClashError
from auditor.registry import BUILTINS, discover, select


def test_builtins_come_first_in_report_order() -> None:
    found = discover()
    names = list(found)
    assert names[: len(BUILTINS)] == ["predictions", "performance", "trust", "architecture", "kernels",
                                      "feature-maps", "reconstructions", "cam", "attribution", "maximization"]
    assert all(registered.technique.summary.strip() for registered in found.values())  # `auditor techniques`


@pytest.mark.parametrize(("name", "source", "message"), [
    ("nosummary", "class Bare:\n    name, title = 'nosummary', 'Bare'\n    def run(self, ctx, options): ...\n",
     r"^technique from fake-plugin-nosummary \(nosummary = fake_plugin_nosummary:Bare\) has no 'summary'; "
     r"see the README's plugin guide$"),
    ("badoptions", "class Bare:\n    name, title, summary = 'badoptions', 'Bare', 'x'\n    options = ('depth',)\n"
                   "    def run(self, ctx, options): ...\n",
     r"^technique 'badoptions' from fake-plugin-badoptions .*: `options` must be a tuple of auditor.options.Option$"),
    ("unimportable", "import no_such_module_for_auditor_tests\n",
     r"^plugin 'unimportable' from fake-plugin-unimportable failed to load: No module named "
     r"'no_such_module_for_auditor_tests'$"),
])
def test_a_plugin_that_is_not_a_technique_is_one_line_naming_it(tmp_path, monkeypatch, name, source, message) -> None:
    install_plugin(tmp_path, name, f"fake_plugin_{name}", source, "Bare")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AuditorError, match=message):
        discover()


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
