"""The tutorial's own variant ("seed"): one low-rank adapter on the flattened input image.

    pred = base(x) + x_flat @ A @ B        A: (3*224*224, r) ~ randn,  B: (r, 1000) = 0

Only A and B are trained (`torch.func.grad` over the adapter dict); the base model is frozen, so
its logits are computed once and every step costs two thin matrix products. The adapter is the
dict {"input": {"A": A, "B": B}} and is saved with `fl.save` like any other (metadata mode="seed").

>>> import torch
>>> from funclora.vision.seed import apply_seed, init_seed
>>> x = torch.randn(2, 3, 4, 4)
>>> adapter = init_seed(x[0].numel(), num_classes=5, rank=2, seed=0)
>>> {k: tuple(v.shape) for k, v in adapter["input"].items()}
{'A': (48, 2), 'B': (2, 5)}
>>> base_logits = torch.zeros(2, 5)
>>> torch.equal(apply_seed(base_logits, adapter, x), base_logits)   # B starts at zero
True

Why plain SGD with a tiny learning rate (1e-5): A is drawn with `torch.randn` exactly as in the
tutorial, so x_flat @ A is huge (x_flat has 150,528 entries of about unit size: measured std of
x_flat @ A is 222 on the five drawn goldfish with efficientnet_lite0's preprocessing). An SGD step
on B moves the logits by about lr * r * |x_flat @ A|^2 * grad: measured, one step at lr 1e-3 pushes
the goldfish logit up by 258 on average (every image, goldfish or not, becomes "goldfish" with
p = 1). At lr 1e-5 the first step moves it by 2.6 and training is smooth (loss 8.07 -> 0.50 after
5 steps -> 0.04 after 20, 5/5 goldfish from step 5). Scaling A by 1/sqrt(fan_in) would allow a
far larger lr and behaves alike; we keep the tutorial's init and pick the learning rate for it
instead. Adam is not used here: its per-element steps move every one of A's 1.2 million entries
by lr at once, so x_flat @ A jumps by about lr * |x_flat|_1 whatever A's scale.

An adapter on raw pixels learns whatever the goldfish pictures share, a pale background most of
all: trained on the five goldfish alone it calls 16 of 20 held-out non-goldfish drawings
"goldfish". `train_seed(..., keep=(images, base logits))` adds the keep term of `funclora.keep`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from ..config import LoraConfig
from ..apply import Apply
from ..keep import DEFAULT_WEIGHT, kl_to_base
from ..lora import Lora
from ..optim import sgd
from ..train import cross_entropy, fit

__all__ = ["TARGET", "LR", "init_seed", "apply_seed", "seed_function", "seed_config", "train_seed"]

TARGET = "input"
"""The adapter dict's only key: the adapter sits on the input image, not on a layer."""

LR = 1e-5
"""Default SGD learning rate for A ~ randn (see the module docstring for the measurements)."""


def init_seed(fan_in: int, num_classes: int, rank: int, seed: int = 0) -> Lora:
    """{"input": {"A": randn(fan_in, rank), "B": zeros(rank, num_classes)}}, drawn on the CPU from `seed`."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    generator = torch.Generator().manual_seed(seed)
    return {TARGET: {"A": torch.randn(fan_in, rank, generator=generator),
                     "B": torch.zeros(rank, num_classes)}}


def apply_seed(base_logits: torch.Tensor, adapter: Lora, x: torch.Tensor) -> torch.Tensor:
    """base_logits + x_flat @ A @ B, with x_flat the images (N, C, H, W) flattened to (N, C*H*W)."""
    a, b = adapter[TARGET]["A"], adapter[TARGET]["B"]
    x_flat = x.flatten(1)
    if x_flat.shape[1] != a.shape[0] or b.shape[1] != base_logits.shape[1]:
        raise ValueError(f"seed adapter of shape A {tuple(a.shape)}, B {tuple(b.shape)} does not fit "
                         f"images of {x_flat.shape[1]} values and {base_logits.shape[1]} classes")
    return base_logits + x_flat @ a @ b


def seed_function(model: nn.Module) -> Apply:
    """The tutorial's pred(base, adapter, x) = model(x) + x_flat @ A @ B as a pure function."""
    def f(base: Mapping[str, torch.Tensor], adapter: Lora | None, x: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, dict(base), (x,))
        return logits if adapter is None else apply_seed(logits, adapter, x)

    return f


def seed_config(adapter: Lora) -> LoraConfig:
    """The config saved beside a seed adapter: its rank, scale 1 (the tutorial has no alpha)."""
    rank = adapter[TARGET]["A"].shape[1]
    return LoraConfig(rank=rank, alpha=rank, targets=(TARGET,))


def train_seed(base_logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, rank: int = 8,
               lr: float = LR, steps: int = 30, seed: int = 0, progress: bool = True,
               keep: tuple[torch.Tensor, torch.Tensor] | None = None, keep_weight: float = DEFAULT_WEIGHT,
               terms: bool = False) -> tuple[Lora, list[float] | dict[str, list[float]]]:
    """Train a fresh seed adapter with SGD on (x, y); `base_logits` = the frozen base's output on x.

    The base is frozen, so its logits are an input here (computed once) rather than recomputed
    every step: the same numbers as `seed_function(model)`, at a fraction of the cost.

    `keep` = (keep images, the base's logits on them) adds keep_weight * KL(base || adapted) on
    those images (`funclora.keep.kl_to_base`): without it, an adapter on raw pixels learns
    "a white page means goldfish". With `terms=True` the second result is fit's
    {"loss", "train", "extra"} history instead of the list of losses.
    """
    adapter = init_seed(x[0].numel(), base_logits.shape[1], rank, seed)

    def f(logits: torch.Tensor, adapter: Lora, x: torch.Tensor) -> torch.Tensor:
        return apply_seed(logits, adapter, x)

    extra = None
    if keep is not None:
        keep_x, keep_logits = keep
        if keep_x.shape[0] == 0:
            raise ValueError("keep set is empty (expected at least one image)")
        if not (isinstance(keep_weight, (int, float)) and math.isfinite(keep_weight) and keep_weight >= 0):
            raise ValueError(f"keep weight must be a finite number >= 0, got {keep_weight!r}")
        keep_logits = keep_logits.detach()

        def extra(adapter: Lora, _: torch.Tensor) -> torch.Tensor:
            return keep_weight * kl_to_base(keep_logits, apply_seed(keep_logits, adapter, keep_x))

    adapter, history = fit(f, base_logits, adapter, x, y, opt=sgd(lr), steps=steps, loss_fn=cross_entropy,
                           extra=extra, progress=progress, terms=True)
    return adapter, (history if terms else history["loss"])
