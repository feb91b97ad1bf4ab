"""The architecture technique: layer table totals (by hand and against torchinfo), the graph, the SVG."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from auditor.config import RunOptions
from auditor.context import AuditContext
from auditor.declarations import Architecture
from auditor.document import Section
from auditor.errors import AuditorError
from auditor.inputs.images import ImageSet
from auditor.inputs.models import LoadedModel
from auditor.inputs.preprocess import Preprocess
from auditor.nn.record_calls import record_calls
from auditor.nn.restore import requires_grad_flags
from auditor.techniques.architecture.draw import (
    choose_columns,
    graph_svg,
    to_dot,
    type_summary,
)
from auditor.techniques.architecture.graph import (
    Graph,
    GraphBox,
    collapse_runs,
    fx_graph,
    network_graph,
    trace,
)
from auditor.techniques.architecture.table import layer_rows, transparent, unit_at_depth
from tests.fixtures_models import tiny_vit
from tests.toolkit import assert_unchanged, snapshot

SVG = "{http://www.w3.org/2000/svg}"


class HandNet(nn.Module):
    """Conv2d(3, 4, 3) on 3x8x8 -> 4x6x6, ReLU, flatten, Linear(144, 5): small enough to count by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.act(self.conv(x)), 1))


class Gated(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it. Reuses its ReLU, as EfficientNet-Lite0 does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        if x.sum() >= 0:  # always true after the ReLU, so the ReLU runs twice
            x = self.act(x - 1)
        return self.fc(x.mean(dim=(2, 3)))


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv(x)
        raise RuntimeError("forward failed on purpose")


def context(module: nn.Module, size: int, **options: Any) -> tuple[AuditContext, RunOptions]:
    """A context with no images, so the technique feeds one zero input of size x size."""
    loaded = LoadedModel(module, Preprocess(resize=size, crop=size), [], type(module).__name__, "test", "module", "")
    images = ImageSet()
    run_options = RunOptions(device="cpu", **options).with_declared(Architecture.options)
    return AuditContext(loaded, images, run_options, torch.device("cpu"), requires_grad_flags(module)), run_options


def run(module: nn.Module, size: int, **options: Any) -> Section:
    ctx, run_options = context(module, size, **options)
    return Architecture().run(ctx, run_options)


def svg_of(section: Section) -> str:
    return next(b for b in section.blocks if getattr(b, "mime", "") == "image/svg+xml").data.decode("utf-8")


def test_hand_computed_parameters_and_macs():
    section = run(HandNet(), 8)
    conv_params = 4 * 3 * 3 * 3 + 4  # weights + biases = 112
    fc_params = 144 * 5 + 5  # 725
    conv_macs = conv_params * 6 * 6  # each weight and bias used at each of the 6x6 output positions
    fc_macs = fc_params  # one output row
    m = section.metrics
    assert m["total_parameters"] == m["trainable_parameters"] == conv_params + fc_params
    assert m["total_macs"] == conv_macs + fc_macs == 4757
    assert m["model_size_mb"] == pytest.approx((conv_params + fc_params) * 4 / 1e6)
    assert m["input_size"] == [3, 8, 8]
    layers = {row["name"]: row for row in m["layers"]}
    assert layers["conv"]["output_shape"] == [1, 4, 6, 6] and layers["conv"]["macs"] == conv_macs
    assert layers["conv"]["hyperparameters"] == "3→4, kernel 3×3"
    assert layers["act"]["parameters"] == 0 and layers["act"]["macs"] == 0
    assert layers["fc"]["hyperparameters"] == "144→5"
    table = next(b for b in section.blocks if hasattr(b, "footer"))
    assert table.footer[4] == conv_params + fc_params and table.footer[-1] == conv_macs + fc_macs
    assert [row[0] for row in table.rows] == ["conv", "act", "fc"]


def test_trainable_follows_the_flags_given():
    model = HandNet()
    calls = record_calls(model, torch.zeros(1, 3, 8, 8))
    rows = layer_rows(model, calls, {"conv.weight": False, "conv.bias": True, "fc.weight": True, "fc.bias": False})
    assert sum(r.trainable for r in rows) == 4 + 144 * 5
    model.fc.requires_grad_(False)
    assert sum(r.trainable for r in layer_rows(model, calls)) == 112


def test_reused_module_counts_macs_per_call_and_parameters_once():
    model = nn.Sequential(nn.Linear(4, 4))
    shared = model[0]

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = shared

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(self.layer(x))

    rows = layer_rows(Twice(), record_calls(Twice(), torch.zeros(1, 4)))
    assert [(r.name, r.calls, r.parameters, r.macs) for r in rows] == [("layer", 2, 20, 40)]


ARCHITECTURES = [
    pytest.param("resnet50", 64),
    pytest.param("mobilenet_v3_large", 64),
    pytest.param("densenet121", 64, marks=pytest.mark.slow),
    pytest.param("vgg16", 32, marks=pytest.mark.slow),  # 138 M parameters: the smallest input it accepts
]


@pytest.mark.parametrize(("name", "size"), ARCHITECTURES)
def test_totals_match_torchinfo(name: str, size: int):
    """MACs depend on the input size, so both count at the same size; the match is exact."""
    torchinfo = pytest.importorskip("torchinfo")
    model = getattr(torchvision.models, name)(weights=None).eval()
    before = snapshot(model)
    section = run(model, size)
    stats = torchinfo.summary(model, input_size=(1, 3, size, size), verbose=0)
    assert section.metrics["total_parameters"] == stats.total_params
    assert section.metrics["trainable_parameters"] == stats.trainable_params
    assert section.metrics["total_macs"] == stats.total_mult_adds
    assert_unchanged(model, before)  # torchinfo's hooks and ours are gone


def test_resnet_collapses_repeated_blocks_at_depth_one():
    model = torchvision.models.resnet50(weights=None).eval()
    example = torch.zeros(1, 3, 64, 64)
    traced = trace(model, example)
    shallow = collapse_runs(fx_graph(traced, model, 1))
    dot = to_dot(shallow, "ResNet50")
    for stage, blocks in (("layer1", 3), ("layer2", 4), ("layer3", 6), ("layer4", 3)):
        assert f"{stage}\\n{blocks} × Bottleneck" in dot
    assert "conv1 · bn1 · relu\\nConv2d · BatchNorm2d · ReLU\\n64×32×32" in dot
    assert len(shallow.boxes) == 10
    deeper = collapse_runs(fx_graph(traced, model, 2))
    assert len(deeper.boxes) > 4 * len(shallow.boxes)
    assert "layer1.0.downsample" in to_dot(deeper, "ResNet50")


def test_type_summary():
    assert type_summary(["Bottleneck"] * 3) == "3 × Bottleneck"
    assert type_summary(["Conv2d", "ReLU"] * 2) == "2 × (Conv2d · ReLU)"
    assert type_summary(["Conv2d", "BatchNorm2d", "ReLU"]) == "Conv2d · BatchNorm2d · ReLU"
    assert type_summary(["Linear"]) == "Linear"


def test_untraceable_model_gets_table_tree_and_note():
    section = run(Gated(), 8)
    assert section.metrics["graph"]["kind"] == "module tree"
    assert any("torch.fx could not trace" in note and "TraceError" in note for note in section.notes)
    assert section.metrics["total_parameters"] == 4 * 3 * 9 + 4 + 4 * 2 + 2
    act = next(r for r in section.metrics["layers"] if r["name"] == "act")
    assert act["calls"] == 2
    ET.fromstring(svg_of(section))
    assert "Module hierarchy" in next(b for b in section.blocks if hasattr(b, "mime")).caption


def ids_and_references(svg: str) -> tuple[list[str], list[str]]:
    root = ET.fromstring(svg)
    ids = [el.get("id") for el in root.iter() if el.get("id") is not None]
    refs = [v[1:] for el in root.iter() for k, v in el.attrib.items() if k.endswith("href") and v.startswith("#")]
    refs += re.findall(r"url\(#([^)]*)\)", svg)
    return ids, refs


def test_svg_is_inlinable_with_unique_prefixed_ids():
    svg = svg_of(run(torchvision.models.resnet18(weights=None).eval(), 32))
    assert svg.startswith("<svg") and "<?xml" not in svg and "DOCTYPE" not in svg
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("viewBox")
    assert root.get("width", "").endswith("px") and root.get("height", "").endswith("px")
    assert root.get("style") is None  # WeasyPrint squeezes a tall SVG styled height:auto on the element
    ids, refs = ids_and_references(svg)
    assert ids and len(ids) == len(set(ids)) and all(i.startswith("architecture-graph-") for i in ids)
    assert set(refs) <= set(ids)


def test_two_svgs_on_one_page_share_no_id():
    graph = Graph([GraphBox(["input"], ["input"], "input", "", "3×8×8"), GraphBox(["fc"], ["Linear"], "layer", "", "5")],
                  {(0, 1)})
    first, second = graph_svg(graph, "A", "first-"), graph_svg(graph, "B", "second-")
    page = ET.fromstring(f'<html xmlns="http://www.w3.org/1999/xhtml"><body>{first}{second}</body></html>')
    ids = [el.get("id") for el in page.iter() if el.get("id") is not None]
    assert len(ids) == len(set(ids)) > 2


def test_tall_graphs_wrap_into_columns():
    assert choose_columns(160, 300) == 1
    assert choose_columns(160, 1200) > 1
    chain = Graph([GraphBox([f"l{i}"], ["Linear"], "layer", "", "8") for i in range(30)], {(i, i + 1) for i in range(29)})
    assert "constraint=false" in to_dot(chain, "M", columns=3)
    assert "rank=same" in to_dot(chain, "M", columns=3)
    assert "constraint=false" not in to_dot(chain, "M")


def test_model_is_left_unchanged():
    model = Gated().train()
    model.fc.requires_grad_(False)
    before = snapshot(model)
    run(model, 8)
    assert_unchanged(model, before)


def test_hooks_are_removed_when_the_forward_raises():
    model = Broken()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="on purpose"):
        run(model, 8)
    assert_unchanged(model, before)


