"""Hugging Face transformers classifiers from save_pretrained folders: tiny random-init configs, offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from auditor.errors import AuditorError
from auditor.inputs.models import LogitsAdapter, load_model, state_dict_sha256
from auditor.inputs.preprocess import IMAGENET_MEAN, pattern_image

transformers = pytest.importorskip("transformers")

LABELS = {0: "cat", 1: "dog", 2: "fox"}
NAMED = {"num_labels": 3, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}


def vit_config(**kwargs):
    return transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, **{**NAMED, **kwargs})


# name: (config, model class, image processor whose mean and std are not ImageNet's)
MODELS = {
    "vit": lambda: (vit_config(), transformers.ViTForImageClassification,
                    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3],
                                                   image_std=[0.3, 0.2, 0.1])),
    "convnext": lambda: (transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, **NAMED),
                         transformers.ConvNextForImageClassification,
                         transformers.ConvNextImageProcessor(size={"shortest_edge": 48}, crop_pct=0.875,
                                                             image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2])),
    "swin": lambda: (transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                             window_size=4, **NAMED),
                     transformers.SwinForImageClassification,
                     transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3],
                                                    image_std=[0.25, 0.25, 0.25], resample=3)),
    "deit": lambda: (transformers.DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, **NAMED),
                     transformers.DeiTForImageClassification,
                     transformers.DeiTImageProcessor(size={"height": 40, "width": 40},
                                                     crop_size={"height": 32, "width": 32},
                                                     image_mean=[0.1, 0.1, 0.1], image_std=[0.5, 0.5, 0.5])),
    "resnet": lambda: (transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **NAMED),
                       transformers.ResNetForImageClassification,
                       transformers.ConvNextImageProcessor(size={"shortest_edge": 40}, crop_pct=0.875,
                                                           image_mean=[0.3, 0.3, 0.3], image_std=[0.3, 0.3, 0.3])),
}


def save(tmp_path: Path, name: str, *, processor: bool = True, seed: int = 0, **config_changes):
    config, model_class, image_processor = MODELS[name]()
    for key, value in config_changes.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    folder = tmp_path / name
    model.save_pretrained(str(folder))
    if processor:
        image_processor.save_pretrained(str(folder))
    return folder, model, image_processor


def logits(module, size, seed: int = 1) -> torch.Tensor:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = module(x)
    return getattr(out, "logits", out)


@pytest.mark.parametrize("name", list(MODELS))
def test_save_pretrained_folder(tmp_path, name):
    folder, model, processor = save(tmp_path, name)
    loaded = load_model(str(folder))
    assert loaded.kind == "huggingface" and loaded.name == type(model).__name__
    assert loaded.class_names == ["cat", "dog", "fox"]
    assert not loaded.multi_label and not loaded.binary
    # the output adapter: logits out, the user's names, weights and module behind it
    assert loaded.output == "logits attribute"
    assert isinstance(loaded.module, LogitsAdapter)
    assert type(loaded.user_module) is type(model)
    size = loaded.preprocess.crop_size
    assert torch.allclose(logits(loaded.module, size), logits(model, size), atol=1e-5)
    assert [n for n, _ in loaded.module.named_modules()] == [n for n, _ in model.named_modules()]
    assert list(loaded.module.state_dict()) == list(model.state_dict())
    assert loaded.sha256 == state_dict_sha256(model)
    # the processor's preprocessing, recorded, and equal to the processor's own on a test image
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    assert (loaded.preprocess.mean, loaded.preprocess.std) == (mean, std) and mean != IMAGENET_MEAN
    assert f"mean ({', '.join(f'{v:g}' for v in mean)})" in loaded.preprocess.describe()
    assert loaded.preprocess_source == f"{type(processor).__name__} from preprocessor_config.json"
    reference = processor(images=pattern_image(), return_tensors="pt")["pixel_values"][0]
    ours = loaded.preprocess(pattern_image())
    assert ours.shape == reference.shape
    assert float(((ours - reference).abs() * torch.tensor(std).view(3, 1, 1)).mean()) < 0.02
    assert not any("Preprocessing" in note for note in loaded.notes)
    assert loaded.file_sha256.keys() == {"model.safetensors", "config.json", "preprocessor_config.json"}
    assert loaded.checkpoint["format"] == "safetensors" and loaded.checkpoint["model_type"] == name


def test_preprocessing_shapes(tmp_path):
    """ViT: exact resize, no crop; DeiT: exact resize then crop; ConvNeXt under 384: shortest edge / crop_pct."""
    shown = {name: load_model(str(save(tmp_path, name)[0])).preprocess.describe()
             for name in ("vit", "deit", "convnext")}
    assert shown["vit"].startswith("resize to 32 x 32 (bilinear, aspect not kept), no crop")
    assert shown["deit"].startswith("resize to 40 x 40 (bicubic, aspect not kept), center crop 32")
    assert shown["convnext"].startswith("resize 54 (bicubic), center crop 48")  # int(48 / 0.875)


def test_multi_label_config(tmp_path):
    folder, _, _ = save(tmp_path, "vit", problem_type="multi_label_classification")
    loaded = load_model(str(folder))
    assert loaded.multi_label
    assert any("multi-label" in note for note in loaded.notes)


def test_default_label_names_are_not_class_names(tmp_path):
    folder, _, _ = save(tmp_path, "vit", id2label={0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    loaded = load_model(str(folder))
    assert loaded.class_names == []
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    assert load_model(str(folder), labels=labels).class_names == ["a", "b", "c"]


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    folder, model, _ = save(tmp_path, "vit")
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded = load_model(str(folder))
    assert torch.allclose(logits(loaded.module, (32, 32)), logits(model, (32, 32)), atol=1e-5)
    assert loaded.checkpoint["format"] == "torch" and "pytorch_model.bin" in loaded.file_sha256


def test_pickled_code_in_a_bin_runs_nothing(tmp_path):
    folder, model, _ = save(tmp_path, "vit")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({**model.state_dict(), "payload": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(AuditorError, match="pytorch_model.bin is not a plain state dict"):
        load_model(str(folder))
    assert not marker.exists()


def test_a_folder_that_needs_remote_code_is_refused(tmp_path):
    folder, _, _ = save(tmp_path, "vit")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_mine.MyViT"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_mine.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    with pytest.raises(AuditorError) as error:
        load_model(str(folder))
    message = str(error.value)
    assert "\n" not in message and "needs custom code" in message and "trust_remote_code" in message
    assert "file.py:factory" in message
    assert not (tmp_path / "ran").exists()


def test_an_unknown_model_type_points_to_a_factory(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "my-own-net", "architectures": ["MyNet"]}))
    with pytest.raises(AuditorError, match="does not know model type 'my-own-net'.*file.py:factory"):
        load_model(str(folder))


def test_a_base_model_without_its_classifier_is_refused(tmp_path):
    folder = tmp_path / "base"
    transformers.ViTModel(vit_config()).save_pretrained(str(folder))
    with pytest.raises(AuditorError, match="missing.*classifier.*saved without its classifier"):
        load_model(str(folder))


def test_no_preprocessor_config_assumes_the_config_size(tmp_path):
    folder, _, _ = save(tmp_path, "vit", processor=False)
    loaded = load_model(str(folder))
    assert loaded.preprocess.crop_size == (32, 32)
    assert any("has no preprocessor_config.json; preprocessing assumed" in note for note in loaded.notes)


def test_a_factory_that_returns_a_hugging_face_model(tmp_path):
    """The issue's failing case: a ViTForImageClassification from a factory is adapted, not refused."""
    factory = tmp_path / "hf_factory.py"
    factory.write_text("import torch, transformers\n"
                       "def build():\n"
                       "    torch.manual_seed(0)\n"
                       "    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32,\n"
                       "        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=2)\n"
                       "    return transformers.ViTForImageClassification(config).eval()\n")
    loaded = load_model(f"{factory}:build", input_size=32)
    assert loaded.output == "logits attribute"
    assert logits(loaded.module, (32, 32)).shape == (2, 2)


