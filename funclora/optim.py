"""Pure optimizers as optax-shaped (init, update) pairs: no tensor is ever modified in place.

`update(grads, state, params)` returns the *updates* (what to add to the parameters) and the new
state; `apply_updates(params, updates)` adds them. Gradient transformations such as
`clip_by_global_norm` have the same shape, and `chain` runs several in order.

>>> import torch, funclora as fl
>>> opt = fl.chain(fl.clip_by_global_norm(1.0), fl.adam(lr=0.1))
>>> params = {"w": torch.ones(2)}
>>> state = opt.init(params)
>>> updates, state = opt.update({"w": torch.ones(2)}, state, params)
>>> fl.apply_updates(params, updates)["w"]
tensor([0.9000, 0.9000])

The step count in the state is a tensor (0 before the first update), so a `torch.compile`d step
sees the same graph every step instead of recompiling for each new Python integer.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils._pytree import tree_leaves, tree_map

__all__ = ["Optimizer", "Schedule", "sgd", "adam", "adamw", "clip_by_global_norm", "chain",
           "apply_updates"]

Schedule = float | Callable[[int], float]
"""A learning rate, or a function of the step count (0 for the first update, then 1, 2, ...) that
gives it; its values are checked when used (finite and >= 0)."""


class Optimizer(NamedTuple):
    """An optax-style gradient transformation: an optimizer, or a gradient clipper, or a chain."""
    init: Callable[[Any], Any]  # params -> state
    update: Callable[..., tuple[Any, Any]]  # (grads, state, params=None) -> (updates, state)


def apply_updates(params: Any, updates: Any) -> Any:
    """params + updates, leaf by leaf (new tensors: neither input is modified).

    >>> apply_updates({"w": torch.ones(2)}, {"w": torch.tensor([0.5, -1.0])})
    {'w': tensor([1.5000, 0.0000])}
    """
    return tree_map(lambda p, u: p + u, params, updates)


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _check(name: str, v: Any, low: float, high: float = math.inf, *, low_open: bool = False,
           high_open: bool = True) -> None:
    """ValueError unless v is a finite real number in the interval, written as the message says."""
    ok = _number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        interval = (f"{'>' if low_open else '>='} {low:g}" if high == math.inf else
                    f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        raise ValueError(f"{name} must be a finite number {interval}, got {v!r}")


def _check_lr(lr: Any) -> None:
    if not callable(lr):
        _check("lr", lr, 0.0, low_open=True)


def _count() -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64)


def _rate(lr: Schedule, count: torch.Tensor) -> float:
    """The learning rate of the update after `count` earlier ones; a schedule's value is checked."""
    if not callable(lr):
        return lr
    step = int(count)
    value = lr(step)
    try:
        rate = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"the lr schedule returned {value!r} at step {step}; "
                         f"it must return a number") from None
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"the lr schedule returned {rate} at step {step}; "
                         f"it must return a finite number >= 0")
    return rate


def sgd(lr: Schedule, momentum: float = 0.0, nesterov: bool = False) -> Optimizer:
    """Stochastic gradient descent with optional (Nesterov) momentum, as torch.optim.SGD."""
    _check_lr(lr)
    _check("momentum", momentum, 0.0, 1.0)
    if not isinstance(nesterov, bool) or (nesterov and momentum == 0):
        raise ValueError(f"nesterov must be True or False and needs a momentum > 0, "
                         f"got nesterov={nesterov!r}, momentum={momentum!r}")

    def init(params):
        return {"step": _count(), "velocity": tree_map(torch.zeros_like, params)}

    def update(grads, state, params=None):
        rate = _rate(lr, state["step"])
        velocity = tree_map(lambda v, g: momentum * v + g, state["velocity"], grads)
        direction = tree_map(lambda v, g: g + momentum * v, velocity, grads) if nesterov else velocity
        updates = tree_map(lambda d: -rate * d, direction)
        return updates, {"step": state["step"] + 1, "velocity": velocity}

    return Optimizer(init, update)


def adamw(lr: Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-2) -> Optimizer:
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW;
    weight_decay=0 is plain Adam. The decay reads `params`, so update needs them when it is > 0."""
    _check_lr(lr)
    _check("b1", b1, 0.0, 1.0)
    _check("b2", b2, 0.0, 1.0)
    _check("eps", eps, 0.0, low_open=True)
    _check("weight_decay", weight_decay, 0.0)

    def init(params):
        # Two trees, not one shared: aliased state would make torch.compile recompile after step 1.
        return {"step": _count(), "mu": tree_map(torch.zeros_like, params),
                "nu": tree_map(torch.zeros_like, params)}

    def update(grads, state, params=None):
        if weight_decay and params is None:
            raise ValueError("adamw with weight_decay > 0 needs the params: update(grads, state, params)")
        rate, step = _rate(lr, state["step"]), state["step"] + 1
        mu = tree_map(lambda m, g: torch.lerp(m, g, 1 - b1), state["mu"], grads)
        nu = tree_map(lambda v, g: torch.lerp(v, g * g, 1 - b2), state["nu"], grads)
        # Bias corrections in float64 (as torch.optim computes them in Python floats).
        c1, c2 = 1 - b1 ** step.double(), 1 - b2 ** step.double()

        directions = tree_map(lambda m, v: (m / c1) / ((v / c2).sqrt() + eps), mu, nu)
        if weight_decay:
            directions = tree_map(lambda d, p: d + weight_decay * p, directions, params)
        updates = tree_map(lambda d: -rate * d, directions)
        return updates, {"step": step, "mu": mu, "nu": nu}

    return Optimizer(init, update)


def adam(lr: Schedule = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam."""
    return adamw(lr, b1, b2, eps, weight_decay=0.0)


def clip_by_global_norm(max_norm: float) -> Optimizer:
    """Scale the gradients down so that their global L2 norm (over every leaf) is at most
    `max_norm`, as torch.nn.utils.clip_grad_norm_ does; gradients below it pass unchanged.
    Use it before an optimizer: `chain(clip_by_global_norm(1.0), adam(1e-3))`.

    >>> clip = clip_by_global_norm(1.0)
    >>> clip.update({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}, clip.init(None))[0]
    {'a': tensor([0.6000]), 'b': tensor([0.8000])}
    """
    _check("max_norm", max_norm, 0.0, low_open=True)

    def init(params):
        return {}

    def update(grads, state, params=None):
        leaves = tree_leaves(grads)
        if not leaves:
            return grads, state
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.float()) for g in leaves]))
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # no host sync: compile-friendly
        return tree_map(lambda g: g * coef.to(g.dtype), grads), state

    return Optimizer(init, update)


def chain(*transforms: Optimizer) -> Optimizer:
    """Run gradient transformations in order, each on the previous one's output (like optax.chain);
    the state is the tuple of their states."""
    if not transforms or not all(isinstance(t, Optimizer) for t in transforms):
        raise ValueError(f"chain needs one or more optimizers or gradient transformations, "
                         f"got {transforms!r}")

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, params=None):
        new_state = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params)
            new_state.append(s)
        return grads, tuple(new_state)

    return Optimizer(init, update)
