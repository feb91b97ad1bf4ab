"""Fine-tuned torchvision heads and every common checkpoint format: random-init models built here, no download.

Each fine-tune is a torchvision architecture built with num_classes=4 and saved as a plain state dict,
inside the usual wrappers, with the usual key prefixes, or as safetensors; load_model must rebuild the
architecture with the file's class count, give exactly the source model's logits and record how it read
the file.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models import LoadedModel, load_model, state_dict_sha256
from auditor.inputs.models.checkpoints import Checkpoint, default_heads, fit, head_classes, read_checkpoint

CLASSES = 4
SIZE = 64  # input side for the logits comparison: small, and large enough for every family below


def build(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """A torchvision architecture with seeded random weights (the global RNG left alone), in eval mode."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inception_v3's and googlenet's init-weights FutureWarning
        torch.manual_seed(seed)
        module = torchvision.models.get_model(name, weights=None, **kwargs)
        for m in module.modules():  # non-trivial BatchNorm statistics, so that a missed buffer shows
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.8, 1.2)
    return module.eval()


def same_logits(loaded_module: nn.Module, source: nn.Module, size: int = SIZE) -> bool:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(loaded_module(x), source(x), atol=1e-6, rtol=1e-5)


def load_from_factory(file: Path, factory: str, weights: Path, source: str) -> LoadedModel:
    """load_model("FILE.py:factory", weights=...) for a factory file holding `source`."""
    file.write_text(source)
    return load_model(f"{file}:{factory}", weights=str(weights))


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


# (how it is saved, what load_model must record as wrapper and prefix)
FORMATS: dict[str, tuple[Callable[[dict, Path], Path], str, str]] = {
    "plain": (lambda sd, d: _save(sd, d / "plain.pth"), "", ""),
    "lightning": (lambda sd, d: _save({"state_dict": prefixed(sd, "model."), "epoch": 3, "global_step": 120,
                                       "hyper_parameters": {"lr": 0.01}}, d / "epoch=3.ckpt"), "state_dict", "model."),
    "ddp-compiled": (lambda sd, d: _save({"model_state_dict": prefixed(sd, "module._orig_mod."),
                                          "optimizer_state_dict": {"state": {}, "param_groups": []}},
                                         d / "checkpoint.pt"), "model_state_dict", "module._orig_mod."),
    "safetensors": (lambda sd, d: _save_safetensors(sd, d / "model.safetensors"), "", ""),
}


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# small members of seven torchvision families, with the head the rebuild must find
FAMILIES = {
    "resnet18": ["fc"],
    "mobilenet_v3_small": ["classifier.3"],
    "efficientnet_b0": ["classifier.1"],
    "densenet121": ["classifier"],
    "regnet_x_400mf": ["fc"],
    "squeezenet1_1": ["classifier.1"],  # a 1x1 convolution
    "googlenet": ["aux1.fc2", "aux2.fc2", "fc"],  # with its auxiliary heads
}


@pytest.fixture(scope="module")
def sources() -> Callable[[str], nn.Module]:
    """Each family's 4-class fine-tune, built once for all formats."""
    return functools.cache(lambda name: build(name, num_classes=CLASSES,
                                              **({"init_weights": False} if name == "googlenet" else {})))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_fine_tuned_head_in_every_checkpoint_format(tmp_path, sources, name, fmt):
    source = sources(name)
    save, wrapper, prefix = FORMATS[fmt]
    path = save(source.state_dict(), tmp_path)
    loaded = load_model(name, weights=str(path))
    assert loaded.kind == "torchvision"
    assert same_logits(loaded.module, source)
    assert loaded.module is loaded.user_module  # a tensor-returning model is not wrapped
    assert loaded.sha256 == state_dict_sha256(source)
    record = loaded.checkpoint
    assert record["file"] == path.name
    assert record["format"] == ("safetensors" if fmt == "safetensors" else "torch")
    assert (record["wrapper"], record["prefix"]) == (wrapper, prefix)
    assert record["head"] == {"modules": FAMILIES[name], "classes": CLASSES, "default_classes": 1000}
    assert record["architecture_args"]["num_classes"] == CLASSES
    assert any(f"built with num_classes={CLASSES}" in note for note in loaded.notes)
    if prefix:
        assert any(repr(prefix) in note and "removed from every key" in note for note in loaded.notes)
    assert loaded.class_names == []  # ImageNet's names do not name a fine-tuned head; --labels does
    assert path.name in loaded.file_sha256