def test_graph_depth_below_one_is_a_user_error():
    with pytest.raises(AuditorError, match="--graph-depth"):
        run(HandNet(), 8, settings={"graph_depth": 0})


def test_network_graph_reports_why_fx_failed():
    model = Gated()
    example = torch.zeros(1, 3, 8, 8)
    graph, reason = network_graph(model, example, record_calls(model, example), 1)
    assert reason is not None and reason.startswith("TraceError")
    assert graph.direction == "LR" and len(graph.boxes) == 4  # the model, conv, act, fc


def test_tensorboard_event_file(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    section = run(HandNet(), 8, tensorboard=str(tmp_path / "tb"))
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert any("TensorBoard" in note for note in section.notes)


def test_tensorboard_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(AuditorError, match=r"pip install 'auditor\[tensorboard\]'"):
        run(HandNet(), 8, tensorboard=str(tmp_path / "tb"))


@pytest.mark.slow
def test_default_model(lite0_model):
    model = lite0_model.module
    before = snapshot(model)
    section = run(model, 224)
    m = section.metrics
    assert m["total_parameters"] == sum(p.numel() for p in model.parameters()) == 4_652_008
    assert m["total_macs"] == 385_230_568  # per call for the shared ReLU6 modules; torchinfo misses the convs
    assert any(row["calls"] > 1 for row in m["layers"])
    svg = svg_of(section)
    assert "16×112×112" in svg and "3 × MBConvBlock" in svg
    assert m["graph"] == {"kind": "torch.fx", "depth": 1, "boxes": 13}
    assert_unchanged(model, before)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_macs_by_hand(batch_first: bool):
    """E=8, 2 heads, batch 2: self-attention over 5 tokens, then cross-attention from 5 to 3 tokens.

    q and out projections: 5 * (8*8 + 8) each; k and v: tokens_kv * (8*8 + 8) each;
    QKᵀ and AV: 2 * 5 * tokens_kv * 8. Per image, times a batch of 2.
    """
    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(8, 2, batch_first=batch_first)

        def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
            x = self.attention(x, x, x, need_weights=False)[0]
            return self.attention(x, memory, memory, need_weights=False)[0]

    def tokens(count: int) -> torch.Tensor:
        return torch.zeros(2, count, 8) if batch_first else torch.zeros(count, 2, 8)

    model = Attend().eval()
    calls = record_calls_with(model, tokens(5), tokens(3))
    expected_self = 2 * (4 * 5 * 72 + 2 * 5 * 5 * 8)
    expected_cross = 2 * (2 * 5 * 72 + 2 * 3 * 72 + 2 * 5 * 3 * 8)
    assert calls["attention"].macs == expected_self + expected_cross


def record_calls_with(model: nn.Module, *inputs: torch.Tensor):
    """record_calls for a model with several inputs: wrap them so that one example goes in."""
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, first: torch.Tensor) -> torch.Tensor:
            return self.inner(first, *inputs[1:])

    calls = record_calls(Wrapped(), inputs[0])
    return {name.removeprefix("inner."): value for name, value in calls.items()}


