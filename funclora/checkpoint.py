"""Checkpoints: the whole training state as one safetensors file, written atomically.

A checkpoint holds any pytree of tensors and plain values (the adapters and head, the optimizer
state, the loss history, RNG states...) and the settings of the run that wrote it. The tree's
structure goes into the header as JSON (torch's pytree spec), its tensors as tensors, its other
leaves (ints, floats, strings, None) as JSON: nothing is pickled, and every tensor comes back
bit for bit, in its own dtype. A resumed run compares its settings with the checkpoint's and
refuses, naming each difference, when they do not match (`check_settings`).

>>> import tempfile, torch
>>> from funclora.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
>>> folder = tempfile.mkdtemp()
>>> tree = {"lora": {"fc": {"A": torch.ones(2, 3)}}, "opt": {"step": 7}, "losses": [0.5, 0.25]}
>>> path = save_checkpoint(folder, 7, tree, settings={"seed": "0", "lr": "0.01"})
>>> back, info = load_checkpoint(latest_checkpoint(folder))
>>> torch.equal(back["lora"]["fc"]["A"], tree["lora"]["fc"]["A"]), back["opt"], back["losses"], info["step"]
(True, {'step': 7}, [0.5, 0.25], 7)
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils._pytree import tree_flatten, tree_unflatten, treespec_dumps, treespec_loads

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "check_settings", "FORMAT"]

FORMAT = "funclora.checkpoint/1"
_NAME = re.compile(r"^step-(\d{9})\.safetensors$")


def save_checkpoint(folder: str | os.PathLike, step: int, tree: Any, *, settings: Mapping[str, str] | None = None,
                    keep: int = 2) -> Path:
    """Write `tree` as `folder`/step-<step>.safetensors (atomically: a temporary file renamed into
    place, so a run killed mid-write leaves the previous checkpoint intact) and delete all but the
    `keep` newest checkpoints. Returns the new file's path."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    leaves, spec = tree_flatten(tree)
    tensors, plain = {}, {}
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            # A copy of its own: safetensors refuses tensors that share memory (Adam's zeros).
            tensors[f"leaf.{i}"] = leaf.detach().to("cpu", copy=True).contiguous()
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            plain[str(i)] = leaf
        else:
            raise ValueError(f"checkpoint: leaf {i} is a {type(leaf).__name__} (expected tensors, numbers, "
                             f"strings or None)")
    header = {"format": FORMAT, "step": str(step), "treespec": treespec_dumps(spec),
              "plain": json.dumps(plain), "settings": json.dumps(dict(settings or {}), sort_keys=True)}
    path = folder / f"step-{step:09d}.safetensors"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    for old in _checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in `folder`, or None when there is none."""
    found = _checkpoints(Path(folder)) if Path(folder).is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Any, dict]:
    """(tree, {"step": int, "settings": {...}}) from a file written by `save_checkpoint`."""
    try:
        with safe_open(os.fspath(path), framework="pt", device=str(device)) as fh:
            header = fh.metadata() or {}
            if header.get("format") != FORMAT:
                raise ValueError(f"{path}: not a funclora checkpoint (header format {header.get('format')!r})")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from None
    spec = treespec_loads(header["treespec"])
    plain = json.loads(header["plain"])
    leaves = [tensors[f"leaf.{i}"] if f"leaf.{i}" in tensors else plain[str(i)] for i in range(spec.num_leaves)]
    return tree_unflatten(leaves, spec), {"step": int(header["step"]), "settings": json.loads(header["settings"])}


def check_settings(saved: Mapping[str, str], now: Mapping[str, str], where: str | os.PathLike = "checkpoint") -> None:
    """ValueError listing every setting that differs between a checkpoint and the run resuming it.

    >>> check_settings({"lr": "0.01", "seed": "0"}, {"lr": "0.01", "seed": "1"}, "ckpt")
    Traceback (most recent call last):
    ...
    ValueError: ckpt: cannot resume with different settings: seed was 0, now 1 (start a new run, or resume with the same settings)
    """
    differs = [f"{k} was {saved.get(k, '(unset)')}, now {now.get(k, '(unset)')}"
               for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if differs:
        raise ValueError(f"{where}: cannot resume with different settings: {'; '.join(differs)} "
                         f"(start a new run, or resume with the same settings)")


def _checkpoints(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)
