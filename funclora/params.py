"""The frozen base: a model's parameters and buffers as an immutable pytree.

>>> import torch, funclora as fl
>>> base = fl.freeze(torch.nn.Linear(3, 2))
>>> sorted(base), base["weight"].requires_grad
(['bias', 'weight'], False)
>>> base["weight"] = torch.zeros(2, 3)
Traceback (most recent call last):
TypeError: 'FrozenParams' object does not support item assignment
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["FrozenParams", "freeze", "count", "summary"]


class FrozenParams(Mapping[str, torch.Tensor]):
    """A read-only mapping from dotted names to tensors (a pytree node for torch.func)."""

    __slots__ = ("_tensors",)

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        object.__setattr__(self, "_tensors", dict(tensors))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __setattr__(self, name, value):
        raise TypeError("FrozenParams is immutable; build a new one with FrozenParams({...})")

    def __repr__(self) -> str:
        return f"FrozenParams({len(self)} tensors, {count(self):,} elements)"


# Registering the node lets torch.func / pytree utilities see through it like a dict.
pytree.register_pytree_node(
    FrozenParams,
    lambda p: (list(p.values()), list(p.keys())),
    lambda values, keys: FrozenParams(dict(zip(keys, values))),
    serialized_type_name="funclora.params.FrozenParams",
)


def freeze(model: nn.Module) -> FrozenParams:
    """Every parameter and buffer of `model`, detached: shares storage, copies nothing, needs no grad."""
    named = dict(model.named_parameters())
    named.update(model.named_buffers())
    return FrozenParams({name: t.detach() for name, t in named.items()})


def count(tree) -> int:
    """Number of scalars in a pytree of tensors (a base, a lora dict, gradients...)."""
    return sum(t.numel() for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor))


def summary(model: nn.Module, lora) -> str:
    """'trainable 339,776 of 143,667,240 (0.24%)': adapter size against the model's parameters."""
    trainable, total = count(lora), sum(p.numel() for p in model.parameters())
    return f"trainable {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