def test_vision_transformer_counts_its_attention():
    """torchinfo misses MultiheadAttention's projections (functional calls); ours are in, by hand."""
    section = run(tiny_vit(num_layers=1), 32)
    tokens, embed = 2 * 2 + 1, 8
    attention = 4 * tokens * (embed * embed + embed) + 2 * tokens * tokens * embed
    row = next(r for r in section.metrics["layers"] if r["name"] == "encoder.layers.encoder_layer_0.self_attention")
    assert row["macs"] == attention


def test_vit_graph_collapses_the_encoder_layers_with_their_count():
    model = tiny_vit(num_layers=12)
    graph = collapse_runs(fx_graph(trace(model, torch.zeros(1, 3, 32, 32)), model, 1))
    dot = to_dot(graph, "ViT")
    assert "encoder.layers\\n12 × EncoderBlock\\n5×8" in dot  # 4 patches + the class token, 8 features
    assert "encoder.dropout" in dot and "encoder.ln" in dot and "heads.head" in dot
    assert sum("EncoderBlock" in b.types[0] for b in graph.boxes) == 1


def structure_and_full(section: Section) -> tuple[Any, Any]:
    structure, full = (b for b in section.blocks if hasattr(b, "footer"))
    return structure, full


def test_structure_table_sums_blocks_and_folds_the_full_table():
    section = run(tiny_vit(num_layers=12), 32)
    structure, full = structure_and_full(section)
    assert (structure.key, structure.folded, full.key, full.folded) == (
        "architecture-structure", False, "architecture-layers", True)
    assert full.unfold == "--table-depth 0"
    rows = {row[0]: row for row in structure.rows}
    assert list(rows) == ["(model)", "conv_proj", "encoder", "encoder.dropout", "encoder.layers", "encoder.ln",
                          "heads.head"]
    block = 2 * 8 + (3 * 8 * 8 + 3 * 8) + (8 * 8 + 8) + 2 * 8 + (8 * 16 + 16) + (16 * 8 + 8)  # ln, qkv, out, ln, mlp
    layers = rows["encoder.layers"]
    assert layers[1] == "12 × EncoderBlock" and layers[3] == "5×8" and layers[4] == 12 * block
    assert rows["encoder"][2] == "own parameters" and rows["encoder"][4] == 5 * 8  # the position embedding
    assert rows["(model)"][4] == 8  # the class token
    assert structure.footer == full.footer and structure.footer[4] == section.metrics["total_parameters"]
    assert sum(row[-1] for row in structure.rows) == section.metrics["total_macs"] == structure.footer[-1]
    assert len(section.metrics["layers"]) == len(full.rows) > 12 * 8


