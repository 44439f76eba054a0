"""Many adapters at once: K adapters are one stacked pytree, K training runs are one step.

An adapter is data, so K of them stack into one pytree with a leading K axis (`stack`), and K
runs of the pure step become one step over that axis, in one of two forms:

- the stacked pass (funclora.stacked), for f from `fl.functional` on images: no vmap; the K
  batches go through the model as one batch of K·N examples, every frozen layer runs once on
  all of them with its own unbatched weight, and only the adapted layers split them into the
  K blocks (the rank-r path per block; depthwise layers merged per block). The gradient is
  torch.func.grad of the sum of the K losses (the adapters share no parameter).
- one `torch.func.vmap` of grad_and_value over the K axis with the frozen base unbatched, for
  any other pure f (a `fl.split` suffix on cached features) and where a frozen prefix reads
  shared data: vmap computes that prefix once. (A per-adapter dense weight would turn each
  convolution into a K-group one: fused layers run on the "activation" path here, see `vmappable`.)

>>> import torch, funclora as fl
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
>>> cfg = fl.LoraConfig(rank=2)
>>> base, f = fl.freeze(model), fl.functional(model, cfg)
>>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
>>> loras = [fl.init_lora(model, cfg, seed=s) for s in range(3)]
>>> stacked = fl.stack(loras)
>>> tuple(stacked["0"]["A"].shape)                      # K = 3 adapters of rank 2 on a 4-input layer
(3, 2, 4)
>>> all(torch.equal(a["0"]["A"], b["0"]["A"]) for a, b in zip(fl.unstack(stacked), loras))
True
>>> trained, histories = fl.fit_many(f, base, loras, x, y, opt=[fl.adam(0.1), fl.adam(0.01), fl.sgd(0.1)],
...                                  steps=5, progress=False)
>>> solo, losses = fl.fit(f, base, loras[1], x, y, opt=fl.adam(0.01), steps=5, progress=False)
>>> torch.allclose(trained[1]["0"]["B"], solo["0"]["B"], atol=1e-6), len(histories[1])
(True, 5)

Mixed-adapter inference: `f(base, fl.stack(loras), x, adapter_index=idx)` runs example n with
adapter idx[n] (`per_example`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import grad_and_value, vmap
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten
from tqdm.auto import tqdm

from .distributed import World, all_reduce, shard
from .lora import Lora
from .optim import Optimizer, apply_updates
from .stacked import reads_input_first
from .train import Apply, Base, LossFn, cross_entropy

__all__ = ["stack", "unstack", "pad_rank", "fit_many", "make_step_many", "stacked_form", "per_example", "vmappable"]

Data = Any
"""A batch: a tensor, or a tuple of cached features (`funclora.split`)."""


def pad_rank(lora: Lora, rank: int) -> Lora:
    """`lora` at rank `rank`: A gets zero rows and B zero columns, so B @ A is unchanged and the
    padding gets zero gradients (it stays zero under training). Leaves other than A and B are kept.

    >>> lora = {"fc": {"A": torch.ones(1, 3), "B": torch.ones(2, 1)}}
    >>> padded = pad_rank(lora, 2)
    >>> padded["fc"]["A"].tolist(), padded["fc"]["B"].tolist()
    ([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]])
    """
    out = {}
    for name, ab in lora.items():
        have = ab["A"].shape[0]
        if rank < have:
            raise ValueError(f"layer {name!r}: cannot pad rank {have} down to {rank}")
        a, b = ab["A"], ab["B"]
        pad_a = a.new_zeros(rank - have, *a.shape[1:])
        pad_b = b.new_zeros(b.shape[0], rank - have, *b.shape[2:])
        out[name] = {**ab, "A": torch.cat([a, pad_a]), "B": torch.cat([b, pad_b], dim=1)}
    return out


def _ranks(lora: Lora) -> dict[str, int]:
    return {name: ab["A"].shape[0] for name, ab in lora.items()}


def stack(loras: Sequence[Lora]) -> Lora:
    """One pytree with a leading K axis from K adapters of the same layers. Adapters of different
    ranks are padded (`pad_rank`) to the largest rank of each layer first: same results.

    >>> a = {"fc": {"A": torch.ones(1, 3), "B": torch.ones(2, 1)}}
    >>> b = {"fc": {"A": torch.ones(2, 3), "B": torch.ones(2, 2)}}
    >>> tuple(stack([a, b])["fc"]["B"].shape)
    (2, 2, 2)
    """
    if not loras:
        raise ValueError("stack needs at least one adapter")
    layers = set(loras[0])
    for k, lora in enumerate(loras):
        if set(lora) != layers:
            raise ValueError(f"adapter {k} has layers {sorted(set(lora) ^ layers)[:3]} that adapter 0 "
                             f"{'lacks' if set(lora) - layers else 'has and it lacks'}; stack adapters "
                             f"of the same targets")
    top = {name: max(lora[name]["A"].shape[0] for lora in loras) for name in loras[0]}
    padded = [lora if _ranks(lora) == top else _pad_to(lora, top) for lora in loras]
    leaves = [tree_flatten(lora) for lora in padded]
    spec = leaves[0][1]
    for k, (_, s) in enumerate(leaves):
        if s != spec:
            raise ValueError(f"adapter {k} holds other tensors than adapter 0 ({s} vs {spec})")
    try:
        stacked = [torch.stack(ts) for ts in zip(*(ls for ls, _ in leaves))]
    except RuntimeError as error:
        raise ValueError(f"adapters do not stack (shapes differ; are they for the same model?): {error}") from None
    return tree_unflatten(stacked, spec)


def _pad_to(lora: Lora, ranks: dict[str, int]) -> Lora:
    return {name: pad_rank({name: ab}, ranks[name])[name] for name, ab in lora.items()}


def unstack(stacked: Lora, like: Sequence[Lora] | None = None) -> list[Lora]:
    """The K adapters of a stacked pytree (views of it). With `like` (the adapters that were
    stacked), each is cut back to the ranks of its own: `unstack(stack(loras), loras)` is `loras`."""
    leaves, spec = tree_flatten(stacked)
    k = leaves[0].shape[0]
    out = [tree_unflatten([leaf[i] for leaf in leaves], spec) for i in range(k)]
    if like is None:
        return out
    if len(like) != k:
        raise ValueError(f"unstack: {k} stacked adapters but {len(like)} given in like")
    return [_crop(lora, _ranks(shape)) for lora, shape in zip(out, like)]


def _crop(lora: Lora, ranks: dict[str, int]) -> Lora:
    return {name: {**ab, "A": ab["A"][:ranks[name]], "B": ab["B"][:, :ranks[name]]} for name, ab in lora.items()}


def vmappable(f: Apply) -> Apply:
    """The form of f to vmap over adapters. For a `functional(model, cfg)` f: its "fused" layers
    on the "activation" path (x -> A -> B beside the frozen layer), so that the dense frozen
    layers run an unbatched weight on one large batch and only the rank-r path is per adapter;
    its "weight" layers (depthwise convolutions, few channels: see `fl.plan`) stay merged, as K
    merged depthwise weights are one depthwise convolution over K times the channels. Any other
    pure f is returned as it is."""
    make = getattr(f, "vmappable", None)
    return make() if make is not None else f


def per_example(f: Apply, base: Base, stacked: Lora, x: torch.Tensor, adapter_index: torch.Tensor) -> torch.Tensor:
    """f(base, adapter idx[n], x[n]) for every example n at once: the mixed-adapter batch.

    One pass over the batch: the frozen layers run as usual, each example's rank-r path with the
    adapter it picks (the adapters are gathered per example and the low-rank path vmapped).
    `functional(...)`'s f offers this as f(base, stacked, x, adapter_index=idx).
    """
    idx = torch.as_tensor(adapter_index)
    k = tree_flatten(stacked)[0][0].shape[0]
    if idx.shape != (x.shape[0],) or idx.dtype.is_floating_point:
        raise ValueError(f"adapter_index must hold one integer per example, shape ({x.shape[0]},); "
                         f"got {tuple(idx.shape)} {idx.dtype}")
    if len(idx) and (idx.min() < 0 or idx.max() >= k):
        raise ValueError(f"adapter_index must lie in [0, {k}) for {k} stacked adapters; got values "
                         f"{idx.min().item()}..{idx.max().item()}")
    idx = idx.to(device=x.device, dtype=torch.long)
    picked = tree_map(lambda t: t.index_select(0, idx.to(t.device)), stacked)
    one = vmappable(f)

    def run(lora: Lora, example: torch.Tensor) -> torch.Tensor:
        return one(base, lora, example.unsqueeze(0)).squeeze(0)

    return vmap(run, randomness="different")(picked, x)


# --------------------------------------------------------------------------- training


def _per_adapter(value: Any, k: int, what: str) -> list | None:
    """[v_1..v_K] if value is a list (or tuple of lists...) meant per adapter, else None (shared)."""
    if isinstance(value, list):
        if len(value) != k:
            raise ValueError(f"{what}: {len(value)} given for {k} adapters (give one, or one per adapter)")
        return value
    return None


def _stack_data(items: list) -> tuple[Any, Any]:
    """(stacked data, in_dims) from K batches: tensors stack on a new axis 0; the odd non-tensor
    leaf (a shape number in cached features) must agree and stays unbatched."""
    flat = [tree_flatten(item) for item in items]
    spec = flat[0][1]
    leaves, dims = [], []
    for j, column in enumerate(zip(*(ls for ls, _ in flat))):
        if isinstance(column[0], torch.Tensor):
            if any(c.shape != column[0].shape for c in column):
                raise ValueError(f"per-adapter batches differ in shape ({[tuple(c.shape) for c in column]}); "
                                 f"they are trained as one stacked batch, so give each adapter as many examples")
            leaves.append(torch.stack(column))
            dims.append(0)
        else:
            if any(c != column[0] for c in column):
                raise ValueError(f"per-adapter batches differ in a non-tensor part: {column}")
            leaves.append(column[0])
            dims.append(None)
    return tree_unflatten(leaves, spec), tree_unflatten(dims, spec)


def _hyper(values: Sequence[float] | None, k: int, what: str) -> torch.Tensor | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != k or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be {k} finite numbers (one per adapter), got {values!r}")
    return torch.tensor(values, dtype=torch.float32)


def make_step_many(f: Apply, opt: Optimizer | Sequence[Optimizer], loss_fn: LossFn = cross_entropy,
                   extra: Callable[[Lora, Base], torch.Tensor] | None = None, *, x_dims: Any = None,
                   y_dims: Any = None, world: World | None = None, stacked: Callable | None = None) -> Callable:
    """A pure step(stacked, state, base, x, y, hyper, share) -> (stacked, state, losses (K,), terms):
    one gradient step of every adapter at once.

    By default one vmap of `grad_and_value` over the K axis. With `stacked` (`stacked_form(f)`,
    for f from `fl.functional`) and tensor data: no vmap, one pass of the K·N examples through the
    stacked model (funclora.stacked) and torch.func.grad of the sum of the K losses (the adapters
    share no parameter: each gets its own loss's gradient); shared x is copied K times.

    x_dims / y_dims: 0 where x / y carry a leading K axis (per-adapter data), None where shared
    (a pytree of those for cached features). `hyper` = (scale (K,) or None, extra weight (K,) or
    None): per-adapter factors on B and on the extra term. `opt` is one optimizer (applied to
    every adapter at once, vmapped: a global-norm clip clips each adapter by its own norm) or K
    of them (each applied to its own adapter; the state is then a list). With a `world` of several processes
    (`funclora.distributed`), x and y are this rank's `share` of the global batch and the
    gradients, losses and terms of all ranks are summed in one bucket before the update.
    """
    f = vmappable(f)
    size = 1 if world is None else world.size

    def scaled(lora: Lora, scale) -> Lora:  # the adapter's own alpha / rank, relative to f's
        if scale is None:
            return lora
        if scale.dim() == 0:  # under vmap: this adapter's own
            return {n: {**ab, "B": ab["B"] * scale} for n, ab in lora.items()}
        return {n: {**ab, "B": ab["B"] * scale.view(-1, *[1] * (ab["B"].dim() - 1))} for n, ab in lora.items()}

    def penalty_of(lora: Lora, base: Base, weight):
        penalty = extra(lora, base)
        penalty = penalty if weight is None else weight * penalty
        return penalty if size == 1 else penalty / size  # every rank adds the same term

    def loss(lora: Lora, base: Base, x: Data, y: torch.Tensor, scale, weight, share: float):
        lora = scaled(lora, scale)
        value = loss_fn(f(base, lora, x), y)
        value = value if share == 1 else value * share  # this rank's part of the global mean
        if extra is None:
            return value, (value.detach(), torch.zeros((), device=value.device))
        penalty = penalty_of(lora, base, weight)
        return value + penalty, (value.detach(), penalty.detach())

    def loss_stacked(lora: Lora, base: Base, x: torch.Tensor, y: torch.Tensor, scale, weight, share: float):
        lora = scaled(lora, scale)
        k = tree_flatten(lora)[0][0].shape[0]
        if x_dims is None:  # K copies of the shared batch, adapter-major
            x = x.unsqueeze(0).expand(k, *x.shape)
        outs = stacked(base, lora, x.flatten(0, 1)).unflatten(0, (k, -1))
        values = torch.stack([loss_fn(outs[i], y if y_dims is None else y[i]) for i in range(k)])
        values = values if share == 1 else values * share
        penalties = torch.zeros_like(values)
        if extra is not None:  # each adapter's term as it would run alone
            penalties = torch.stack([penalty_of(one, base, None if weight is None else weight[i])
                                     for i, one in enumerate(unstack(lora))])
        total = values + penalties
        return total.sum(), (total.detach(), (values.detach(), penalties.detach()))

    def step(stacked_lora: Lora, state: Any, base: Base, x: Data, y: torch.Tensor, hyper=(None, None),
             share: float = 1.0):
        scale, weight = hyper
        if stacked is not None:
            grads, (_, (total, (train, penalty))) = grad_and_value(loss_stacked, has_aux=True)(
                stacked_lora, base, x, y, scale, weight, share)
        else:
            dims = (0, None, x_dims, y_dims, None if scale is None else 0, None if weight is None else 0, None)
            grads, (total, (train, penalty)) = vmap(grad_and_value(loss, has_aux=True), in_dims=dims)(
                stacked_lora, base, x, y, scale, weight, share)
        total, terms = total.detach(), {"train": train, "extra": penalty}
        if world is not None:
            grads, total, terms = all_reduce((grads, total, terms), world)
        stacked_lora, state = _update(opt, grads, state, stacked_lora)
        return stacked_lora, state, total, terms

    return step


def stacked_form(f: Apply, base: Base, x: Data, x_dims: Any) -> Callable | None:
    """The stacked form of f (`funclora.stacked`) to train K adapters on x with, or None (vmap).

    f offers one when it comes from `fl.functional`; x must be a tensor. Shared x is copied K
    times, so it takes the stacked form only where an adapted layer reads x first (no frozen
    prefix to compute once: `fl.split` caches such a prefix, and vmap shares it)."""
    make = getattr(f, "stacked", None)
    if make is None or not isinstance(x, torch.Tensor):
        return None
    g = make()
    if x_dims is None and not reads_input_first(g, base, x):
        return None
    return g


def _init(opt: Optimizer | Sequence[Optimizer], stacked: Lora) -> Any:
    if isinstance(opt, Optimizer):
        return opt.init(stacked)
    return [o.init(lora) for o, lora in zip(opt, unstack(stacked))]


def _shared(state: Any) -> Any:
    """in_dims of an optimizer state over stacked adapters: its 0-d leaves (the step count) are
    one for all, every other leaf has the K axis."""
    return tree_map(lambda t: None if not isinstance(t, torch.Tensor) or t.dim() == 0 else 0, state)


def _update(opt, grads: Lora, state: Any, stacked: Lora) -> tuple[Lora, Any]:
    if isinstance(opt, Optimizer):  # vmapped: a global-norm clip is per adapter, as alone
        dims = _shared(state)
        updates, state = vmap(opt.update, in_dims=(0, dims, 0), out_dims=(0, dims))(grads, state, stacked)
        return apply_updates(stacked, updates), state
    new, states = [], []
    for o, g, s, p in zip(opt, unstack(grads), state, unstack(stacked)):
        updates, s = o.update(g, s, p)
        new.append(apply_updates(p, updates))
        states.append(s)
    return stack(new), states


def _keep_where(alive: torch.Tensor, new: Any, old: Any) -> Any:
    """Per adapter: the new value where alive, the old one where not (a diverged adapter stays put)."""
    def pick(n, o):
        if not isinstance(n, torch.Tensor) or n.dim() == 0:
            return n
        return torch.where(alive.view(-1, *[1] * (n.dim() - 1)).to(n.device), n, o)
    return tree_map(pick, new, old)


def fit_many(f: Apply, base: Base, loras: Sequence[Lora], x: Data | list | Callable[[int], Any],
             y: torch.Tensor | list, *, opt: Optimizer | Sequence[Optimizer], steps: int,
             loss_fn: LossFn = cross_entropy, extra: Callable[[Lora, Base], torch.Tensor] | None = None,
             scales: Sequence[float] | None = None, extra_weights: Sequence[float] | None = None,
             progress: bool = True, terms: bool = False, world: World | None = None
             ) -> tuple[list[Lora], list]:
    """Train K adapters at once; return (loras, histories), each as its own `fl.fit` run would.

    x, y: one batch shared by all (a tensor, or cached features), or a list of K (each adapter's
    own data, same shapes). x may be a function of the step that returns either. opt: one
    optimizer for all, or a list of K (a learning rate per adapter). Adapters of different ranks
    are padded (`stack`) and come back at their own ranks. `scales`: per adapter, its scale
    (alpha / rank) relative to f's, for adapters whose config differs from the one f was built
    with; `extra_weights`: per adapter, a factor on `extra` (e.g. a grid of keep weights).
    With a `world` (`funclora.distributed.init()` under torchrun) x and y are the global batches
    and each rank trains on its share of them (data-parallel, see `funclora.distributed`).

    histories[k] is adapter k's loss per step (with `terms=True`, {"loss", "train", "extra"}).
    An adapter whose loss stops being finite stops there (its history ends with that value; it is
    returned as it was at its last finite loss) while the others train on; a ValueError only if
    all of them diverge.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    loras = list(loras)
    k = len(loras)
    if k == 0:
        raise ValueError("fit_many needs at least one adapter")
    opts = None if isinstance(opt, Optimizer) else _per_adapter(list(opt), k, "opt")
    hyper = (_hyper(scales, k, "scales"), _hyper(extra_weights, k, "extra_weights"))
    batch = x if callable(x) else (lambda _: x)

    def part(data):  # (this rank's share of a global batch, its fraction of the examples)
        return (data, 1.0) if world is None or world.size == 1 else shard(data, world)

    def arrange(data, what):  # (data to step with, its in_dims, the fraction)
        items = _per_adapter(data, k, what)
        if items is None:
            mine, share = part(data)
            return mine, None, share
        parts = [part(item) for item in items]
        return (*_stack_data([mine for mine, _ in parts]), parts[0][1])

    first_x, x_dims, share = arrange(batch(0), "x")
    y_data, y_dims, _ = arrange(y, "y")
    step = make_step_many(f, opts if opts is not None else opt, loss_fn, extra, x_dims=x_dims, y_dims=y_dims,
                          world=world, stacked=stacked_form(f, base, first_x, x_dims))
    stacked = stack(loras)
    state = _init(opts if opts is not None else opt, stacked)
    alive = torch.ones(k, dtype=torch.bool)
    previous = stacked  # the adapters of the step before: a diverged adapter is returned as it was there
    histories = [{"loss": [], "train": [], "extra": []} for _ in range(k)]
    quiet = not progress or (world is not None and world.rank != 0)
    bar = tqdm(range(steps), desc=f"training {k} adapters", unit="step", disable=quiet, leave=False,
               dynamic_ncols=True)
    for i in bar:
        xi, _, share = (first_x, x_dims, share) if i == 0 else arrange(batch(i), "x")
        new, new_state, total, parts = step(stacked, state, base, xi, y_data, hyper, share)
        values, finite = total.tolist(), torch.isfinite(total).cpu()
        train, penalty = parts["train"].tolist(), parts["extra"].tolist()
        for j in alive.nonzero().flatten().tolist():
            histories[j]["loss"].append(values[j])
            histories[j]["train"].append(train[j])
            histories[j]["extra"].append(penalty[j])
        died = alive & ~finite
        alive = alive & finite
        if not alive.any():
            raise ValueError(f"training diverged at step {i + 1} for every adapter: losses {values} "
                             f"(lower the learning rates)")
        if died.any():  # back to the adapter of its last finite loss, and kept there from now on
            stacked = _keep_where(~died, stacked, previous)
        previous = stacked
        if alive.all():
            stacked, state = new, new_state
        else:
            stacked = _keep_where(alive, new, stacked)
            state = (_keep_where(alive, new_state, state) if opts is None
                     else [n if a else o for n, o, a in zip(new_state, state, alive.tolist())])
        bar.set_postfix(loss=f"{min(v for v, a in zip(values, alive.tolist()) if a):.4f}", refresh=False)
    bar.close()
    out = unstack(stacked, loras)
    return out, (histories if terms else [h["loss"] for h in histories])
