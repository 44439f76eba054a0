"""The adapters themselves: initialise A and B, and fold them into (or out of) the base weights.

For a weight W of shape (out, in) or (out, in/groups, kh, kw), A has shape (r, *W.shape[1:]) and
B has shape (out, r, 1, ...): the shapes PEFT uses, so files translate one to one. The update is
dW = scale * (B.flatten(1) @ A.flatten(1)).reshape(W.shape), which for a grouped convolution is
again a grouped weight: every output channel mixes only the inputs of its own group.

>>> import torch, funclora as fl
>>> model = torch.nn.Sequential(torch.nn.Linear(6, 4))
>>> cfg = fl.LoraConfig(rank=2)
>>> lora = fl.init_lora(model, cfg, seed=0)
>>> {k: tuple(v.shape) for k, v in lora["0"].items()}
{'A': (2, 6), 'B': (4, 2)}
>>> merged = fl.merge(fl.freeze(model), lora, cfg)       # B = 0: W' == W
>>> torch.equal(merged["0.weight"], model[0].weight)
True
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .config import LoraConfig, find_targets
from .params import FrozenParams

__all__ = ["Lora", "init_lora", "delta_weight", "merge", "unmerge", "check_lora", "key"]

Lora = dict[str, dict[str, torch.Tensor]]
"""{layer name: {"A": tensor, "B": tensor}}: the trainable pytree."""


def key(layer: str, attr: str) -> str:
    """The dotted name of `attr` on module `layer` ("" is the root module itself)."""
    return f"{layer}.{attr}" if layer else attr


def init_lora(model: nn.Module, cfg: LoraConfig, seed: int = 0) -> Lora:
    """Fresh adapters for every target of `cfg`: A drawn by `cfg.init`, B zero (so f == base)."""
    generator = torch.Generator().manual_seed(seed)  # CPU draws: same adapter on every device
    modules = dict(model.named_modules())
    lora = {}
    for name in find_targets(model, cfg):
        weight, r = modules[name].weight, cfg.rank_for(name)
        a_shape = (r, *weight.shape[1:])
        if cfg.init == "gaussian":  # PEFT's "gaussian": std 1/r
            a = torch.randn(a_shape, generator=generator) / r
        else:  # kaiming_uniform(a=sqrt(5)) over fan_in, as nn.Linear and PEFT do
            bound = 1 / math.sqrt(math.prod(a_shape[1:]))
            a = torch.empty(a_shape).uniform_(-bound, bound, generator=generator)
        b = torch.zeros(weight.shape[0], r, *[1] * (weight.dim() - 2))
        lora[name] = {"A": a.to(weight), "B": b.to(weight)}
    return lora


def delta_weight(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * B @ A in the weight's own layout (out, in) or (out, in/groups, kh, kw)."""
    return (scale * (b.flatten(1) @ a.flatten(1))).reshape(b.shape[0], *a.shape[1:])


def _fold(params: Mapping[str, torch.Tensor], lora: Lora, cfg: LoraConfig, sign: int) -> FrozenParams:
    out = dict(params)
    for name, ab in lora.items():
        w_key = key(name, "weight")
        if w_key not in out:
            raise ValueError(f"layer {name!r}: the base has no {w_key!r}; is this adapter for another model?")
        w = out[w_key]
        delta = delta_weight(ab["A"].to(w), ab["B"].to(w), cfg.scale_for(name))
        if delta.shape != w.shape:
            raise ValueError(f"layer {name!r}: B @ A has shape {tuple(delta.shape)} but the weight is "
                             f"{tuple(w.shape)}; is this adapter for another model?")
        folded = w + sign * delta
        if not torch.isfinite(folded).all():
            raise ValueError(f"layer {name!r}: the merged weight is not finite (inf or nan); "
                             f"the adapter has diverged, check the learning rate")
        out[w_key] = folded
    return FrozenParams(out)


def merge(base: Mapping[str, torch.Tensor], lora: Lora, cfg: LoraConfig) -> FrozenParams:
    """W' = W + scale * B @ A for every adapted layer; every other tensor is passed through as is."""
    return _fold(base, lora, cfg, +1)


def unmerge(merged: Mapping[str, torch.Tensor], lora: Lora, cfg: LoraConfig) -> FrozenParams:
    """The inverse of `merge` (up to float rounding)."""
    return _fold(merged, lora, cfg, -1)


def check_lora(model: nn.Module, lora: Lora, cfg: LoraConfig) -> None:
    """ValueError naming the layer if `lora` does not fit `model` under `cfg` (keys and shapes)."""
    targets = find_targets(model, cfg)
    if set(lora) != set(targets):
        extra, missing = sorted(set(lora) - set(targets)), sorted(set(targets) - set(lora))
        raise ValueError(f"adapter layers do not match the config's targets: "
                         f"not targeted {extra[:3]}, missing {missing[:3]}")
    modules = dict(model.named_modules())
    for name in targets:
        w, r = modules[name].weight, cfg.rank_for(name)
        want = {"A": (r, *w.shape[1:]), "B": (w.shape[0], r, *[1] * (w.dim() - 2))}
        got = {k: tuple(lora[name][k].shape) if k in lora[name] else None for k in want}
        if got != want:
            raise ValueError(f"layer {name!r}: adapter shapes {got} do not fit its weight "
                             f"{tuple(w.shape)} at rank {r} (expected {want}); "
                             f"was this adapter made for another model?")