def test_table_depth_zero_shows_only_the_full_table():
    section = run(tiny_vit(num_layers=12), 32, settings={"table_depth": 0})
    tables = [b for b in section.blocks if hasattr(b, "footer")]
    assert [(t.key, t.folded) for t in tables] == [("architecture-layers", False)]
    assert section.metrics["table_depth"] == 0


def test_deeper_table_opens_blocks_and_keeps_totals():
    shallow, _ = structure_and_full(run(tiny_vit(num_layers=12), 32, settings={"table_depth": 1}))
    deeper, full = structure_and_full(run(tiny_vit(num_layers=12), 32, settings={"table_depth": 2}))
    assert len(shallow.rows) < len(deeper.rows) < len(full.rows)
    assert deeper.footer == shallow.footer == full.footer
    names = [row[0] for row in deeper.rows]
    assert "encoder.layers.encoder_layer_0.self_attention" in names and "encoder.layers" not in names


def test_a_table_as_short_as_the_full_one_is_not_repeated():
    tables = [b for b in run(HandNet(), 8).blocks if hasattr(b, "footer")]
    assert [(t.key, t.folded) for t in tables] == [("architecture-layers", False)]


def test_stage_wrappers_are_transparent_but_blocks_are_not():
    vit = tiny_vit(num_layers=12)
    assert transparent(vit.encoder) and transparent(vit.encoder.layers)
    assert not transparent(vit.encoder.layers[0])  # an EncoderBlock: LayerNorm, attention, MLP, all different
    dense = torchvision.models.densenet121(weights=None)
    assert not transparent(dense.features.denseblock1)  # its dense layers are its own children, densely wired
    assert unit_at_depth(vit, "encoder.layers.encoder_layer_3.mlp.0", 1) == ("encoder.layers.encoder_layer_3", True)
    assert unit_at_depth(vit, "encoder", 1) == ("encoder", False)
