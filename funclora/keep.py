"""A keep set against collapse: λ·KL(base ‖ adapted) on images the adapter should leave alone.

Teaching a head "goldfish" from five drawings alone invites a shortcut ("anything drawn is a
goldfish"). The keep term holds the adapted model's class distribution on other pictures at the
frozen model's. The functional design gives the target for free: the base's answer is
`f(base, None, x_keep)`, computed once before training, never per step.

>>> import torch, funclora as fl
>>> from funclora.keep import keep_term
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Linear(4, 3).eval()
>>> cfg = fl.LoraConfig(rank=2)
>>> base, f, lora = fl.freeze(model), fl.functional(model, cfg), fl.init_lora(model, cfg)
>>> extra = keep_term(f, base, torch.randn(5, 4), weight=1.0)
>>> extra(lora, base).item()                 # B = 0: the adapted model is the base
0.0
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .lora import Lora

__all__ = ["DEFAULT_WEIGHT", "kl_to_base", "keep_term"]

DEFAULT_WEIGHT = 10.0
"""λ when none is given to `keep_term`. The command line chooses its own per mode
(funclora.vision.training.DEFAULTS: 3 for --mode layers, 10 for --mode seed, tuned on drawings
kept apart from the ones the README reports on)."""


def kl_to_base(base_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p) averaged over the batch, from logits (N, C): 0 exactly when they agree.

    >>> kl_to_base(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]])).item()
    0.0
    """
    if base_logits.shape != logits.shape:
        raise ValueError(f"keep set: base logits {tuple(base_logits.shape)} and adapted logits "
                         f"{tuple(logits.shape)} differ in shape")
    return F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(base_logits, dim=-1),
                    reduction="batchmean", log_target=True)


def keep_term(f: Callable[[Any, Lora | None, torch.Tensor], torch.Tensor], base: Any,
              x_keep: torch.Tensor | tuple, weight: float = DEFAULT_WEIGHT, *,
              target: torch.Tensor | None = None) -> Callable[[Lora, Any], torch.Tensor]:
    """extra(lora, base) = weight * KL(f(base, None, x_keep) ‖ f(base, lora, x_keep)), ready for
    `funclora.train.fit(..., extra=...)`.

    The base's logits are computed here, once, under no_grad (or passed in as `target` by a
    caller that has them already); each call then runs only the adapted model on the keep images.
    `f`, `base` and `x_keep` are whatever `fit` trains with: the full model on images, or a
    trainable suffix on cached features (`funclora.split`: x_keep is then prefix's tuple).
    """
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
        raise ValueError(f"keep weight must be a finite number >= 0, got {weight!r}")
    first = x_keep[0] if isinstance(x_keep, tuple) else x_keep  # cached features: a tuple of batches
    if isinstance(first, torch.Tensor) and first.shape[0] == 0:
        raise ValueError("keep set is empty (expected at least one image)")
    if target is None:
        with torch.no_grad():
            target = f(base, None, x_keep)
    target = target.detach()

    def extra(lora: Lora, base: Any) -> torch.Tensor:
        return weight * kl_to_base(target, f(base, lora, x_keep))

    return extra
