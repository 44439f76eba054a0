"""Frozen features on disk: the prefix (`funclora.split`) of every image, computed once per setting.

When the adapters start late in the network, everything before them gives the same features for
an image at every step of every run. `cached_features` stores them, one small safetensors file
per image under

    <cache>/<setting key>/<first 2 hex digits>/<sha256 of the image file>.safetensors

The setting key hashes what the features depend on: the backbone, its frozen tensors (so the
weights, whatever file they came from), the preprocessing, where the model is cut (targets,
head), device type and dtype. A changed image has a new content hash and a changed setting a new
key: exactly what changed is recomputed, everything else is read back. Files are written
atomically (a temporary file renamed into place), so two runs sharing a cache never see half a
file. `FeatureFiles` reads them per batch (memory holds a batch, not the dataset).

>>> import tempfile, torch
>>> from pathlib import Path
>>> from PIL import Image
>>> folder, cache = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
>>> for i in range(3):
...     Image.new("RGB", (4, 4), (60 * i, 0, 0)).save(folder / f"{i}.png")
>>> paths = sorted(folder.iterdir())
>>> prefix = lambda x: (x.mean(dim=(2, 3)),)            # any (N, ...) -> tuple of (N, ...) features
>>> from torchvision.transforms.functional import to_tensor
>>> files, made = cached_features(paths, prefix, to_tensor, cache, key="demo", progress=False)
>>> made, cached_features(paths, prefix, to_tensor, cache, key="demo", progress=False)[1]
(3, 0)
>>> tuple(FeatureFiles(files, [0, 1, 2])[1][0][0].shape)
(3,)
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..distributed import World, all_reduce
from ..io import write_atomic as _write_atomic
from .images import load_batch

__all__ = ["default_cache", "setting_key", "content_hash", "tensors_hash", "cached_features", "FeatureFiles",
           "BATCH"]


class _BatchSize:
    """Stands for the batch's size among an image's features (a traced `x.size(0)`): `collate`
    puts the number of images of each batch in its place."""

    def __repr__(self) -> str:
        return "BATCH"


BATCH = _BatchSize()


def default_cache() -> Path:
    """$FUNCLORA_CACHE, else $XDG_CACHE_HOME/funclora/features, else ~/.cache/funclora/features."""
    if os.environ.get("FUNCLORA_CACHE"):
        return Path(os.environ["FUNCLORA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "funclora" / "features"


def content_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of `tensors` (the frozen weights' identity)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def setting_key(**setting: Any) -> str:
    """A short hex key for `setting` (a flat dict of strings/numbers)."""
    return hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_features(paths: Sequence[Path], prefix: Callable[[torch.Tensor], tuple], preprocess: Callable,
                    cache: str | os.PathLike, key: str, *, setting: Mapping[str, Any] | None = None,
                    batch_size: int = 32, device: str | torch.device = "cpu",
                    progress: bool = True, world: World | None = None) -> tuple[list[Path], int]:
    """(one feature file per path, how many were computed now) under `cache`/`key`.

    Missing features are computed in fixed chunks of `batch_size` of `paths`' order (the same
    grouping on every run, so the same bits), on `device`, and written one file per image.
    `prefix(x)` maps a batch of images to a tuple of per-image batched features.

    Under torchrun (`world`, every rank calling with the same paths and cache folder), rank r
    computes the missing files of chunks r, r + size, ...: an assignment by chunk number, not by
    what a rank finds missing, since another rank may already have written some (every chunk still
    has exactly one owner). Then an all-reduce of the counts, which no rank passes before all have
    written their files (atomically), so every rank reads whole files; the count is the total.
    """
    folder = Path(cache) / key
    folder.mkdir(parents=True, exist_ok=True)
    if setting is not None and not (folder / "setting.json").exists():
        _write_atomic(folder / "setting.json", lambda tmp: Path(tmp).write_text(json.dumps(setting, indent=1, default=str)))
    hashes = [content_hash(p) for p in paths]
    files = [folder / h[:2] / f"{h}.safetensors" for h in hashes]
    missing = {i for i, f in enumerate(files) if not f.exists()}
    chunks = [range(s, min(s + batch_size, len(paths))) for s in range(0, len(paths), batch_size)]
    mine = chunks if world is None else chunks[world.rank::world.size]
    todo = [c for c in mine if missing.intersection(c)]
    bar = tqdm(total=sum(len(c) for c in todo), desc="features", unit="img", disable=not progress or not todo,
               leave=False, dynamic_ncols=True)
    made = 0
    with torch.no_grad():
        for chunk in todo:
            x = load_batch([paths[i] for i in chunk], preprocess).to(device)
            feats = prefix(x)
            plain = _plain_features(feats, len(chunk))
            for j, i in enumerate(chunk):
                if i in missing and not files[i].exists():  # a duplicate image is written once
                    files[i].parent.mkdir(exist_ok=True)
                    one = {str(k): t[j].to("cpu").contiguous().clone() for k, t in enumerate(feats)
                           if isinstance(t, torch.Tensor)}
                    _write_atomic(files[i], lambda tmp, one=one: save_file(one, tmp, metadata={"plain": plain}))
                    made += 1
            bar.update(len(chunk))
    bar.close()
    if world is not None and world.size > 1:
        made = int(all_reduce(torch.tensor(made), world).item())
    return files, made


def _plain_features(feats: tuple, n: int) -> str:
    """JSON {position: "batch" | number} of the features that are not per-image tensors: the batch
    size (a traced x.size(0)), or a constant (a spatial size). ValueError for anything else."""
    plain = {}
    for k, t in enumerate(feats):
        if isinstance(t, torch.Tensor):
            if not (t.dim() >= 1 and t.shape[0] == n):
                raise ValueError(f"feature {k} is not a per-image batch (shape {tuple(t.shape)} for {n} images); "
                                 f"this cut cannot be cached on disk (--cache none)")
        elif isinstance(t, int) and not isinstance(t, bool):
            # Ambiguous when a chunk has as many images as the constant: chunks of 1 would tell.
            plain[str(k)] = "batch" if t == n else t
        else:
            raise ValueError(f"feature {k} is a {type(t).__name__}; this cut cannot be cached on disk (--cache none)")
    return json.dumps(plain)


class FeatureFiles(Dataset):
    """(features tuple, label) per image, read from its file when a batch asks for it."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int]):
        self.files, self.labels = list(files), list(labels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from safetensors import safe_open

        with safe_open(str(self.files[i]), framework="pt") as fh:
            plain = json.loads((fh.metadata() or {}).get("plain", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        count = len(tensors) + len(plain)
        feats = tuple(tensors[str(k)] if str(k) in tensors else (BATCH if plain[str(k)] == "batch" else plain[str(k)])
                      for k in range(count))
        return feats, self.labels[i]