def test_fine_tuned_head_takes_labels(tmp_path, sources):
    path = FORMATS["plain"][0](sources("resnet18").state_dict(), tmp_path)
    labels = tmp_path / "classes.txt"
    labels.write_text("cat\ndog\nfox\nowl\n")
    loaded = load_model("resnet18", weights=str(path), labels=labels)
    assert loaded.class_names == ["cat", "dog", "fox", "owl"]


def test_default_head_keeps_the_imagenet_names_and_records_no_rebuild(tmp_path):
    source = build("mobilenet_v3_small", seed=3)
    path = FORMATS["lightning"][0](source.state_dict(), tmp_path)
    loaded = load_model("mobilenet_v3_small", weights=str(path))
    assert same_logits(loaded.module, source)
    assert len(loaded.class_names) == 1000
    assert "head" not in loaded.checkpoint and "architecture_args" not in loaded.checkpoint


def test_googlenet_without_its_auxiliary_heads(tmp_path):
    """A fine-tune saved with aux_logits=False has no aux1/aux2 keys: built without them, then the head."""
    source = build("googlenet", num_classes=3, aux_logits=False, init_weights=False)
    path = FORMATS["plain"][0](source.state_dict(), tmp_path)
    loaded = load_model("googlenet", weights=str(path))
    assert same_logits(loaded.module, source)
    assert loaded.checkpoint["architecture_args"] == {"aux_logits": False, "num_classes": 3}
    assert any("has no aux1, aux2" in note for note in loaded.notes)


def test_one_logit_head_is_binary(tmp_path):
    source = build("resnet18", num_classes=1)
    path = FORMATS["safetensors"][0](source.state_dict(), tmp_path)
    loaded = load_model("resnet18", weights=str(path))
    assert loaded.binary and loaded.user_module is not loaded.module
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        z = source(x)
        assert torch.allclose(loaded.module(x), torch.cat([-z, z], 1), atol=1e-6)


# --- the heavier families: head detection on the meta device (no memory, no time), one real load (slow) -----


@pytest.mark.parametrize(
    ("name", "heads"),
    [
        ("vgg11", ["classifier.6"]),
        ("alexnet", ["classifier.6"]),
        ("convnext_tiny", ["classifier.2"]),
        ("vit_b_16", ["heads.head"]),
        ("swin_t", ["head"]),
        ("maxvit_t", ["classifier.5"]),
        ("inception_v3", ["AuxLogits.fc", "fc"]),
        ("efficientnet_v2_s", ["classifier.1"]),
        ("mobilenet_v2", ["classifier.1"]),
    ],
)
def test_head_of_every_family_is_found(name, heads):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = torchvision.models.get_model(name, weights=None)
        tuned = torchvision.models.get_model(name, weights=None, num_classes=CLASSES)
    assert default_heads(default) == heads
    checkpoint = Checkpoint(Path("tuned.pth"), "torch", [((), prefixed(tuned.state_dict(), "module."))], "")
    result = fit(checkpoint, default.state_dict())
    assert result.prefix == "module."
    assert sorted({k.rpartition(".")[0] for k in result.wrong_shape}) == heads
    assert head_classes(result, heads) == CLASSES


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), [("convnext_tiny", 64), ("swin_t", 64), ("inception_v3", 80),
                                            ("vit_b_16", 224)])
def test_fine_tuned_head_of_a_large_family(tmp_path, name, size):
    source = build(name, num_classes=CLASSES, **({"init_weights": False} if name == "inception_v3" else {}))
    path = FORMATS["ddp-compiled"][0](source.state_dict(), tmp_path)
    loaded = load_model(name, weights=str(path))
    assert same_logits(loaded.module, source, size)
    assert loaded.checkpoint["architecture_args"]["num_classes"] == CLASSES


