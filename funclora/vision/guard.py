"""Checks on what a user hands the command line, made before the work starts, each failing with
one line that names the argument or file and says what would be right.

>>> seed_arg("7"), loss_blowup([2.0, 1.0]), printable("a\\nb.png")
(7, None, 'a\\\\nb.png')
>>> seed_arg(str(2**64))
Traceback (most recent call last):
argparse.ArgumentTypeError: expected an integer from 0 to 2**63-1, got '18446744073709551616'
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..config import LoraConfig, find_targets
from ..lora import Lora

__all__ = ["SEED_MAX", "BLOWUP", "seed_arg", "check_rank_fits", "check_seed_rank", "loss_blowup", "check_losses",
           "check_seed_adapter", "taught_label", "printable"]

SEED_MAX = 2**63 - 1
"""torch's generators take 64-bit seeds; above that the error was an 'Overflow' from deep inside."""

BLOWUP = 1e5
"""A final loss this many times the first is a diverged run, however finite its numbers are."""


def seed_arg(text: str) -> int:
    """argparse type of --seed: an integer from 0 to 2**63-1."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63-1, got {text!r}")
    return value


def check_rank_fits(model: nn.Module, cfg: LoraConfig, what: str = "--rank") -> None:
    """ValueError unless every target's rank is at most min(out, in) of its weight: a larger rank
    adds parameters but no expressiveness (B @ A cannot exceed that rank), and a huge one only
    fails in the allocator."""
    modules = dict(model.named_modules())
    for name in find_targets(model, cfg):
        weight = modules[name].weight
        limit = min(weight.shape[0], math.prod(weight.shape[1:]))
        if cfg.rank_for(name) > limit:
            raise ValueError(f"{what} {cfg.rank_for(name)}: larger than layer {name!r} allows (its weight is "
                             f"{'x'.join(map(str, weight.shape))}, so rank <= {limit})")


def check_seed_rank(rank: int, fan_in: int, classes: int) -> None:
    """The seed adapter's A is (fan_in, rank) and B (rank, classes): rank <= min of the two."""
    if rank > min(fan_in, classes):
        raise ValueError(f"--rank {rank}: larger than the seed adapter allows (images of {fan_in} values, "
                         f"{classes} classes, so rank <= {min(fan_in, classes)})")


def loss_blowup(losses: Sequence[float], factor: float = BLOWUP) -> str | None:
    """Why the losses look diverged (the last is `factor` times the first, or not finite), or None."""
    if not losses:
        return None
    first, last = losses[0], losses[-1]
    if not all(map(math.isfinite, losses)):
        return f"the loss became {last}"
    if first > 0 and last > factor * first:
        return f"the loss grew {last / first:.3g}x, from {first:.4g} to {last:.4g}"
    return None


def check_losses(losses: Sequence[float], lr: float, strict: bool) -> None:
    """A loss that grew by orders of magnitude: a loud warning on stderr, or with `strict` a
    ValueError (so nothing is saved)."""
    why = loss_blowup(losses)
    if why is None:
        return
    if strict:
        raise ValueError(f"training diverged: {why}; nothing saved (lower --lr, was {lr:g})")
    print(f"funclora: warning: training diverged: {why}; the adapter is saved anyway, but lower --lr "
          f"(was {lr:g}), or pass --strict to refuse such a result", file=sys.stderr)


def check_seed_adapter(lora: Lora, path: str | os.PathLike, target: str = "input") -> None:
    """A seed-mode adapter is exactly {target: {"A": (fan_in, r), "B": (r, classes)}}."""
    shapes = {name: {k: tuple(v.shape) for k, v in ab.items()} for name, ab in lora.items()}
    ok = (set(lora) == {target} and all(len(s) == 2 for s in shapes[target].values())
          and shapes[target]["A"][1] == shapes[target]["B"][0])
    if not ok:
        raise ValueError(f"{path}: the metadata says mode 'seed' but the tensors {shapes} are not a seed "
                         f"adapter ({target!r}: A (pixels, rank), B (rank, classes))")


def taught_label(meta: Mapping[str, str], classes: Sequence[str], path: str | os.PathLike) -> int | None:
    """The class an adapter was taught (its metadata 'label'), checked against `classes`; None if unrecorded."""
    text = meta.get("label")
    if text is None:
        return None
    try:
        label = int(text)
    except ValueError:
        raise ValueError(f"{path}: metadata label {text!r} is not a class id") from None
    if not 0 <= label < len(classes):
        raise ValueError(f"{path}: metadata label {label} is not a class of this backbone "
                         f"(0..{len(classes) - 1}); was the adapter made for another model?")
    return label


def printable(text: str) -> str:
    """`text` with newlines and other control characters escaped, for one line of a table."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def finite_output(logits: torch.Tensor, what: str) -> None:
    """ValueError unless every logit is finite (a NaN logit would be printed as a prediction)."""
    if not torch.isfinite(logits).all():
        raise ValueError(f"{what}: the outputs are not finite (nan or inf)")
