"""Adapters on disk: safetensors with the config in the header. Never pickle.

>>> import tempfile, os, torch, funclora as fl
>>> model = torch.nn.Linear(4, 3); cfg = fl.LoraConfig(rank=2)
>>> path = os.path.join(tempfile.mkdtemp(), "a.safetensors")
>>> fl.save(path, fl.init_lora(model, cfg), cfg, metadata={"backbone": "toy"})
>>> lora, cfg2 = fl.load(path)
>>> cfg2 == cfg, fl.read_metadata(path)["backbone"]
(True, 'toy')
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import LoraConfig
from .lora import Lora

__all__ = ["save", "load", "load_modules", "read_metadata"]

FORMAT = "funclora.lora/1"
MODULES = "modules_to_save"
"""Prefix of the tensors of layers saved whole beside the adapters (a new head), as in PEFT."""


def save(path: str | os.PathLike, lora: Lora, cfg: LoraConfig,
         metadata: Mapping[str, str] | None = None, *,
         modules: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
    """Write `lora` and `cfg` to a .safetensors file, atomically (a failed write leaves no file).

    `modules` = {layer: {"weight": ..., "bias": ...}}: layers saved whole beside the adapters
    (a new head, `funclora.head`), read back by `load_modules`."""
    extra = dict(metadata or {})
    clash = {"format", "config", MODULES} & set(extra)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved by funclora")
    tensors = {f"{name}.{part}": t.detach().contiguous().cpu()
               for name, ab in lora.items() for part, t in ab.items()}
    if modules:
        tensors.update({f"{MODULES}.{name}.{part}": t.detach().contiguous().cpu()
                        for name, parts in modules.items() for part, t in parts.items()})
        extra[MODULES] = json.dumps(sorted(modules))
    header = {"format": FORMAT, "config": cfg.to_json(), **{k: str(v) for k, v in extra.items()}}
    write_atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp)` to a temporary file in `path`'s folder, then rename it to `path`: a failed
    write leaves no file and never a half-written one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of an adapter file (format, config JSON and anything passed to save)."""
    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such adapter file") from None
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a funclora adapter (header format {meta.get('format')!r}, "
                         f"expected {FORMAT!r}); PEFT adapters load with fl.from_peft")
    return meta


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Lora, LoraConfig]:
    """(lora, cfg) from a file written by `save` (layers saved whole: `load_modules`)."""
    cfg = LoraConfig.from_json(read_metadata(path)["config"])
    lora: Lora = {}
    with safe_open(os.fspath(path), framework="pt", device=str(device)) as fh:
        for key in fh.keys():
            if key.startswith(MODULES + "."):
                continue
            name, _, part = key.rpartition(".")
            if part not in ("A", "B"):
                raise ValueError(f"{path}: unexpected tensor {key!r} (expected '<layer>.A' / '<layer>.B')")
            lora.setdefault(name, {})[part] = fh.get_tensor(key)
    for name, ab in lora.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{path}: layer {name!r} has {sorted(ab)} but needs both A and B")
    return lora, cfg


def load_modules(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, dict[str, torch.Tensor]]:
    """{layer: {"weight": ..., "bias": ...}}: the layers `save(..., modules=...)` stored whole ({} if none)."""
    names = json.loads(read_metadata(path).get(MODULES, "[]"))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(os.fspath(path), framework="pt", device=str(device)) as fh:
        for key in fh.keys():
            if key.startswith(MODULES + "."):
                name, _, part = key[len(MODULES) + 1:].rpartition(".")
                if name not in names:
                    raise ValueError(f"{path}: tensor {key!r} belongs to no listed module {names}")
                modules.setdefault(name, {})[part] = fh.get_tensor(key)
    return modules