# --- heads that fit no rebuild, and files that are no state dict ------------------------------------------


def test_sequential_head_is_one_line_naming_the_keys_and_a_factory(tmp_path):
    model = build("resnet18")
    model.fc = nn.Sequential(nn.Linear(512, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, CLASSES))
    path = FORMATS["lightning"][0](model.state_dict(), tmp_path)
    with pytest.raises(AuditorError) as error:
        load_model("resnet18", weights=str(path))
    message = str(error.value)
    assert "\n" not in message
    assert "does not fit the model (resnet18)" in message and "epoch=3.ckpt" in message
    assert "missing keys (e.g. fc.weight, fc.bias)" in message
    assert "unexpected keys (e.g. fc.0.weight, fc.0.bias, fc.3.weight)" in message
    assert "def build(): m = torchvision.models.resnet18(); m.fc = torch.nn.Sequential(...); return m" in message
    assert "--model model.py:build --weights FILE" in message


def test_the_factory_the_message_shows_loads_the_checkpoint(tmp_path):
    """The recipe of the refusal above, followed: a file.py:factory with the Sequential, and the same file."""
    model = build("resnet18")
    model.fc = nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, CLASSES))
    model.eval()
    path = FORMATS["lightning"][0](model.state_dict(), tmp_path)
    loaded = load_from_factory(tmp_path / "model.py", "build", path, """
import torch, torchvision
def build():
    m = torchvision.models.resnet18()
    m.fc = torch.nn.Sequential(torch.nn.Linear(512, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return m
""")
    assert same_logits(loaded.module, model)
    assert (loaded.checkpoint["wrapper"], loaded.checkpoint["prefix"]) == ("state_dict", "model.")


def test_a_factory_whose_weights_do_not_fit_is_one_line(tmp_path):
    path = FORMATS["plain"][0](build("squeezenet1_1").state_dict(), tmp_path)
    with pytest.raises(AuditorError, match=r"^--weights: .*plain.pth does not fit the model "
                                           r"\(tests.fixtures_models:tiny\): \d+ missing keys .*unexpected keys"):
        load_model("tests.fixtures_models:tiny", weights=str(path))


def test_heads_of_different_class_counts_fit_no_rebuild(tmp_path):
    source = build("googlenet", num_classes=CLASSES, aux_logits=True, init_weights=False)
    state = source.state_dict()
    state["aux1.fc2.weight"] = torch.zeros(7, 1024)
    state["aux1.fc2.bias"] = torch.zeros(7)
    path = FORMATS["plain"][0](state, tmp_path)
    with pytest.raises(AuditorError, match=r"tensors of the wrong shape \(aux1.fc2.weight: file \[7, 1024\]"):
        load_model("googlenet", weights=str(path))


@pytest.mark.parametrize(
    ("wrap", "wrapper", "prefix"),
    [
        pytest.param(lambda sd: {"ema": sd}, "ema", "", id="ema"),
        pytest.param(lambda sd: {"model": {"net": sd}}, "model/net", "", id="nested"),
        pytest.param(lambda sd: {"weights": prefixed(sd, "backbone.")}, "weights", "backbone.", id="any-attribute"),
        pytest.param(lambda sd: {"params": prefixed(sd, "_orig_mod.module.")}, "params", "_orig_mod.module.",
                     id="compiled-then-ddp"),
        pytest.param(lambda sd: {"network": sd, "config": {"depth": 18}}, "network", "", id="network"),
    ],
)
def test_more_wrappers_and_prefixes(tmp_path, wrap, wrapper, prefix):
    source = build("mobilenet_v3_small", seed=4, num_classes=CLASSES)
    path = _save(wrap(source.state_dict()), tmp_path / "weights.pth")
    loaded = load_model("mobilenet_v3_small", weights=str(path))
    assert same_logits(loaded.module, source)
    assert (loaded.checkpoint["wrapper"], loaded.checkpoint["prefix"]) == (wrapper, prefix)


