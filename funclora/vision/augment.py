"""Light augmentation for `funclora train --augment`: a fresh, seeded draw of every image each step.

Each image is randomly cropped (70-100% of its area, then resized back to its own size),
mirrored half of the time, and given a little colour jitter, as PIL images before the backbone's
own preprocessing (torchvision.transforms.v2). Step `s` of seed `k` always draws the same
batch, and drawing never touches torch's global random state.

>>> import torch
>>> from PIL import Image
>>> from torchvision.transforms.functional import to_tensor
>>> images = [Image.new("RGB", (32, 32), "orange"), Image.new("RGB", (40, 30), "navy")]
>>> preprocess = lambda image: to_tensor(image.resize((16, 16)))
>>> batches = augmented_batches(images, preprocess, seed=0)
>>> tuple(batches(0).shape)
(2, 3, 16, 16)
>>> torch.equal(batches(3), batches(3)), torch.equal(batches(3), batches(4))
(True, False)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

__all__ = ["SCALE", "augment_image", "augmented_batches", "AugmentedFiles"]

SCALE = (0.7, 1.0)
"""Area of the random crop, as a fraction of the image: mild, so the object stays in frame."""


def _transform(size: tuple[int, int]) -> v2.Transform:
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=SCALE, antialias=True),
        v2.RandomHorizontalFlip(0.5),
        # Little hue change: a goldfish should stay orange.
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
    ])


def augment_image(image: Image.Image, seed: int) -> Image.Image:
    """One random variant of `image` (same size, RGB), fully determined by `seed`."""
    # v2 draws from torch's global generator: fork it, so the caller's random state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _transform((image.height, image.width))(image)


def augmented_batches(images: Sequence[Image.Image], preprocess: Callable[[Image.Image], torch.Tensor],
                      seed: int = 0) -> Callable[[int], torch.Tensor]:
    """batch(step) -> (N, C, H, W): every image augmented afresh for `step`, then preprocessed.

    Feed it to `funclora.train.fit` as `x`: it calls `x(step)` once per step.
    """
    if not images:
        raise ValueError("augmented_batches: no images (expected at least one)")

    def batch(step: int) -> torch.Tensor:
        tensors = [preprocess(augment_image(image, _mix(seed, step, i))) for i, image in enumerate(images)]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            first, other = tuple(tensors[0].shape), next(s for s in shapes if s != tuple(tensors[0].shape))
            raise ValueError(f"augmented images must preprocess to one shape, got {first} and {other} "
                             f"(resize in preprocess)")
        return torch.stack(tensors)

    return batch


class AugmentedFiles(Dataset):
    """(augmented, preprocessed image, label) per file, for class-folder training: the draw is
    fixed by (seed, epoch, index), so a resumed run sees the same pictures. Set `epoch` before
    each epoch."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], preprocess: Callable[[Image.Image], torch.Tensor],
                 seed: int):
        self.paths, self.labels, self.preprocess, self.seed, self.epoch = list(paths), list(labels), preprocess, seed, 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from .images import load_image

        return self.preprocess(augment_image(load_image(self.paths[i]), _mix(self.seed, self.epoch, i))), self.labels[i]


def _mix(seed: int, step: int, index: int) -> int:
    """A distinct 63-bit seed per (run seed, step, image)."""
    return (seed * 1_000_003 + step * 10_007 + index) % (2**63 - 1)
