"""Datasets on disk: class folders, a validation split, and minibatches in a seeded order.

A class-folder dataset (torchvision's ImageFolder layout) holds one sub-folder per class, classes
sorted by name:

    shoes/boot/1.png  shoes/boot/2.png  shoes/sandal/1.png ...

The order of every epoch is a function of (seed, epoch) alone (`epoch_order`), so a run that
resumes at step s of an epoch sees exactly the batches the uninterrupted run saw from there
(`EpochBatches(start=...)`), whatever the number of DataLoader workers. Each process of a
data-parallel run takes its share of every global batch (`rank`, `world`).

>>> import tempfile
>>> from pathlib import Path
>>> from PIL import Image
>>> root = Path(tempfile.mkdtemp())
>>> for name in ("cat", "boot", "boot"):
...     (root / name).mkdir(exist_ok=True)
...     Image.new("RGB", (4, 4)).save(root / name / f"{len(list((root / name).iterdir()))}.png")
>>> paths, labels, classes = class_folders(root)
>>> classes, labels, [p.name for p in paths]
(('boot', 'cat'), [0, 0, 1], ['0.png', '1.png', '0.png'])
>>> list(EpochBatches(5, batch_size=2, seed=0, epoch=0)) == list(EpochBatches(5, batch_size=2, seed=0, epoch=0))
True
>>> list(EpochBatches(5, batch_size=2, seed=0, epoch=0, start=1)) == list(EpochBatches(5, 2, 0, 0))[1:]
True
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..distributed import World, shard
from .images import IMAGE_SUFFIXES, list_images, load_image

__all__ = ["LAYOUT", "class_folders", "is_class_folder", "split_val", "epoch_order", "EpochBatches",
           "ImageFiles", "collate", "loader", "to_device"]

LAYOUT = "one sub-folder per class holding its images: DIR/<class>/*.png|jpg|..."


def is_class_folder(root: str | os.PathLike) -> bool:
    """Whether `root` is a folder of class sub-folders (and no loose images): the dataset layout,
    as opposed to a flat folder of images of one label."""
    root = Path(root)
    if not root.is_dir():
        return False
    children = [c for c in root.iterdir() if not c.name.startswith(".")]
    loose = any(c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES for c in children)
    return not loose and any(c.is_dir() for c in children)


def class_folders(root: str | os.PathLike) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """(image paths, class indices, class names) of a class-folder dataset, classes sorted by name.

    Raises ValueError naming the folder when it is missing, holds loose images (no class), has
    no class sub-folders, or a class sub-folder has no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder (expected {LAYOUT})")
    children = sorted((c for c in root.iterdir() if not c.name.startswith(".")), key=lambda c: c.name)
    loose = [c.name for c in children if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise ValueError(f"{root}: images {loose[:3]} lie directly in the folder and have no class "
                         f"(expected {LAYOUT})")
    folders = [c for c in children if c.is_dir()]
    if not folders:
        raise ValueError(f"{root}: no class sub-folders (expected {LAYOUT})")
    paths: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(folders):
        try:
            images = list_images([folder])
        except ValueError:
            raise ValueError(f"{folder}: class folder {folder.name!r} has no images (each class needs at "
                             f"least one; remove the folder or add images)") from None
        paths += images
        labels += [index] * len(images)
    return paths, labels, tuple(f.name for f in folders)


def split_val(labels: Sequence[int], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, val indices): `fraction` of each class, drawn from `seed`, held out.

    Every class keeps at least one training image; a class of one image gives none to val.

    >>> split_val([0, 0, 0, 0, 1, 1], 0.5, seed=0)[1].__len__()
    3
    """
    if not 0 < fraction < 1:
        raise ValueError(f"--val-split must be a fraction in (0, 1), got {fraction!r}")
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    val: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        take = min(round(len(members) * fraction), len(members) - 1)
        order = torch.randperm(len(members), generator=generator).tolist()
        val += [members[j] for j in order[:take]]
    if not val:
        raise ValueError(f"--val-split {fraction:g}: too few images to hold any out for validation")
    held = set(val)
    return [i for i in range(len(labels)) if i not in held], sorted(val)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order of the n examples in `epoch`: a permutation drawn from (seed, epoch) alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


class EpochBatches(Sampler[list[int]]):
    """A DataLoader batch_sampler: epoch `epoch`'s batches of `batch_size` indices (the last one may
    be smaller), from batch `start` on. With `world` > 1 each batch is this `rank`'s contiguous
    share of the global batch (`funclora.distributed.shard`), and `shares()` its fraction of each
    (0 for a rank that holds a spare example of a global batch smaller than the world)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0, *,
                 rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.epoch, self.start = n, batch_size, seed, epoch, start
        self.rank, self.world, self.shuffle = rank, world, shuffle

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, self.seed, self.epoch) if self.shuffle else list(range(self.n))
        for b in range(self.start, len(self) + self.start):
            yield self._share(order[b * self.batch_size:(b + 1) * self.batch_size])[0]

    def shares(self) -> Iterator[float]:
        """This rank's fraction of each global batch, in the order of the batches."""
        for b in range(self.start, len(self) + self.start):
            yield self._share(list(range(min(self.batch_size, self.n - b * self.batch_size))))[1]

    def _share(self, batch: list[int]) -> tuple[list[int], float]:
        return shard(batch, World(self.rank, self.world, torch.device("cpu")), spare=True)

    def __len__(self) -> int:
        return max(0, batches_per_epoch(self.n, self.batch_size) - self.start)


def batches_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


class ImageFiles(Dataset):
    """(preprocessed image, label) per file: images are read when a batch asks for them, so memory
    holds a batch, not the dataset."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], preprocess: Callable[[Image.Image], torch.Tensor]):
        self.paths, self.labels, self.preprocess = list(paths), list(labels), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.preprocess(load_image(self.paths[i])), self.labels[i]


def collate(items: Sequence[tuple]) -> tuple:
    """[(x, label)] -> (batched x, labels); x is a tensor or a tuple of tensors (cached features)."""
    from .features import BATCH

    xs, ys = zip(*items)
    if isinstance(xs[0], torch.Tensor):
        x = torch.stack(xs)
    else:
        x = tuple(torch.stack(parts) if isinstance(parts[0], torch.Tensor)
                  else len(items) if parts[0] is BATCH else parts[0] for parts in zip(*xs))
    return x, torch.tensor(ys, dtype=torch.long)


def loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, start: int = 0, *, workers: int = 0,
           shuffle: bool = True, rank: int = 0, world: int = 1) -> DataLoader:
    """A DataLoader over `dataset` in `EpochBatches` order (the same batches for any `workers`)."""
    sampler = EpochBatches(len(dataset), batch_size, seed, epoch, start, rank=rank, world=world, shuffle=shuffle)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      persistent_workers=False)


def to_device(x, device):
    """A batch (a tensor, or a tuple of features, some of them plain numbers) on `device`."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in x)