def test_without_transformers_one_line_names_the_extra(tmp_path, monkeypatch):
    folder, _, _ = save(tmp_path, "vit")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(AuditorError, match=r"needs transformers, which is not installed: pip install 'auditor\[hf\]'$"):
        load_model(str(folder))


def test_a_folder_takes_no_weights(tmp_path):
    folder, _, _ = save(tmp_path, "vit")
    with pytest.raises(AuditorError, match="is a model folder, which holds its own weights"):
        load_model(str(folder), weights=str(folder / "model.safetensors"))


def test_a_folder_without_config(tmp_path):
    with pytest.raises(AuditorError, match="folder without config.json"):
        load_model(str(tmp_path))


def test_cam_on_a_hugging_face_vit_agrees_with_pytorch_grad_cam(tmp_path):
    """Through the output adapter, at the automatic layer (the last block's norm before attention), with
    pytorch-grad-cam given a logits wrapper and its documented ViT reshape (class token dropped)."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from auditor.techniques import cam

    folder, _, _ = save(tmp_path, "vit")
    loaded = load_model(str(folder))
    with torch.no_grad():  # see tests/test_cam.py: keeps pgc's eps of 1e-6 negligible in Grad-CAM++
        loaded.module.get_submodule("classifier").weight.mul_(100)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layer = cam.choose_layer(loaded.module, x).name
    assert layer.endswith("1.layernorm_before")  # the last block (transformers 4: encoder.layer.1, 5: layers.1)
    with torch.no_grad():
        targets = loaded.module(x).argmax(dim=1)
    ours = cam.cam_maps(loaded.module, x, targets, layer, methods=("grad-cam", "grad-cam++"))
    assert ours.formed.endswith("1 leading token (the class token) dropped")

    class Logits(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.model(inputs).logits

    def tokens_to_grid(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[:, 1:, :].reshape(tensor.size(0), 4, 4, tensor.size(2)).permute(0, 3, 1, 2)

    user = loaded.user_module
    for method, pgc in (("grad-cam", GradCAM), ("grad-cam++", GradCAMPlusPlus)):
        with pgc(model=Logits(user), target_layers=[user.get_submodule(layer)], reshape_transform=tokens_to_grid) as ref:
            theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        for a, b in zip(ours.maps[method][:, 0].numpy().reshape(3, -1), theirs.reshape(3, -1), strict=True):
            assert a.std() > 0 and float(np.corrcoef(a, b)[0, 1]) > 0.99, method


@pytest.mark.parametrize("name", list(MODELS))
def test_every_technique_runs_on_a_hugging_face_model(tmp_path, name):
    from tests.toolkit import CHEAP, assert_unchanged, audit, snapshot

    folder, _, _ = save(tmp_path, name)
    loaded = load_model(str(folder))
    before = snapshot(loaded.user_module)
    report = audit(loaded, (), top_k=2, **CHEAP)
    assert not report.failed, [(s.technique, s.error) for s in report.failed]
    cam = next(s for s in report.sections if s.technique == "cam")
    assert cam.metrics.get("methods"), cam.notes  # Grad-CAM and Grad-CAM++ at least, at the automatic layer
    assert_unchanged(loaded.user_module, before)
