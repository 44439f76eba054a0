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


def delta_weight(a: torch.Tensor, b: torch.Tensor, scale: float, *, rank: int | None = None,
                 layer: str | None = None) -> torch.Tensor:
    """scale * B @ A in the weight's own layout (out, in) or (out, in/groups, kh, kw).

    ValueError (naming `layer`, when given) if A and B are not floating point or do not pair up:
    A (r, ...), B (out, r, 1, ...), with r = `rank` when given (the config's rank for the layer).
    """
    if rank is None:  # no config at hand: A's rows must match B's columns
        rank = a.shape[0] if isinstance(a, torch.Tensor) and a.dim() else 0
        _check_pair(layer, {"A": a, "B": b}, rank, source="A's rank")
    else:
        _check_pair(layer, {"A": a, "B": b}, rank)
    return (scale * (b.flatten(1) @ a.flatten(1))).reshape(b.shape[0], *a.shape[1:])


_FLOATS = "float32, float16, bfloat16 or float64"


def _check_pair(layer: str | None, ab, rank: int, weight_shape: tuple[int, ...] | None = None,
                source: str = "the config's rank") -> None:
    """ValueError naming the layer unless `ab` is {"A", "B"} of floating tensors with the shapes of
    a rank-`rank` adapter (of a weight of `weight_shape`, when given)."""
    where = "adapter" if layer is None else f"layer {layer!r}"
    if not isinstance(ab, Mapping) or set(ab) != {"A", "B"}:
        keys = sorted(ab) if isinstance(ab, Mapping) else type(ab).__name__
        raise ValueError(f"{where}: an adapter is a dict {{'A': tensor, 'B': tensor}}, got {keys}")
    for k in "AB":
        t = ab[k]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            what = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{where}: {k} is {what}; adapter tensors must be floating point ({_FLOATS})")
    a, b = tuple(ab["A"].shape), tuple(ab["B"].shape)
    shape = weight_shape if weight_shape is not None else (b[0] if b else 0, *a[1:])
    want_a, want_b = (rank, *shape[1:]), (shape[0], rank, *[1] * (len(shape) - 2))
    if len(shape) < 2 or (a, b) != (want_a, want_b):
        weight = f"its weight {tuple(weight_shape)} at " if weight_shape is not None else ""
        raise ValueError(f"{where}: adapter shapes A {a}, B {b} do not fit {weight}{source} {rank} "
                         f"(expected A {want_a}, B {want_b}); was this adapter made for another model "
                         f"or with another config?")


def _fold(params: Mapping[str, torch.Tensor], lora: Lora, cfg: LoraConfig, sign: int) -> FrozenParams:
    out = dict(params)
    for name, ab in lora.items():
        w_key = key(name, "weight")
        if w_key not in out:
            raise ValueError(f"layer {name!r}: the base has no {w_key!r}; is this adapter for another model?")
        w = out[w_key]
        _check_pair(name, ab, cfg.rank_for(name), tuple(w.shape))
        folded = w + sign * delta_weight(ab["A"].to(w), ab["B"].to(w), cfg.scale_for(name))
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
        _check_pair(name, lora[name], cfg.rank_for(name), tuple(modules[name].weight.shape))
