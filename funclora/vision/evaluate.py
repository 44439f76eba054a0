"""Accuracy on a labelled image folder, with and without an adapter: what adapting cost elsewhere.

The folder holds one sub-folder per class, named by its ImageNet class id or class name:

    photos/281/chelsea.png   photos/goldfish/fish.jpg   photos/967/coffee.png ...

`evaluate` runs several classifiers over the same images (each batch is read once) and gives
top-1/top-5 accuracy per classifier; `forgetting` is the drop from "base" to "adapted" on images
unrelated to what the adapter was taught.

>>> import torch
>>> logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
>>> accuracy(logits, torch.tensor([1, 2]), ks=(1, 2))
{'top1': 0.5, 'top2': 0.5}
>>> forgetting({"top1": 0.75, "top5": 1.0}, {"top1": 0.5, "top5": 1.0})
{'top1': 0.25, 'top5': 0.0}
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .backbones import resolve_label
from .images import IMAGE_SUFFIXES, list_images, load_batch

__all__ = ["LAYOUT", "labelled_images", "accuracy", "dataset_accuracy", "forgetting", "predict", "evaluate",
           "format_eval"]

LAYOUT = ("one sub-folder per class, named by its ImageNet class id or class name: "
          "DIR/1/a.png, DIR/goldfish/b.jpg, DIR/281/c.png ...")

Classify = Callable[[torch.Tensor], torch.Tensor]
"""A batch of preprocessed images (N, 3, H, W) -> logits (N, classes)."""


def labelled_images(folder: str | os.PathLike, classes: Sequence[str]) -> tuple[list[Path], torch.Tensor]:
    """The images under `folder`'s class sub-folders and their class ids, in sorted order.

    Raises ValueError naming the folder when it has no class sub-folders, holds loose images
    (they would have no label), or a sub-folder's name is no class id or name.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected {LAYOUT})")
    loose = [p.name for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise ValueError(f"{root}: images {loose[:3]} lie directly in the folder and have no label "
                         f"(expected {LAYOUT})")
    subfolders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    if not subfolders:
        raise ValueError(f"{root}: no class sub-folders (expected {LAYOUT})")
    paths: list[Path] = []
    labels: list[int] = []
    for sub in subfolders:
        try:
            label = resolve_label(sub.name, classes)
        except ValueError as error:
            raise ValueError(f"{sub}: sub-folder name is not a class ({error})") from None
        images = list_images([sub])
        paths += images
        labels += [label] * len(images)
    return paths, torch.tensor(labels, dtype=torch.long)


def accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...}: the fraction of rows whose label is among the k highest logits
    (k capped at the number of classes)."""
    if logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"accuracy: {logits.shape[0]} rows of logits for {labels.shape[0]} labels "
                         f"(expected the same number, at least one)")
    ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {f"top{k}": hits[:, :k].any(dim=1).double().mean().item() for k in ks}


def dataset_accuracy(f: Callable, base, params, data, *, batch_size: int, workers: int = 0,
                     device: str | torch.device = "cpu", world=None) -> dict[str, float]:
    """{"top1", "top5"} of `f(base, params, x)` over a dataset of (x, label) items (images, or cached
    features: `funclora.vision.data`), read in batches under no_grad. Under torchrun (`world`)
    each rank reads its contiguous share of the dataset and the ranks sum their hits (one
    all-reduce): every rank returns the accuracy of the whole dataset."""
    from torch.utils.data import Subset

    from .. import distributed
    from .data import loader, to_device

    sharded = world is not None and world.size > 1
    if sharded:
        indices, own = distributed.shard(list(range(len(data))), world, spare=True)
        data = Subset(data, indices)
    logits, labels = [], []
    with torch.no_grad():
        for x, y in loader(data, batch_size, 0, 0, workers=workers, shuffle=False):
            logits.append(f(base, params, to_device(x, device)).float().cpu())
            labels.append(y)
    result = accuracy(torch.cat(logits), torch.cat(labels))
    if not sharded:
        return result
    # Hits add up, fractions do not (a spare example counts 0); whole numbers, exact in float64.
    n = len(data.indices) if own else 0
    hits = distributed.all_reduce(torch.tensor([result[k] * n for k in result], dtype=torch.float64), world)
    return {k: round(h) / len(data.dataset) for k, h in zip(result, hits.tolist())}


def forgetting(base: Mapping[str, float], adapted: Mapping[str, float]) -> dict[str, float]:
    """How much accuracy the adapter cost, per metric: base - adapted (negative: it gained)."""
    return {k: base[k] - adapted[k] for k in base}


def predict(classifiers: Mapping[str, Classify], paths: Sequence[Path],
            preprocess: Callable[[Image.Image], torch.Tensor], *, batch_size: int = 32,
            progress: bool = True) -> dict[str, torch.Tensor]:
    """Logits of every classifier on every image; images are read once per batch, under no_grad."""
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in classifiers}
    bar = tqdm(total=len(paths), desc="evaluating", unit="img", disable=not progress, leave=False,
               dynamic_ncols=True)
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            x = load_batch(paths[start:start + batch_size], preprocess)
            for name, classify in classifiers.items():
                chunks[name].append(classify(x))
            bar.update(x.shape[0])
    bar.close()
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def evaluate(classifiers: Mapping[str, Classify], paths: Sequence[Path], labels: torch.Tensor,
             preprocess: Callable[[Image.Image], torch.Tensor], *, batch_size: int = 32,
             progress: bool = True) -> dict:
    """{"n": images, name: {"top1": acc, "top5": acc} for each classifier}, accuracies in 0..1.

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from torchvision.transforms.functional import to_tensor
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (4, 4)).save(folder / "a.png")
    >>> always_0 = lambda x: torch.tensor([[1.0, 0.0]]).expand(x.shape[0], 2)
    >>> evaluate({"base": always_0}, [folder / "a.png"], torch.tensor([1]), to_tensor, progress=False)
    {'n': 1, 'base': {'top1': 0.0, 'top5': 1.0}}
    """
    logits = predict(classifiers, paths, preprocess, batch_size=batch_size, progress=progress)
    return {"n": len(paths), **{name: accuracy(out, labels) for name, out in logits.items()}}


def format_eval(result: Mapping, folder: str | os.PathLike, where: str = "") -> str:
    """The human-readable summary: a row per model and, with an adapter, the forgetting.

    >>> print(format_eval({"n": 7, "base": {"top1": 4/7, "top5": 1.0},
    ...                    "adapted": {"top1": 3/7, "top5": 6/7}}, "photos"))
    7 images in photos
    model      top-1          top-5
    base       57.1% (4/7)    100.0% (7/7)
    adapted    42.9% (3/7)     85.7% (6/7)
    forgetting: top-1 drops 14.3 points (1 image), top-5 drops 14.3 points (1 image)
    """
    n = result["n"]
    lines = [f"{n} image{'s' * (n != 1)} in {folder}" + (f" ({where})" if where else "")]
    rows = [("model", "top-1", "top-5")]
    for name in (k for k in result if k != "n"):
        rows.append((name, *(_share(result[name][m], n) for m in ("top1", "top5"))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines += ["    ".join(c.ljust(w) if i == 0 or r is rows[0] else c.rjust(w)
                          for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    if "base" in result and "adapted" in result:
        drop = forgetting(result["base"], result["adapted"])
        lines.append("forgetting: " + ", ".join(f"{m[:3]}-{m[3:]} {_change(d, n)}" for m, d in drop.items()))
    return "\n".join(lines)


def _share(value: float, n: int) -> str:
    return f"{100 * value:.1f}% ({round(value * n)}/{n})"


def _change(drop: float, n: int) -> str:
    count = round(abs(drop) * n)
    if not count:
        return "unchanged"
    return f"{'drops' if drop > 0 else 'gains'} {100 * abs(drop):.1f} points ({count} image{'s' * (count != 1)})"
