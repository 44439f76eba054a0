"""Data-parallel training on torchrun: a gradient is a pytree, so data parallelism is one all-reduce of it.

Every process holds the same base and the same adapters (`broadcast` from rank 0), takes its
share of each global batch (`shard`), differentiates its share of the loss with
`torch.func.grad`, and sums the gradients of all processes as ONE flattened bucket
(`all_reduce`): DDP's autograd hooks never fire under torch.func, so the reduction is explicit.
The optimizer then takes the same step on every rank, and the adapters stay identical.

    torchrun --nproc-per-node 2 my_script.py       # in my_script.py:
    world = fld.init()                             # the process group from torchrun's environment
    lora = fld.broadcast(lora, world)              # rank 0's adapters everywhere
    lora, losses = fld.fit(f, base, lora, x, y, opt=fl.adam(1e-3), steps=100, world=world)
    if world.rank == 0: fl.save(...)               # rank 0 alone writes

Without torchrun (no RANK in the environment) `init` returns a world of one process and no
process group: the same code runs alone, bitwise as `fl.fit` would.

>>> world = init()                                 # not under torchrun here
>>> world.rank, world.size
(0, 1)
>>> part, share = shard(torch.arange(5), World(rank=1, size=2, device=torch.device("cpu")))
>>> part.tolist(), share                           # rank 1's part of a global batch of 5
([3, 4], 0.4)
"""
from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.func import grad_and_value
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten
from tqdm.auto import tqdm

from .lora import Lora
from .optim import Optimizer, apply_updates
from .train import Apply, Base, LossFn, cross_entropy

__all__ = ["World", "init", "shutdown", "explain", "broadcast", "all_reduce", "bucket_bytes", "shard", "make_step", "fit"]

TIMEOUT_S = 300.0
"""Seconds a collective waits for the other ranks before failing (env FUNCLORA_DIST_TIMEOUT):
a rank that hangs stops all of them after this long. A rank that dies is noticed at once.
Joining the group at the start waits at least TIMEOUT_S, whatever this is set to: ranks start
apart by their import and loading time (seconds on a busy machine), which is no hang."""


class World(NamedTuple):
    """Which process this is: rank in [0, size), and the device its tensors live on."""
    rank: int
    size: int
    device: torch.device


def init(device: str | torch.device | None = None, *, timeout_s: float | None = None) -> World:
    """The process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT): gloo on CPU, nccl on CUDA (device "cuda" = this node's GPU LOCAL_RANK).
    Not under torchrun, or with one process: World(0, 1, device), no process group."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
    if size == 1:
        return World(0, 1, device)
    if timeout_s is None:
        timeout_s = float(os.environ.get("FUNCLORA_DIST_TIMEOUT", TIMEOUT_S))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=max(timeout_s, TIMEOUT_S)))
        # Every rank has joined: from here on a rank that stops answering is a hang.
        set_timeout = getattr(dist, "set_timeout", None) or dist.distributed_c10d._set_pg_timeout  # torch < 2.8
        set_timeout(datetime.timedelta(seconds=timeout_s))
    return World(rank, size, device)


def shutdown(world: World) -> None:
    """Leave the process group (at the end of a run; nothing to do for a world of one)."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


_LOST = ("timed out", "connection closed", "connection reset", "broken pipe", "nccl", "gloo")


def explain(error: BaseException, world: World) -> str:
    """One line for an error on this rank: "rank R of N: <what went wrong>". A collective that
    failed because another rank died or stopped answering says that, not the backend's dump.

    >>> explain(ValueError("cannot read a.png"), World(1, 2, torch.device("cpu")))
    'rank 1 of 2: cannot read a.png'
    """
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, RuntimeError) and any(word in text.lower() for word in _LOST):
        timeout = float(os.environ.get("FUNCLORA_DIST_TIMEOUT", TIMEOUT_S))
        text = (f"stopped: another rank failed or gave no answer within {timeout:g} s "
                f"(its own line says why; {text.split('] ')[-1].split('. ')[0][:100]})")
    return text if world.size == 1 else f"rank {world.rank} of {world.size}: {text}"


def _bucket(tree: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """(one flat float tensor of every tensor leaf, flat -> the tree back with new tensors)."""
    leaves, spec = tree_flatten(tree)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    if not tensors:
        return torch.zeros(0), lambda flat: tree
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors], torch.float32)
    flat = torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])

    def back(flat: torch.Tensor) -> Any:
        out, at = [], 0
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                out.append(flat[at:at + leaf.numel()].view(leaf.shape).to(leaf.dtype))
                at += leaf.numel()
            else:
                out.append(leaf)
        return tree_unflatten(out, spec)

    return flat, back


def bucket_bytes(tree: Any) -> int:
    """Bytes that `all_reduce(tree)` sends into the collective (one flat bucket)."""
    flat, _ = _bucket(tree)
    return flat.numel() * flat.element_size()