def test_timm_style_checkpoint_prefers_the_trained_weights_and_names_the_ema(tmp_path):
    trained, averaged = build("squeezenet1_1", seed=5), build("squeezenet1_1", seed=6)
    path = _save({"epoch": 9, "arch": "squeezenet1_1", "state_dict": trained.state_dict(),
                  "state_dict_ema": averaged.state_dict()}, tmp_path / "last.pth.tar")
    loaded = load_model("squeezenet1_1", weights=str(path))
    assert same_logits(loaded.module, trained)
    assert loaded.checkpoint["also_fitting"] == ["state_dict_ema"]
    assert any("also holds state_dict_ema" in note for note in loaded.notes)


def test_torchvision_ema_keeps_its_counter_out(tmp_path):
    """torchvision's reference scripts save AveragedModel's state: `module.` keys and an `n_averaged` counter."""
    source = build("squeezenet1_1", seed=7, num_classes=CLASSES)
    ema = torch.optim.swa_utils.AveragedModel(source)
    path = _save({"model": source.state_dict(), "model_ema": ema.state_dict(), "epoch": 1}, tmp_path / "ck.pth")
    loaded = load_model("squeezenet1_1", weights=str(path))
    assert loaded.checkpoint["wrapper"] == "model" and loaded.checkpoint["also_fitting"] == ["model_ema"]
    only_ema = _save({"model_ema": ema.state_dict()}, tmp_path / "ema.pth")
    loaded = load_model("squeezenet1_1", weights=str(only_ema))
    assert same_logits(loaded.module, source)
    assert loaded.checkpoint["prefix"] == "module." and loaded.checkpoint["ignored_examples"] == ["n_averaged"]
    assert any("n_averaged" in note and "not loaded" in note for note in loaded.notes)


def test_a_factory_module_that_wraps_the_architecture_gets_the_prefix_added(tmp_path):
    source = build("squeezenet1_1", seed=8)
    path = FORMATS["safetensors"][0](source.state_dict(), tmp_path)
    loaded = load_from_factory(tmp_path / "wrapped.py", "Wrapped", path, """
import torch, torchvision
class Wrapped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torchvision.models.squeezenet1_1()
    def forward(self, x):
        return self.net(x)
""")
    assert same_logits(loaded.module, source)
    assert loaded.checkpoint["added_prefix"] == "net."
    assert loaded.weights == "safetensors file model.safetensors"


def test_lite0_fine_tune(tmp_path):
    from efficientnet_lite_pytorch import EfficientNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        source = EfficientNet.from_name("efficientnet-lite0", num_classes=CLASSES).eval()
    path = FORMATS["ddp-compiled"][0](source.state_dict(), tmp_path)
    loaded = load_model("efficientnet_lite0", weights=str(path))
    assert same_logits(loaded.module, source)
    assert loaded.checkpoint["head"]["modules"] == ["_fc"]


@pytest.mark.parametrize(
    ("write", "match"),
    [
        pytest.param(lambda p: torch.save({"epoch": 3, "lr": 0.1}, p), "does not hold a state_dict", id="no-tensors"),
        pytest.param(lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"), "as a safetensors file",
                     id="bad-safetensors"),
    ],
)
def test_files_that_hold_no_state_dict(tmp_path, write, match):
    path = tmp_path / "weights.bin"
    write(path)
    with pytest.raises(AuditorError, match=match):
        load_model("resnet18", weights=str(path))


def test_a_torchscript_file_as_weights_says_to_pass_it_as_the_model(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(nn.Linear(2, 2)).save(str(tmp_path / "model.pt"))
    with pytest.raises(AuditorError, match="is a TorchScript model.*pass it as --model"):
        load_model("resnet18", weights=str(tmp_path / "model.pt"))


def test_a_safetensors_file_as_the_model_says_to_pass_an_architecture(tmp_path):
    path = FORMATS["safetensors"][0](build("squeezenet1_1").state_dict(), tmp_path)
    with pytest.raises(AuditorError, match="holds weights only.*this file as --weights"):
        load_model(str(path))


def test_reading_never_unpickles_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = _save({"state_dict": {"fc.weight": torch.zeros(2)}, "callback": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(AuditorError, match="not a plain state_dict"):
        read_checkpoint(path)
    assert not marker.exists()
