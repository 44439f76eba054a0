"""Training as pure functions: a loss, one optimizer step, and a loop that runs N of them.

`make_step` differentiates with respect to the adapters only (`torch.func.grad_and_value` over
the lora dict); the base enters as data and is never written to. `fit` is a plain loop over it.

>>> import torch, funclora as fl
>>> from funclora.train import fit
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
>>> cfg = fl.LoraConfig(rank=2)
>>> base, f = fl.freeze(model), fl.functional(model, cfg)
>>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
>>> lora, losses = fit(f, base, fl.init_lora(model, cfg), x, y, opt=fl.adam(0.1), steps=30, progress=False)
>>> losses[-1] < losses[0]
True

`f` can be any pure `f(base, lora, x)`: for example the trainable suffix of a model whose frozen
prefix was run once, with `x` its precomputed features. `extra(lora, base)` adds a term to the
loss (a regulariser, or a penalty for drifting on a keep set, `funclora.keep.keep_term`), closed
over whatever data it needs. `x` may also be a function of the step number that returns that
step's batch (fresh augmentations, `funclora.vision.augment`). With `terms=True`, `fit` returns each
term of the loss per step, not only their sum:

>>> keep = lambda lora, base: 0.1 * lora["0"]["B"].square().sum()
>>> _, history = fit(f, base, fl.init_lora(model, cfg), x, y, opt=fl.adam(0.1), steps=3, extra=keep,
...                  progress=False, terms=True)
>>> sorted(history), len(history["loss"]), history["extra"][0]
(['extra', 'loss', 'train'], 3, 0.0)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import grad_and_value
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm

from .apply import Apply
from .lora import Lora
from .optim import Optimizer, apply_updates

__all__ = ["cross_entropy", "make_loss", "make_step", "fit", "fit_batches", "Step"]

Base = Any
"""What `f` reads as its frozen input: a FrozenParams, or any data (e.g. precomputed logits)."""
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Extra = Callable[[Lora, Base], torch.Tensor]
Step = Callable[[Lora, Any, Base, torch.Tensor, torch.Tensor], "tuple[Lora, Any, torch.Tensor]"]
Batches = Callable[[int], torch.Tensor]
"""step (0, 1, ...) -> that step's input batch, for inputs that change every step."""
Reduce = Callable[[Lora], Lora]
"""grads -> grads, applied between the gradient and the optimizer (e.g. an all-reduce across processes)."""
OnStep = Callable[[int, Any, Any, dict], None]
"""on_step(steps done, params, optimizer state, history): called after every step (checkpoints, logging)."""


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `logits` (N, C) against class indices `labels` (N,).

    >>> cross_entropy(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).item() == torch.log(torch.tensor(2.0)).item()
    True
    """
    return F.cross_entropy(logits, labels)


def make_loss(f: Apply, loss_fn: LossFn = cross_entropy, extra: Extra | None = None, *,
              terms: bool = False) -> Callable[[Lora, Base, torch.Tensor, torch.Tensor], Any]:
    """loss(lora, base, x, y) = loss_fn(f(base, lora, x), y) [+ extra(lora, base)]; lora comes first
    so that `torch.func.grad` differentiates with respect to it alone.

    With `terms=True`, loss returns (total, {"train": first term, "extra": second term}) with the
    terms detached: the form `grad_and_value(..., has_aux=True)` expects."""
    def loss(lora: Lora, base: Base, x: torch.Tensor, y: torch.Tensor):
        value = loss_fn(f(base, lora, x), y)
        penalty = None if extra is None else extra(lora, base)
        total = value if penalty is None else value + penalty
        if not terms:
            return total
        return total, {"train": value.detach(),
                       "extra": torch.zeros(()) if penalty is None else penalty.detach()}

    return loss


def make_step(f: Apply, opt: Optimizer, loss_fn: LossFn = cross_entropy, extra: Extra | None = None, *,
              terms: bool = False, reduce: Reduce | None = None) -> Step:
    """A pure step(lora, state, base, x, y) -> (lora, state, loss): one gradient step on the adapters.

    Nothing is modified in place: the returned lora and state are new tensors, the base is only read.
    With `terms=True` the step returns (lora, state, loss, terms), terms as in `make_loss`.
    `reduce(grads) -> grads` runs between the gradient and the optimizer: the place for an
    all-reduce of the gradient pytree across data-parallel processes (DDP's hooks do not fire
    under torch.func).
    """
    value_and_grads = grad_and_value(make_loss(f, loss_fn, extra, terms=True), has_aux=True)

    def step(lora: Lora, state: Any, base: Base, x: torch.Tensor, y: torch.Tensor):
        grads, (loss, parts) = value_and_grads(lora, base, x, y)
        if reduce is not None:
            grads = reduce(grads)
        updates, state = opt.update(grads, state, lora)
        lora = apply_updates(lora, updates)
        return (lora, state, loss.detach(), parts) if terms else (lora, state, loss.detach())

    return step


def fit(f: Apply, base: Base, lora: Lora, x: torch.Tensor | Batches, y: torch.Tensor, *, opt: Optimizer,
        steps: int, loss_fn: LossFn = cross_entropy, extra: Extra | None = None,
        progress: bool = True, terms: bool = False, compile: bool | str = False) -> tuple[Lora, Any]:
    """Run `steps` full-batch steps from `lora`; return the trained lora and the
    loss of each step (computed before its update).

    `x` is the batch, or a function `x(step)` that returns step's batch (step = 0, 1, ...).
    With `terms=True` the second result is {"loss": [...], "train": [...], "extra": [...]}, each
    a list with one value per step: the total and its two terms (see `make_loss`).

    Deterministic for a given starting lora (same inputs, same thread count: bitwise the same
    result). `progress` shows a tqdm bar on stderr with the loss and the time left.
    Raises ValueError as soon as the loss or the adapter stops being finite (a learning rate too
    high), naming the step and, for the adapter, the layer.
    `compile` runs the step under torch.compile (True, or the name of a torch.compile backend);
    the first step then includes the compilation. For minibatches from a data loader, see
    `fit_batches` (this is `fit_batches` over `steps` copies of (x, y)).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    batch = x if callable(x) else (lambda _: x)
    lora, _, history = fit_batches(f, base, lora, ((batch(i), y) for i in range(steps)), opt=opt,
                                   loss_fn=loss_fn, extra=extra, progress=progress, total=steps,
                                   compile=compile)
    return lora, (history if terms else history["loss"])