def all_reduce(tree: Any, world: World) -> Any:
    """The sum over all ranks of every tensor in `tree`, as one collective on one flat bucket
    (a new tree; the input is not modified). A world of one returns `tree` itself."""
    if world.size == 1:
        return tree
    flat, back = _bucket(tree)
    flat = flat.to(world.device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return back(flat)


def broadcast(tree: Any, world: World, src: int = 0) -> Any:
    """Rank `src`'s tensors of `tree` on every rank (same structure and shapes on all of them)."""
    if world.size == 1:
        return tree
    flat, back = _bucket(tree)
    flat = flat.to(world.device)
    dist.broadcast(flat, src=src)
    return back(flat)


def shard(batch: Any, world: World, *, spare: bool = False) -> tuple[Any, float]:
    """(this rank's part of a global batch, its fraction of the examples).

    The batch is split along its first axis into `world.size` contiguous parts that differ in
    size by at most one (as torch.tensor_split does), the same way for every tensor of a tuple of
    cached features and for a list (of image paths, say): a rank loads only its own examples.
    Every rank must get at least one example, unless `spare`: then a rank left without one (the
    ragged last batch of an epoch) gets the batch's first example with fraction 0, so that it
    runs the same step as the others and adds exactly nothing (0 times a finite gradient).

    >>> shard([7], World(1, 2, torch.device("cpu")), spare=True)
    ([7], 0.0)
    """
    leaves = [t for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor)]
    n = len(batch) if isinstance(batch, list) else leaves[0].shape[0]
    if n < world.size and not (spare and n > 0):
        raise ValueError(f"a global batch of {n} examples cannot feed {world.size} processes "
                         f"(raise --batch-size to at least {world.size})")
    q, r = divmod(n, world.size)  # the first r ranks hold one example more
    own, lo = q + (world.rank < r), q * world.rank + min(world.rank, r)
    lo, hi = (lo, lo + own) if own else (0, 1)  # none of its own: a spare example (see above)
    part = batch[lo:hi] if isinstance(batch, list) else tree_map(
        lambda t: t[lo:hi] if isinstance(t, torch.Tensor) else t, batch)
    return part, own / n


def weighted_loss(f: Apply, loss_fn: LossFn = cross_entropy, extra: Callable | None = None, *,
                  size: int = 1) -> Callable:
    """loss(lora, base, x, y, share) -> (total, (train, extra)) whose sum over ranks is the loss of
    the global batch: this rank's mean weighted by its share of the examples, plus extra / size
    (every rank computes the same extra term). With size 1 and share 1 it is `fl.make_loss`'s."""
    def loss(lora: Lora, base: Base, x: Any, y: torch.Tensor, share: float):
        value = loss_fn(f(base, lora, x), y)
        value = value if share == 1 else value * share
        if extra is None:
            return value, (value.detach(), torch.zeros((), device=value.device))
        penalty = extra(lora, base)
        penalty = penalty if size == 1 else penalty / size
        return value + penalty, (value.detach(), penalty.detach())

    return loss


def make_step(f: Apply, opt: Optimizer, loss_fn: LossFn = cross_entropy, extra: Callable | None = None, *,
              world: World) -> Callable:
    """A pure step(lora, state, base, x_part, y_part, share) -> (lora, state, loss, terms): this
    rank's gradient, summed over all ranks in one bucket with the loss and its terms, then the
    same optimizer step everywhere. loss and terms are those of the global batch."""
    value_and_grads = grad_and_value(weighted_loss(f, loss_fn, extra, size=world.size), has_aux=True)

    def step(lora: Lora, state: Any, base: Base, x: Any, y: torch.Tensor, share: float = 1.0):
        grads, (total, (train, penalty)) = value_and_grads(lora, base, x, y, share)
        grads, total, terms = all_reduce((grads, total.detach(), {"train": train, "extra": penalty}), world)
        updates, state = opt.update(grads, state, lora)
        return apply_updates(lora, updates), state, total, terms

    return step


def fit(f: Apply, base: Base, lora: Lora, x: Any, y: torch.Tensor, *, opt: Optimizer, steps: int, world: World,
        loss_fn: LossFn = cross_entropy, extra: Callable | None = None, progress: bool = True,
        terms: bool = False) -> tuple[Lora, Any]:
    """`fl.fit`, data-parallel: x and y are the GLOBAL batch (or x a function of the step that
    returns it); each rank trains on its share. Every rank returns the same adapter and history;
    only rank 0 shows progress. Equals `fl.fit` on the global batch up to float rounding (and
    bitwise in a world of one)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    step = make_step(f, opt, loss_fn, extra, world=world)
    batch = x if callable(x) else (lambda _: x)
    y_part, _ = shard(y, world)
    state = opt.init(lora)
    history: dict[str, list[float]] = {"loss": [], "train": [], "extra": []}
    bar = tqdm(range(steps), desc="training", unit="step", disable=not progress or world.rank != 0,
               leave=False, dynamic_ncols=True)
    for i in bar:
        x_part, share = shard(batch(i), world)
        lora, state, loss, parts = step(lora, state, base, x_part, y_part, share)
        value = loss.item()
        if not torch.isfinite(loss):  # the same on every rank: all stop together
            raise ValueError(f"training diverged at step {i + 1}: loss is {value} (lower the learning rate)")
        history["loss"].append(value)
        for name, part in parts.items():
            history[name].append(part.item())
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    bar.close()
    return lora, (history if terms else history["loss"])
