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

import contextlib
import glob
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

from .config import LoraConfig
from .lora import Lora

__all__ = ["save", "load", "load_modules", "read_metadata", "check_tensors", "serialize", "write_file", "write_atomic",
           "remove_stale_temps", "check_output", "lock_output", "claim_output", "save_or_keep"]

FORMAT = "funclora.lora/1"
MODULES = "modules_to_save"
"""Prefix of the tensors of layers saved whole beside the adapters (a new head), as in PEFT."""


def save(path: str | os.PathLike, lora: Lora, cfg: LoraConfig,
         metadata: Mapping[str, str] | None = None, *,
         modules: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
    """Write `lora` and `cfg` to a .safetensors file, atomically (a failed write leaves no file).
    The same inputs give the same bytes; non-finite or non-float tensors are refused.

    `modules` = {layer: {"weight": ..., "bias": ...}}: layers saved whole beside the adapters
    (a new head, `funclora.head`), read back by `load_modules`."""
    extra = dict(metadata or {})
    clash = {"format", "config", MODULES} & set(extra)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved by funclora")
    check_tensors(lora, Path(path))
    check_tensors(modules or {}, Path(path))
    tensors = {f"{name}.{part}": t.detach().contiguous().cpu()
               for name, ab in lora.items() for part, t in ab.items()}
    if modules:
        tensors.update({f"{MODULES}.{name}.{part}": t.detach().contiguous().cpu()
                        for name, parts in modules.items() for part, t in parts.items()})
        extra[MODULES] = json.dumps(sorted(modules))
    header = {"format": FORMAT, "config": cfg.to_json(), **{k: str(v) for k, v in extra.items()}}
    write_file(path, serialize(tensors, header))


FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensors(lora: Lora, where: str | os.PathLike) -> None:
    """ValueError naming `where` and the layer unless every A and B is a finite float tensor.

    An integer or bool adapter would be cast silently where it is used, and a NaN one makes every
    prediction NaN (whose argmax is class 0): neither is ever written or read.
    """
    for name, ab in lora.items():
        for part, t in ab.items():
            if not isinstance(t, torch.Tensor) or t.dtype not in FLOATS:
                kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{where}: layer {name!r} {part} is {kind}, not a float tensor")
            if not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"{where}: layer {name!r} {part} has {bad} non-finite values (nan or inf); "
                                 f"the adapter has diverged")


def serialize(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes with the header's keys sorted: the same inputs give the same bytes
    (safetensors itself writes the metadata in hash order, which varies from run to run)."""
    data = safetensors_save(dict(tensors), metadata=dict(metadata))
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # keep the tensor data 8-byte aligned, as safetensors does
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


TMP_SUFFIX = ".funclora-tmp"
"""Temporary files are `.<name>.<pid>.funclora-tmp` beside their target: one that a killed process
left (its pid is gone) is removed by the next write to that target."""


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `write_atomic`), flushed to disk before the rename."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    write_atomic(path, write)


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """`write(tmp)` into a temporary file beside `path`, then rename it to `path`: `path` is either
    the old file or the new one, never half of one. Permissions follow the umask, as for any new
    file. A failure (a full disk...) raises OSError naming `path`, and leaves no temporary file.
    Checkpoints and feature caches write through here too, so a killed run's leftovers are cleaned
    the same way (`remove_stale_temps`)."""
    path = Path(path)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(f"{path}: cannot write it ({e.strerror or e})") from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of `path` that processes no longer alive left behind."""
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}"):
            pid = tmp.name[len(path.name) + 2:-len(TMP_SUFFIX)]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of an adapter file (format, config JSON and anything passed to save)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block, a folder is no adapter
            raise ValueError(f"{path}: not a regular file (expected an adapter .safetensors file)")
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
    """(lora, cfg) from a file written by `save`; its config and tensors checked as `save` checks them
    (layers saved whole: `load_modules`)."""
    meta = read_metadata(path)
    if "config" not in meta:
        raise ValueError(f"{path}: the header has no 'config' (a funclora adapter stores its LoraConfig there)")
    try:
        cfg = LoraConfig.from_json(meta["config"])
    except ValueError as e:
        raise ValueError(f"{path}: bad config in the header: {e}") from None
    lora: Lora = {}
    try:
        with safe_open(os.fspath(path), framework="pt", device=str(device)) as fh:
            keys = list(fh.keys())
            for key in keys:
                if key.startswith(MODULES + "."):
                    continue
                name, _, part = key.rpartition(".")
                if part not in ("A", "B"):
                    raise ValueError(f"{path}: unexpected tensor {key!r} (expected '<layer>.A' / '<layer>.B')")
                lora.setdefault(name, {})[part] = fh.get_tensor(key)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: unreadable adapter ({e})") from None
    for name, ab in lora.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{path}: layer {name!r} has {sorted(ab)} but needs both A and B")
    if not keys:
        raise ValueError(f"{path}: the adapter holds no tensors")
    check_tensors(lora, path)
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
    check_tensors(modules, path)
    return modules


