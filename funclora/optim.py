"""Pure optimizers as (init, update) pairs, like optax: no tensor is ever modified in place.

>>> import torch, funclora as fl
>>> opt = fl.adam(lr=0.1)
>>> params = {"w": torch.ones(2)}
>>> state = opt.init(params)
>>> params, state = opt.update({"w": torch.ones(2)}, state, params)
>>> params["w"]
tensor([0.9000, 0.9000])
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils._pytree import tree_map

__all__ = ["Optimizer", "sgd", "adam", "adamw"]

Schedule = float | Callable[[int], float]
"""A learning rate, or a function of the step number (1, 2, ...) that gives it."""


class Optimizer(NamedTuple):
    init: Callable[[Any], dict]
    update: Callable[[Any, dict, Any], tuple[Any, dict]]  # (grads, state, params) -> (params, state)


def _rate(lr: Schedule, step: int) -> float:
    return lr(step) if callable(lr) else lr


def _check(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and v >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")


def sgd(lr: Schedule, momentum: float = 0.0, nesterov: bool = False) -> Optimizer:
    """Stochastic gradient descent with optional (Nesterov) momentum."""
    _check(momentum=momentum, **({} if callable(lr) else {"lr": lr}))

    def init(params):
        return {"step": 0, "velocity": tree_map(torch.zeros_like, params)}

    def update(grads, state, params):
        step = state["step"] + 1
        velocity = tree_map(lambda v, g: momentum * v + g, state["velocity"], grads)
        direction = tree_map(lambda v, g: g + momentum * v, velocity, grads) if nesterov else velocity
        rate = _rate(lr, step)
        return tree_map(lambda p, d: p - rate * d, params, direction), {"step": step, "velocity": velocity}

    return Optimizer(init, update)


def adamw(lr: Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-2) -> Optimizer:
    """Adam with decoupled weight decay (Loshchilov & Hutter); weight_decay=0 is plain Adam."""
    _check(b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, **({} if callable(lr) else {"lr": lr}))

    def init(params):
        zeros = tree_map(torch.zeros_like, params)
        return {"step": 0, "mu": zeros, "nu": zeros}

    def update(grads, state, params):
        step = state["step"] + 1
        mu = tree_map(lambda m, g: torch.lerp(m, g, 1 - b1), state["mu"], grads)
        nu = tree_map(lambda v, g: torch.lerp(v, g * g, 1 - b2), state["nu"], grads)
        rate, c1, c2 = _rate(lr, step), 1 - b1**step, 1 - b2**step

        def step_param(p, m, v):
            return p - rate * ((m / c1) / ((v / c2).sqrt() + eps) + weight_decay * p)

        return tree_map(step_param, params, mu, nu), {"step": step, "mu": mu, "nu": nu}

    return Optimizer(init, update)


def adam(lr: Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adam (Kingma & Ba) with bias correction."""
    return adamw(lr, b1, b2, eps, weight_decay=0.0)