def fit_batches(f: Apply, base: Base, lora: Lora, batches: Iterable[tuple[Any, torch.Tensor]], *,
                opt: Optimizer, state: Any = None, loss_fn: LossFn = cross_entropy,
                extra: Extra | None = None, reduce: Reduce | None = None, on_step: OnStep | None = None,
                progress: bool = True, total: int | None = None, start: int = 0,
                compile: bool | str = False, step: Step | None = None) -> tuple[Lora, Any, dict[str, list[float]]]:
    """One step per (x, y) of `batches` (a list, a generator, a torch DataLoader...), from `lora`
    and optimizer `state` (None: `opt.init(lora)`, else the state to continue from, e.g. read
    from a checkpoint). Returns (lora, state, history), history as `fit(..., terms=True)`'s.

    `x` may be anything `f` reads: a batch of images, or a tuple of cached features. Steps are
    numbered from `start` (the steps already done, when resuming): a diverging loss is reported
    with its global step number, and `on_step(start + k, lora, state, history)` runs after the
    k-th step here, where checkpoints are written. `reduce` is `make_step`'s gradient hook.
    `step` replaces `make_step(f, opt, loss_fn, extra, terms=True, reduce=reduce)` with a step of
    the same signature (a data-parallel one, `funclora.distributed.make_step`, that also sums the
    loss across processes in the gradient's bucket, which `reduce` cannot see).

    >>> import torch, funclora as fl
    >>> model = torch.nn.Linear(4, 2); cfg = fl.LoraConfig(rank=1)
    >>> f, base = fl.functional(model, cfg), fl.freeze(model)
    >>> data = [(torch.randn(3, 4), torch.tensor([0, 1, 0])) for _ in range(5)]
    >>> lora, state, history = fl.fit_batches(f, base, fl.init_lora(model, cfg), data, opt=fl.adam(0.1),
    ...                                       progress=False)
    >>> len(history["loss"])
    5
    """
    step = step or make_step(f, opt, loss_fn, extra, terms=True, reduce=reduce)
    if compile:
        step = torch.compile(step, **({} if compile is True else {"backend": compile}))
    state = opt.init(lora) if state is None else state
    history: dict[str, list[float]] = {"loss": [], "train": [], "extra": []}
    bar = tqdm(batches, total=total, desc="training", unit="step", disable=not progress, leave=False,
               dynamic_ncols=True)
    for i, (x, y) in enumerate(bar, start):
        lora, state, loss, parts = step(lora, state, base, x, y)
        # One host sync per step for both checks: the loss, and the adapter after its update.
        finite = torch.stack([torch.isfinite(loss), *(torch.isfinite(t).all() for t in tree_leaves(lora))])
        if not finite.all():
            raise ValueError(f"training diverged at step {i + 1}: {_what_diverged(loss, lora)} "
                             f"(lower the learning rate, or clip the gradients: fl.clip_by_global_norm)")
        value = loss.item()
        history["loss"].append(value)
        for name, part in parts.items():
            history[name].append(part.item())
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        if on_step is not None:
            on_step(i + 1, lora, state, history)
    bar.close()
    return lora, state, history


def _what_diverged(loss: torch.Tensor, lora: Any) -> str:
    """Which part of a step stopped being finite: the loss, or the first non-finite adapter tensor."""
    if not torch.isfinite(loss):
        return f"loss is {loss.item()}"
    if isinstance(lora, dict) and all(isinstance(ab, dict) for ab in lora.values()):
        for name, ab in lora.items():
            for k, t in ab.items():
                if isinstance(t, torch.Tensor) and not torch.isfinite(t).all():
                    bad = "nan" if t.isnan().any() else "inf"
                    return f"the adapter of layer {name!r} ({k}) is not finite ({bad}) after the update"
    return "the adapter is not finite after the update"
