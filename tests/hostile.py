"""Shared pieces of the hostile-input campaign (tests/core/hostile, tests/vision/hostile).

Every case hands funclora one bad input, as a user would, and checks the same promises:
the exit status, exactly one clear line on stderr naming the file or argument, no traceback,
no hang (an alarm ends a case that blocks), nothing written or overwritten, no non-finite file.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
from pathlib import Path

import torch
from safetensors import safe_open

LITE = ("--backbone", "efficientnet_lite0", "--weights", "none")
"""The cheap backbone: random weights (no download), 4.6 M parameters."""

TIMEOUT = 60
"""Seconds before a case counts as hung (generous: the machine is shared)."""


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: int = TIMEOUT):
    """Fail (not block forever) if the body takes longer than `seconds`: SIGALRM interrupts even a
    blocking open() of a FIFO."""
    def alarm(signum, frame):
        raise Hang(f"no answer after {seconds} s: hung")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli(*argv) -> tuple[int, str, str]:
    """`funclora ARGV` in this process: (exit status, stdout, stderr)."""
    from funclora.vision.cli import main

    out, err = io.StringIO(), io.StringIO()
    with no_hang(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_line(err: str, *names: str) -> str:
    """The only line on stderr; it mentions every one of `names` (the file or argument at fault)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    for name in names:
        assert str(name) in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def fails(code_err: tuple[int, str, str], *names: str, code: int = 1) -> str:
    """Assert an error exit with one line naming `names`; return the line."""
    status, out, err = code_err
    assert status == code, f"exit {status}, expected {code}; stderr: {err}"
    return one_line(err, *names)


def snapshot(folder: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256 (or the link / fifo it is)} of everything under `folder`, hidden
    files included: compare two to prove nothing was written, changed or left behind."""
    folder = Path(folder)
    seen = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                seen[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                seen[rel] = "dir"
            elif path.is_file():
                seen[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[rel] = "special"
    return seen


def assert_finite_files(folder: str | os.PathLike) -> int:
    """Every .safetensors file under `folder` holds only finite float tensors; returns how many files."""
    n = 0
    for path in Path(folder).rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                t = fh.get_tensor(key)
                assert t.is_floating_point() and torch.isfinite(t).all(), f"{path}: {key} is not finite float"
        n += 1
    return n


def tiny_images(folder: str | os.PathLike, n: int = 2, size: int = 16) -> Path:
    """`n` small distinct PNGs in `folder`."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (size, size), (40 * i, 120, 200 - 30 * i)).save(folder / f"img{i}.png")
    return folder


def train_args(images, out, *extra) -> list:
    """A train command line that takes well under a second: lite0, random weights, 2 steps, no keep set."""
    return ["train", images, *LITE, "--steps", 2, "--keep", "none", "--quiet", "--out", out, *extra]


def write_adapter(path: str | os.PathLike, tensors: dict, metadata: dict) -> Path:
    """Write a (possibly hostile) adapter file directly, bypassing funclora's own checks."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return Path(path)


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file, unchecked."""
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
