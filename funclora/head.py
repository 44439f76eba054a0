"""A new classifier head trained in full beside the adapters (PEFT's `modules_to_save`).

A dataset whose classes the model does not have needs a last layer with one output per class.
`headless(model, name)` is the model with that layer replaced by nn.Identity (a structural copy:
the user's model is untouched, the tensors are shared); `new_head` draws the fresh layer's
weight and bias; `with_head(f)` runs the headless f and then the head, with both the adapters
and the head in one trainable pytree, {"lora": {...}, "head": {"weight", "bias"}}, so that
`torch.func.grad` trains them together and the optimizer, checkpoints and files see one tree.

>>> import torch, funclora as fl
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1000)).eval()
>>> body = fl.headless(model, "2")                       # features of size 8, no 1000-class layer
>>> cfg = fl.LoraConfig(rank=2, targets=("0",))
>>> params = {"lora": fl.init_lora(body, cfg), "head": fl.new_head(8, 3, seed=0)}
>>> f = fl.with_head(fl.functional(body, cfg))
>>> tuple(f(fl.freeze(body), params, torch.randn(5, 4)).shape)
(5, 3)
>>> type(model[2]).__name__                               # the user's model keeps its head
'Linear'
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .lora import Lora

__all__ = ["Head", "Params", "headless", "new_head", "with_head", "head_input_size"]

Head = dict[str, torch.Tensor]
"""{"weight": (classes, features), "bias": (classes,)}: a Linear layer as data."""
Params = dict[str, Any]
"""{"lora": Lora, "head": Head}: the trainable pytree of an adapter with a new head ("head" optional)."""


def headless(model: nn.Module, name: str) -> nn.Module:
    """A copy of `model` whose module `name` is nn.Identity; every other module and tensor is shared.

    Only the modules on the path to `name` are copied (shallowly), so the user's model and its
    weights are untouched and nothing is duplicated in memory.
    """
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise ValueError(f"head {name!r} is not a module of {type(model).__name__} "
                         f"(expected a module name such as {[n for n in modules if n][-1:]})")
    if not isinstance(modules[name], nn.Linear):
        raise ValueError(f"head {name!r} is a {type(modules[name]).__name__}; a new head replaces an nn.Linear")
    root = copy.copy(model)
    root._modules = dict(model._modules)
    parent = root
    *path, last = name.split(".")
    for part in path:
        child = copy.copy(parent._modules[part])
        child._modules = dict(child._modules)
        parent._modules[part] = child
        parent = child
    parent._modules[last] = nn.Identity()
    return root


def head_input_size(model: nn.Module, name: str) -> int:
    """The number of features the Linear layer `name` reads."""
    layer = dict(model.named_modules()).get(name)
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"head {name!r} is not an nn.Linear of {type(model).__name__}")
    return layer.in_features


def new_head(features: int, classes: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Head:
    """A fresh Linear(features, classes) as data, drawn as nn.Linear draws it (uniform ±1/sqrt(features)),
    on the CPU from `seed` (the same head on every device).

    >>> head = new_head(4, 3, seed=0)
    >>> tuple(head["weight"].shape), tuple(head["bias"].shape), bool(head["weight"].abs().max() <= 0.5)
    ((3, 4), (3,), True)
    """
    for what, n in (("features", features), ("classes", classes)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"new_head: {what} must be an integer >= 1, got {n!r}")
    generator = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(features)
    weight = torch.empty(classes, features).uniform_(-bound, bound, generator=generator)
    bias = torch.empty(classes).uniform_(-bound, bound, generator=generator)
    return {"weight": weight.to(dtype), "bias": bias.to(dtype)}


def with_head(f: Callable[[Any, "Lora | None", Any], torch.Tensor]) -> Callable[[Any, Params, Any], torch.Tensor]:
    """g(base, params, x) = head(f(base, params["lora"], x)), params = {"lora": ..., "head": ...}.

    Without "head" g is f with the adapters of params["lora"]; an empty or missing "lora" runs f's
    base (f(base, None, x)). g is as pure as f: `torch.func.grad` over params trains both.
    """
    def g(base: Any, params: Mapping[str, Any] | None, x: Any) -> torch.Tensor:
        params = params or {}
        out = f(base, params.get("lora") or None, x)
        head = params.get("head")
        if head is None:
            return out
        return F.linear(out.flatten(1).to(head["weight"].dtype), head["weight"], head["bias"])

    return g
