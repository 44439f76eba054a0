"""Run a model with adapters as a pure function `f(base, lora, x)`, built on functional_call.

Every targeted layer computes base_layer(x) + scale * B(A(dropout(x))): the low-rank path runs on
activations, so training never forms W + B @ A and backward never forms a full-size weight gradient.

>>> import torch, funclora as fl
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding="same"), torch.nn.Flatten(), torch.nn.Linear(8 * 25, 2))
>>> cfg = fl.LoraConfig(rank=2)
>>> base, lora, f = fl.freeze(model), fl.init_lora(model, cfg), fl.functional(model, cfg)
>>> x = torch.randn(4, 3, 5, 5)
>>> torch.equal(f(base, lora, x), f(base, None, x))     # B starts at zero
True
>>> grads = torch.func.grad(lambda l: f(base, l, x).square().mean())(lora)
>>> sorted(grads["2"])
['A', 'B']
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .config import LoraConfig, find_targets
from .lora import Lora, delta_weight, key

__all__ = ["functional", "STRATEGIES"]

STRATEGIES = ("activation", "weight")
"""How a layer applies its adapter: "activation" runs x -> A -> B beside the base layer;
"weight" adds scale * B @ A to W before the layer runs (one op, but a full-size weight gradient)."""

Apply = Callable[[Mapping[str, torch.Tensor], "Lora | None", torch.Tensor], torch.Tensor]


def functional(model: nn.Module, cfg: LoraConfig, *,
               strategy: str | Mapping[str, str] = "activation") -> Apply:
    """The pure function f(base, lora, x) of `model` with `cfg`'s adapters; f(base, None, x) is the base.

    The model is not modified: f runs a structural copy whose tensors are the model's own (no
    weights are copied), whose targeted layers carry the LoRA path, and which keeps the train/eval
    mode the model had here. `strategy` picks the path per layer (see STRATEGIES), by name or for all.
    """
    targets = find_targets(model, cfg)
    plan = {name: strategy if isinstance(strategy, str) else strategy.get(name, "activation")
            for name in targets}
    for name, how in plan.items():
        if how not in STRATEGIES:
            raise ValueError(f"layer {name!r}: unknown strategy {how!r}; use one of {STRATEGIES}")
        if how == "weight" and cfg.dropout:
            raise ValueError(f"layer {name!r}: the 'weight' strategy cannot apply dropout to the "
                             f"LoRA input; use 'activation' or dropout=0")
    shell = _shell(model, [n for n in targets if plan[n] == "activation"], cfg)
    by_weight = [n for n in targets if plan[n] == "weight"]
    target_set = set(targets)

    def f(base: Mapping[str, torch.Tensor], lora: Lora | None, x: torch.Tensor) -> torch.Tensor:
        params = dict(base)
        if lora:
            if lora.keys() != target_set:
                raise ValueError(f"adapter layers {sorted(lora)[:3]}... do not match the targets of "
                                 f"this function {targets[:3]}...; build f with the adapter's config")
            for name in by_weight:
                w = params[key(name, "weight")]
                params[key(name, "weight")] = w + delta_weight(lora[name]["A"], lora[name]["B"], cfg.scale_for(name))
            for name in target_set.difference(by_weight):
                params[key(name, "lora_A")], params[key(name, "lora_B")] = lora[name]["A"], lora[name]["B"]
        return functional_call(shell, params, (x,))

    return f


def _shell(model: nn.Module, names: list[str], cfg: LoraConfig) -> nn.Module:
    """A copy of the module tree sharing every tensor with `model`, with the LoRA path on `names`."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    shell = copy.deepcopy(model, memo=dict(shared))
    modules = dict(shell.named_modules())
    for name in names:
        layer = modules[name]
        # A runs through a hook-free twin of the layer itself, so that padding_mode, "same"
        # padding and subclasses that pad inside their own forward are honoured exactly.
        twin = copy.deepcopy(layer, memo=dict(shared))
        # Placeholders that functional_call fills per call: the adapter enters f as data.
        layer.register_buffer("lora_A", None, persistent=False)
        layer.register_buffer("lora_B", None, persistent=False)
        layer.register_forward_hook(partial(_add_low_rank, twin=twin, scale=cfg.scale_for(name), p=cfg.dropout))
    return shell


def _add_low_rank(layer: nn.Module, args: tuple, out: torch.Tensor, *,
                  twin: nn.Module, scale: float, p: float) -> torch.Tensor:
    a, b = layer.lora_A, layer.lora_B
    if a is None:  # f(base, None, x), or a merged base
        return out
    x = F.dropout(args[0], p, layer.training) if p else args[0]
    if isinstance(layer, nn.Linear):
        return out + scale * F.linear(functional_call(twin, {"weight": a, "bias": None}, (x,)), b)
    groups = layer.groups
    # A grouped weight mixes channels only within a group: run A once per group (A tiled),
    # then B as a grouped 1x1 conv, which is exactly conv(x, B @ A, groups).
    a = a.repeat(groups, 1, 1, 1) if groups > 1 else a
    h = functional_call(twin, {"weight": a, "bias": None}, (x,))
    return out + scale * F.conv2d(h, b, groups=groups)
