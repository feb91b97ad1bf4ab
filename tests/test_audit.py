"""run_audit: the user's model comes back exactly as given, failures stay in their section, same seed same numbers."""

from __future__ import annotations

import json

import pytest
import torch
from plugin_fixture import install_fake_plugin
from torch import nn

from auditor import RunOptions, run_audit
from auditor.report.manifest import render_json
from tests.toolkit import CHEAP, assert_unchanged, audit, audit_section, snapshot


def _tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 3))


def test_user_model_is_returned_exactly_as_given() -> None:
    module = _tiny_classifier()
    module.train()
    module[1].eval()  # a mixed mode, as a user fine-tuning with frozen batch norm would have
    module[0].weight.requires_grad_(False)
    calls = []
    module[2].register_forward_hook(lambda *args: calls.append(1))
    before = snapshot(module)

    report = audit(module, **CHEAP)  # every technique, on 32 px inputs

    assert [s.error for s in report.sections] == [None] * len(report.sections)
    assert len(report.sections) >= 5  # every built-in ran on it
    assert_unchanged(module, before)
    assert calls, "the user's own hook must still run during the audit"
    assert report.record["model"]["classes"] is None
    assert len(report.sections[0].metrics["images"][0]["top"]) == 3  # top-k capped at the 3 classes


def test_audit_mode_restores_what_it_found_nested_and_when_the_block_raises() -> None:
    """Eval mode and frozen parameters inside; outside, the user's mixed flags. A nested audit_mode finds the
    model in audit mode already and restores that, even when its block switched the model to training."""
    from auditor.nn.restore import audit_mode

    module = _tiny_classifier()
    module.train()
    module[1].eval()
    module[0].weight.requires_grad_(False)
    before = snapshot(module)
    with pytest.raises(RuntimeError, match="inside"), audit_mode(module) as flags:
        assert not any(m.training for m in module.modules())
        assert not any(p.requires_grad for p in module.parameters())
        assert (flags["0.weight"], flags["0.bias"]) == (False, True)
        with audit_mode(module):
            module.train()
        assert not any(m.training for m in module.modules())
        raise RuntimeError("inside")
    assert_unchanged(module, before)


def test_a_failing_technique_keeps_the_rest_of_the_report(tmp_path, monkeypatch) -> None:
    install_fake_plugin(tmp_path, name="fragile")
    monkeypatch.syspath_prepend(str(tmp_path))
    report = run_audit(options=RunOptions(techniques=("predictions", "fragile"), extra={"explode": "1"}))
    predictions, fragile = report.sections
    assert predictions.error is None and predictions.blocks
    assert fragile.error == "RuntimeError: boom from the plugin"
    assert "Traceback" in fragile.error_detail and "boom from the plugin" in fragile.error_detail
    assert report.failed == [fragile]
    assert [t["status"] for t in report.record["techniques"]] == ["ok", "failed"]


def test_strict_stops_at_the_first_failure(tmp_path, monkeypatch) -> None:
    install_fake_plugin(tmp_path, name="brittle")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="boom from the plugin"):
        run_audit(options=RunOptions(techniques=("brittle",), extra={"explode": "1"}, strict=True))


def _numbers(options: RunOptions) -> dict:
    data = json.loads(render_json(run_audit(options=options)))
    record = data["record"]
    for volatile in ("created", "seconds", "techniques"):
        record.pop(volatile)
    for section in data["sections"]:
        section.pop("seconds")
    return data


def test_same_inputs_and_seed_give_the_same_numbers() -> None:
    options = RunOptions(techniques=("predictions",), seed=7)
    assert _numbers(options) == _numbers(options)


def test_batch_size_does_not_change_the_numbers() -> None:
    one = run_audit(options=RunOptions(techniques=("predictions",), batch_size=1))
    five = run_audit(options=RunOptions(techniques=("predictions",), batch_size=5))
    first = [i["top"] for i in one.sections[0].metrics["images"]]
    second = [i["top"] for i in five.sections[0].metrics["images"]]
    for a, b in zip(first, second):
        assert [x["class"] for x in a] == [x["class"] for x in b]
        assert [x["probability"] for x in a] == pytest.approx([x["probability"] for x in b], abs=1e-5)


def test_trainable_parameters_are_counted_as_the_user_set_them() -> None:
    module = _tiny_classifier()
    module[0].requires_grad_(False)  # a frozen first conv: 3*4*9 + 4 = 112 parameters
    metrics = audit_section(module, "architecture", size=None).metrics
    assert metrics["total_parameters"] == 112 + 8 + 15
    assert metrics["trainable_parameters"] == 8 + 15


def test_random_weights_are_reproducible_from_the_seed() -> None:
    options = RunOptions(model="mobilenet_v3_small", weights="none", input_size=64, techniques=("predictions",), seed=5)
    first, second = run_audit(options=options), run_audit(options=options)
    assert first.record["model"]["state_dict_sha256"] == second.record["model"]["state_dict_sha256"]
    other = run_audit(options=options.replace(seed=6))
    assert other.record["model"]["state_dict_sha256"] != first.record["model"]["state_dict_sha256"]
    assert "Random weights" in first.record["model"]["notes"][0]


def test_run_order_honours_after_but_keeps_registry_order_otherwise() -> None:
    from auditor.audit import run_order

    def technique(name: str, after: tuple[str, ...] = ()) -> type:
        return type(name, (), {"name": name, "after": after})

    trust, cam, kernels = technique("trust", ("cam", "absent")), technique("cam"), technique("kernels")
    assert [t.name for t in run_order([trust, kernels, cam])] == ["kernels", "cam", "trust"]
    loop_a, loop_b = technique("a", ("b",)), technique("b", ("a",))
    assert [t.name for t in run_order([loop_a, loop_b])] == ["a", "b"]  # a cycle runs as listed