# ------------------------------------------------------ guarding an output file (CLI --out) ---

def check_output(path: str | os.PathLike, *, force: bool = False, what: str = "--out") -> None:
    """ValueError (naming `what` and `path`) unless an adapter can be written to `path`: run it
    BEFORE the work whose result goes there. An existing file that is not a funclora adapter is
    only replaced with `force`; a folder or a FIFO never is. The folder must be writable (probed)."""
    path = Path(path)
    name = f"{what} {path}"
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None  # (a file on the way is named below)
    except OSError as e:
        raise ValueError(f"{name}: cannot use it ({e.strerror or e})") from None
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise ValueError(f"{name}: is a folder (expected the adapter's file name, e.g. "
                             f"{path / 'adapter.safetensors'})")
        if not stat.S_ISREG(mode):
            raise ValueError(f"{name}: exists and is not a regular file; choose another file name")
        if not force:
            try:
                read_metadata(path)
            except ValueError:
                raise ValueError(f"{name}: exists and is not a funclora adapter; pass --force to "
                                 f"replace it, or choose another file name") from None
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folders up to it will be made: the first existing one must be writable
    if not folder.is_dir():
        raise ValueError(f"{name}: {folder} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.probe.") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        raise ValueError(f"{name}: cannot write into {folder} ({e.strerror or e})") from None


@contextlib.contextmanager
def lock_output(path: str | os.PathLike, *, what: str = "--out"):
    """Hold an exclusive lock on writing `path` (a file in the temporary folder named for `path`'s
    absolute location, removed after; nothing is created beside `path`): a second run that would
    write the same file is refused, naming the first one's pid.

    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "a.safetensors")
    >>> with lock_output(out):
    ...     with lock_output(out):
    ...         pass
    Traceback (most recent call last):
    ValueError: --out ...: another funclora run (pid ...) is writing it; wait for it or choose another file name
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock
        yield
        return
    path = Path(path)
    lock = _lock_file(path)
    while True:
        fh = open(lock, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            fh.close()
            raise ValueError(f"{what} {path}: another funclora run (pid {pid}) is writing it; wait for "
                             f"it or choose another file name") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()  # the holder removed the file as we opened it: lock the new one
    try:
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        fh.close()


def claim_output(path: str | os.PathLike, *, held: contextlib.ExitStack, force: bool = False,
                 what: str = "--out") -> None:
    """`check_output(path)`, then hold `lock_output(path)` until `held` closes: a command's claim
    on the file it will write, made before its work."""
    check_output(path, force=force, what=what)
    held.enter_context(lock_output(path, what=what))


def _lock_file(path: Path) -> Path:
    where = os.path.realpath(path)  # the same file however it is spelled (relative, through links)
    digest = hashlib.sha256(os.fsencode(where)).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"funclora-{digest}.lock"


def save_or_keep(path: str | os.PathLike, lora: Lora, cfg: LoraConfig,
                 metadata: Mapping[str, str] | None = None, *,
                 modules: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
    """`save`, and if writing `path` fails (a full disk...), keep the adapter in the temporary folder
    (else the home folder) and raise OSError naming both: a long training is never lost to a write."""
    try:
        save(path, lora, cfg, metadata, modules=modules)
        return
    except OSError as e:
        failure = str(e)
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (Path(tempfile.gettempdir()), Path.home()):
        kept = folder / f"funclora-kept-{stamp}-{os.getpid()}-{path.name}"
        try:
            save(kept, lora, cfg, metadata, modules=modules)
        except OSError:
            continue
        raise OSError(f"{failure}; the adapter was kept in {kept} (move it where you want it)")
    raise OSError(f"{failure}; it could not be kept in {tempfile.gettempdir()} or {Path.home()} either")
