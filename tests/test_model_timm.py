"""timm models: `timm:NAME` with a weights file, and folders in timm's hub layout. Random init, nothing downloaded."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file

from auditor.errors import AuditorError
from auditor.inputs.models import load_model, state_dict_sha256
from auditor.inputs.models.timm_models import timm_preprocess
from auditor.inputs.preprocess import Preprocess, pattern_image

timm = pytest.importorskip("timm")

CLASSES = 4


def create(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=False, **kwargs).eval()


def same_logits(loaded, source, channels: int = 3) -> bool:
    x = torch.randn(2, channels, *loaded.preprocess.crop_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(loaded.module(x), source(x), atol=1e-6, rtol=1e-5)


def matches_timm_transform(loaded) -> bool:
    """auditor's preprocessing of a test image equals timm's own eval transform of it."""
    config = timm.data.resolve_data_config({}, model=loaded.module)
    reference = timm.data.create_transform(**config, is_training=False)(pattern_image())
    ours = loaded.preprocess(pattern_image())
    return ours.shape == reference.shape and float((ours - reference).abs().mean()) < 0.02


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])  # timm's ResNet and VisionTransformer, tiny
def test_timm_name_with_a_weights_file(tmp_path, arch, fmt):
    source = create(arch, num_classes=CLASSES)
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file(source.state_dict(), str(path))
    else:  # as timm's train.py writes it
        path = tmp_path / "model_best.pth.tar"
        torch.save({"epoch": 5, "arch": arch, "state_dict": source.state_dict(),
                    "state_dict_ema": source.state_dict(), "version": 2}, path)
    loaded = load_model(f"timm:{arch}", weights=str(path))
    assert loaded.kind == "timm" and loaded.name == arch
    assert same_logits(loaded, source)
    assert loaded.sha256 == state_dict_sha256(source)
    assert loaded.checkpoint["head"]["classes"] == CLASSES
    assert loaded.checkpoint["wrapper"] == ("" if fmt == "safetensors" else "state_dict")
    assert loaded.checkpoint["format"] == ("safetensors" if fmt == "safetensors" else "torch")
    # the model's own preprocessing (test_* models: 160 px, crop_pct 0.95, mean and std 0.5), recorded
    interpolation = source.pretrained_cfg["interpolation"]
    assert loaded.preprocess == Preprocess(168, 160, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation)
    assert loaded.preprocess_source.startswith("timm pretrained config (input_size (3, 160, 160)")
    assert matches_timm_transform(loaded)
    assert not any("Preprocessing assumed" in note for note in loaded.notes)


def test_a_full_size_timm_resnet(tmp_path):
    source = create("resnet18", num_classes=CLASSES)
    path = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = load_model("timm:resnet18", weights=str(path))
    assert same_logits(loaded, source)
    assert loaded.preprocess == Preprocess(235, 224, interpolation="bicubic")  # crop_pct 0.95 -> floor(224 / .95)
    assert matches_timm_transform(loaded)


def test_hub_folder_with_label_names_and_its_own_preprocessing(tmp_path):
    source = create("test_vit", num_classes=3, img_size=(48, 64))  # a non-square input
    folder = tmp_path / "my-vit"
    timm.models.save_for_hf(source, str(folder), model_config={"label_names": ["ant", "bee", "wasp"]},
                            data_config={"input_size": (3, 48, 64), "mean": (0.2, 0.3, 0.4), "std": (0.1, 0.2, 0.3),
                                         "crop_pct": 0.8, "interpolation": "bilinear"},
                            safe_serialization=True)
    loaded = load_model(str(folder))
    assert loaded.kind == "timm"
    assert loaded.class_names == ["ant", "bee", "wasp"]
    assert loaded.preprocess.crop_size == (48, 64)
    assert (loaded.preprocess.mean, loaded.preprocess.std) == ((0.2, 0.3, 0.4), (0.1, 0.2, 0.3))
    assert "mean (0.2, 0.3, 0.4), std (0.1, 0.2, 0.3)" in loaded.preprocess.describe()
    assert "center crop 48 x 64" in loaded.preprocess.describe()
    assert matches_timm_transform(loaded)
    assert same_logits(loaded, source)
    assert loaded.checkpoint["file"] == "model.safetensors"
    assert loaded.file_sha256.keys() == {"model.safetensors", "config.json"}
    assert loaded.checkpoint["model_args"]["img_size"] == [48, 64]


def test_hub_folder_with_pytorch_model_bin(tmp_path):
    source = create("test_resnet", num_classes=2)
    folder = tmp_path / "bin"
    timm.models.save_for_hf(source, str(folder), safe_serialization=False)
    assert (folder / "pytorch_model.bin").is_file() and not (folder / "model.safetensors").exists()
    loaded = load_model(str(folder))
    assert same_logits(loaded, source)
    assert loaded.class_names == []  # no label_names: --labels, else "class i"


def test_hub_folder_without_weights(tmp_path):
    folder = tmp_path / "empty"
    timm.models.save_for_hf(create("test_resnet"), str(folder), safe_serialization=True)
    (folder / "model.safetensors").unlink()
    with pytest.raises(AuditorError, match="has timm's config.json but no weights: put model.safetensors"):
        load_model(str(folder))


def test_a_one_channel_stem_is_rebuilt_with_in_chans(tmp_path):
    source = create("test_resnet", num_classes=CLASSES, in_chans=1)
    path = tmp_path / "gray.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = load_model("timm:test_resnet", weights=str(path))
    assert loaded.checkpoint["architecture_args"] == {"in_chans": 1, "num_classes": CLASSES}
    assert any("takes 1 channels, not 3; built with in_chans=1" in note for note in loaded.notes)
    assert same_logits(loaded, source, channels=1)


def test_a_one_logit_timm_model_is_binary(tmp_path):
    source = create("test_vit", num_classes=1)
    path = tmp_path / "binary.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = load_model("timm:test_vit", weights=str(path))
    assert loaded.binary
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        z = source(x)
        assert torch.allclose(loaded.module(x), torch.cat([-z, z], 1), atol=1e-6)


@pytest.mark.parametrize(
    ("spec", "weights", "match"),
    [
        ("timm:test_resnet", None, r"pass --weights FILE \(.safetensors or .pth.*nothing is downloaded"),
        ("timm:resnet181", "x.pth", r"timm has no architecture 'resnet181'. Did you mean timm:resnet18"),
        ("timm:hf-hub:timm/resnet18.a1_in1k", None, "auditor downloads nothing"),
        ("timm:test_resnet", "missing.safetensors", "neither a known weights name nor an existing file"),
    ],
)
def test_timm_user_errors(spec, weights, match):
    with pytest.raises(AuditorError, match=match):
        load_model(spec, weights=weights)


def test_random_weights_on_request():
    loaded = load_model("timm:test_resnet", weights="none")
    assert loaded.weights == "random initialisation"
    assert any("Random weights" in note for note in loaded.notes)


def test_without_timm_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(AuditorError, match=r"^--model: timm:test_resnet needs timm, which is not installed: "
                                           r"pip install 'auditor\[timm\]'$"):
        load_model("timm:test_resnet", weights="none")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic",
          "mean": (0.5,) * 3, "std": (0.5,) * 3}, Preprocess(256, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")),
        ({"input_size": (3, 224, 224), "crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bilinear",
          "mean": (0.5,) * 3, "std": (0.5,) * 3},
         Preprocess((224, 224), 224, (0.5,) * 3, (0.5,) * 3, "bilinear", resize_mode="exact")),
        ({"input_size": (3, 192, 256), "crop_pct": 1.0, "crop_mode": "center", "interpolation": "bilinear",
          "mean": (0.5,) * 3, "std": (0.5,) * 3}, Preprocess((192, 256), (192, 256), (0.5,) * 3, (0.5,) * 3)),
    ],
)
def test_timm_data_configs(config, expected):
    preprocess, notes = timm_preprocess(config)
    assert preprocess == expected and notes == []
    reference = timm.data.create_transform(**config, is_training=False)(pattern_image((300, 211)))
    ours = preprocess(pattern_image((300, 211)))
    assert ours.shape == reference.shape and float((ours - reference).abs().mean()) < 0.02
