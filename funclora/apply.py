"""Run a model with adapters as a pure function `f(base, lora, x)`, built on functional_call.

Every targeted layer computes base_layer(x) + scale * B(A(x)), i.e. the layer with weight
W + scale * B @ A. How it gets there is chosen per layer (`plan`, see STRATEGIES): on the
low-rank path backward never forms a full-size weight gradient (the kernels are in
funclora.conv); where that path would cost more than the full weight gradient (few channels,
depthwise convolutions) the weight is merged.

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
>>> fl.plan(torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3), torch.nn.Conv2d(64, 64, 3, groups=64)), cfg)
{'0': 'fused', '1': 'weight'}

The mode is an argument of each call, never the model's own (`model.train()` / `.eval()` do not
matter): f(base, lora, x) runs in eval mode; `train=True` runs dropout and batch statistics.
f never writes to the model or the base: in train mode BatchNorm normalises with the batch's
statistics, and `mutable=True` returns the buffers as the step would have updated them:

>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5))
>>> base, g = fl.freeze(net), fl.functional(net, cfg)
>>> x = torch.randn(8, 3)
>>> out, buffers = g(base, None, x, train=True, seed=0, mutable=True)
>>> torch.equal(out, g(base, None, x, train=True, seed=0))   # the seed draws the dropout masks
True
>>> buffers["1.num_batches_tracked"].item(), base["1.num_batches_tracked"].item()
(1, 0)
>>> base = fl.FrozenParams({**base, **buffers})              # the caller decides to keep them
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from functools import cache, partial
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .config import LoraConfig, find_targets
from .conv import LowRankConv, LowRankTap, conv_spec, merged_weight
from .lora import Lora, delta_weight, key

__all__ = ["functional", "plan", "STRATEGIES", "Apply"]

STRATEGIES = ("activation", "fused", "weight")
"""How a layer applies its adapter (all compute the same function; they differ in cost):

"activation": x -> A -> B beside the base layer (a forward hook): works for every layer and is
    the only one that applies `cfg.dropout`; the cheapest for Linear layers.
"fused": Conv2d only. Forward is the layer itself with W + scale * B @ A (the cost of the base
    layer); backward takes the input gradient through that same weight and A's and B's gradients
    from the rank-r activations A(x) and B^T g, recomputed there, so no full-size weight gradient
    and no extra full-size activation is ever formed. A plain nn.Conv2d runs it as one custom
    autograd.Function (funclora.conv.LowRankConv); a subclass with its own forward (e.g. one that
    pads first) runs its forward on the merged weight, and a pass-through node on its output adds
    A's and B's gradients (funclora.conv.LowRankTap).
"weight": W + scale * B @ A before the layer runs (autograd): one full-size weight gradient, which
    is the cheapest where the layer has few channels per group (depthwise convolutions).
"""
AUTO = "auto"
"""Pick per layer by a cost model (see `plan`)."""

FUSED_MAX_COST = 0.5
"""`plan` takes a low-rank path for a convolution when its multiply-adds are at most this fraction
of the full weight gradient's. Below 1 because rank-r convolutions (few output channels) run at
about a third to a half of the full convolution's speed on CPU (VGG19's layers on a 2-core x86 CPU)."""


class Apply(Protocol):
    """f(base, lora, x, *, train=False, seed=None, mutable=False): see `functional`."""

    def __call__(self, base: Mapping[str, torch.Tensor], lora: Lora | None, x: torch.Tensor, *,
                 train: bool = False, seed: int | None = None, mutable: bool = False): ...


def functional(model: nn.Module, cfg: LoraConfig, *,
               strategy: str | Mapping[str, str] = AUTO) -> Apply:
    """The pure function f(base, lora, x) of `model` with `cfg`'s adapters; f(base, None, x) is the base.

    f(base, lora, x, *, train=False, seed=None, mutable=False):
      base: exactly the model's tensors by name (`fl.freeze(model)`, or `fl.merge` of it): a missing
        or extra name is a ValueError naming it, never a silent fallback to the model's own tensor.
      lora: None (the base alone), or an adapter for exactly `cfg`'s targets with `cfg`'s shapes
        (a rank that contradicts `cfg` is a ValueError naming the layer).
      train: the mode of every module for this call (the model's own .training is not read).
        False: dropout off, BatchNorm normalises with its running statistics.
        True: dropout on (the model's and `cfg.dropout`), BatchNorm normalises with the batch's
        statistics and updates nothing; torch.func.grad and vmap work (vmap needs a `randomness`
        other than "error" when there is dropout).
      seed: train mode's randomness. An int: the dropout masks are drawn from a generator seeded
        with it (x's device; torch's global generators are left as they were), so a step is
        reproducible from its arguments alone. None: drawn from torch's global generator (then
        `torch.manual_seed` before the step makes it reproducible).
      mutable: return (out, buffers): every buffer of the model by name, as this call left it:
        in train mode BatchNorm's running statistics and num_batches_tracked updated from the
        batch, exactly as `model.train()(x)` would update them (torch's own update), in eval mode
        the base's own. Nothing is written anywhere else; `FrozenParams({**base, **buffers})`
        keeps them. (Under vmap, use mutable=False: per-example statistics are not defined.)
      adapter_index: with lora = `fl.stack(loras)`, example n runs adapter adapter_index[n] (the
        mixed-adapter batch, `funclora.many.per_example`; eval mode).

    The model is not modified: f runs structural copies (one per mode) whose tensors are the
    model's own (no weights are copied) and whose targeted layers carry the LoRA path.
    `strategy` picks the path per layer (see STRATEGIES and `plan`): "auto", one of STRATEGIES for
    all, or {layer name: strategy} (layers not named: "auto"). Every strategy computes the same
    function up to float rounding, and a fresh adapter (B = 0) gives exactly the base's output on
    each of them: W + scale * (0 @ A) is W, bit for bit.
    """
    how = plan(model, cfg, strategy)
    tensors = _tensors(model, cfg, how)
    shells = {mode: _shell(model, how, cfg, mode) for mode in _MODES}
    buffers = [name for name, _ in model.named_buffers()]

    def f(base: Mapping[str, torch.Tensor], lora: Lora | None, x: torch.Tensor, *,
          train: bool = False, seed: int | None = None, mutable: bool = False,
          adapter_index: torch.Tensor | None = None):
        if adapter_index is not None:  # lora is fl.stack(loras): example n runs adapter_index[n]
            if train or mutable:
                raise ValueError("adapter_index (mixed-adapter inference) runs in eval mode: "
                                 "pass train=False, mutable=False")
            from .many import per_example
            return per_example(f, base, lora, x, adapter_index)
        params = tensors(base, lora)
        if not train:
            out = functional_call(shells["eval"], params, (x,))
            return (out, {name: base[name] for name in buffers}) if mutable else out
        _check_seed(seed)
        # Copies made inside the call (so inside any torch.func transform), which a module may
        # write to: the caller's tensors are never written, and grad allows the writes.
        for name in buffers:
            params[name] = params[name].clone()
        with _seeded(seed, x.device):
            out = functional_call(shells["train+stats" if mutable else "train"], params, (x,))
        return (out, {name: params[name].detach() for name in buffers}) if mutable else out

    # What funclora.many vmaps over adapters: "fused" layers on the "activation" path, so that no
    # dense frozen weight is merged per adapter (vmap would make each such convolution a K-group
    # one); "weight" layers (depthwise, few channels) stay merged: K merged depthwise weights are
    # one depthwise conv over K·C channels, no dearer than the base, and no rank-r·C activation.
    f.vmappable = cache(lambda: functional(model, cfg, strategy={
        n: "activation" if s == "fused" else s for n, s in how.items()}))

    # K adapters in one pass without vmap (funclora.stacked; funclora.many trains with it)
    f.stacked = cache(lambda: _stacked(model, cfg, strategy))

    return f


def _stacked(model: nn.Module, cfg: LoraConfig, strategy):
    from .stacked import stacked_apply  # it builds on this module
    return stacked_apply(model, cfg, strategy)


_MODES = ("eval", "train", "train+stats")
"""The shells f runs: eval mode; train mode with BatchNorm on batch statistics, tracking nothing
(what grad and vmap need); train mode tracking statistics in the copies f hands it (mutable=True)."""


def adapted_shell(model: nn.Module, cfg: LoraConfig, strategy: str | Mapping[str, str] = AUTO
                  ) -> tuple[nn.Module, Callable[[Mapping[str, torch.Tensor], "Lora | None"], dict]]:
    """(shell, tensors): the eval-mode module tree `functional` runs, and (base, lora) -> the dict
    of tensors to run it with (functional_call's argument; it checks base and lora as f does).
    For building other pure functions on the same tree (funclora.cache traces it); most code
    wants `functional`."""
    how = plan(model, cfg, strategy)
    return _shell(model, how, cfg, "eval"), _tensors(model, cfg, how)


def _tensors(model: nn.Module, cfg: LoraConfig, how: Mapping[str, str]
             ) -> Callable[[Mapping[str, torch.Tensor], "Lora | None"], dict]:
    targets = list(how)
    modules = dict(model.named_modules())
    names = frozenset([*(n for n, _ in model.named_parameters()), *(n for n, _ in model.named_buffers())])
    shapes = {n: _adapter_shapes(modules[n].weight, cfg.rank_for(n)) for n in targets}
    by_weight = [n for n in targets if how[n] == "weight"]
    # fused subclasses run their own forward on W + s B A, with A and B detached (the pass-through
    # node on their output gives A's and B's gradients): the conv computes no weight gradient.
    by_tap = [n for n in targets if how[n] == "fused" and not _plain_conv(modules[n])]
    by_buffer = [n for n in targets if how[n] != "weight"]
    target_set = set(targets)

    def tensors(base: Mapping[str, torch.Tensor], lora: Lora | None) -> dict:
        if base.keys() != names:  # once per call: a set comparison
            _base_error(base, names)
        params = dict(base)
        if lora is None:
            return params
        if lora.keys() != target_set:
            _targets_error(lora, target_set)
        for name, want in shapes.items():
            ab = lora[name]
            try:
                ok = (ab["A"].shape, ab["B"].shape) == want
            except (KeyError, TypeError, AttributeError):
                ok = False
            if not ok:
                _shape_error(name, ab, want, cfg)
        for name in by_weight:
            w = params[key(name, "weight")]
            params[key(name, "weight")] = w + delta_weight(lora[name]["A"], lora[name]["B"], cfg.scale_for(name))
        for name in by_tap:
            a, b = lora[name]["A"].detach(), lora[name]["B"].detach()
            params[key(name, "weight")] = merged_weight(params[key(name, "weight")], a, b, cfg.scale_for(name))
        for name in by_buffer:
            params[key(name, "lora_A")], params[key(name, "lora_B")] = lora[name]["A"], lora[name]["B"]
        return params

    return tensors


def _adapter_shapes(weight: torch.Tensor, rank: int) -> tuple[torch.Size, torch.Size]:
    """(A's shape, B's shape) for a layer's weight at `rank` (see funclora.lora)."""
    return torch.Size((rank, *weight.shape[1:])), torch.Size((weight.shape[0], rank, *[1] * (weight.dim() - 2)))


def _base_error(base: Mapping[str, torch.Tensor], names: frozenset) -> None:
    missing, extra = sorted(names - base.keys()), sorted(base.keys() - names)
    if missing:
        raise ValueError(f"base has no tensor {missing[0]!r} (missing {len(missing)}: {missing[:3]}); "
                         f"pass fl.freeze(model) of the model f was built from (or fl.merge of it)")
    raise ValueError(f"base has a tensor {extra[0]!r} that the model does not (extra {len(extra)}: "
                     f"{extra[:3]}); pass fl.freeze(model) of the model f was built from (or fl.merge of it)")


def _targets_error(lora: Lora, targets: set[str]) -> None:
    extra, missing = sorted(set(lora) - targets), sorted(targets - set(lora))
    raise ValueError(f"adapter layers do not match the targets of this function: not targeted {extra[:3]}, "
                     f"missing {missing[:3]}; build f with the adapter's config")


def _shape_error(name: str, ab, want: tuple[torch.Size, torch.Size], cfg: LoraConfig) -> None:
    got = {k: tuple(getattr(ab.get(k), "shape", ())) if isinstance(ab, Mapping) and k in ab else None for k in "AB"}
    raise ValueError(f"layer {name!r}: adapter shapes {got} contradict the config (rank "
                     f"{cfg.rank_for(name)}: A {tuple(want[0])}, B {tuple(want[1])}); "
                     f"use the config the adapter was made with")


def _check_seed(seed) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Within: x's device's generator seeded with `seed` (None: left as it is); after: as before."""
    if seed is None:
        yield
        return
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[device.index or 0].manual_seed(seed)
        yield


def plan(model: nn.Module, cfg: LoraConfig, strategy: str | Mapping[str, str] = AUTO) -> dict[str, str]:
    """{layer name: strategy} that `functional(model, cfg, strategy=strategy)` uses, "auto" resolved.

    "auto" counts multiply-adds per output pixel: the full weight gradient costs
    out * in/groups * k (k = kernel area); the low-rank gradients cost 2 * r * in * k (A's
    convolution and its weight gradient) + 2 * out * r (B's two passes over the output gradient).
    A convolution takes "fused" when that is at most FUSED_MAX_COST of the full one, else "weight";
    a Linear takes "activation".
    With dropout, every layer takes "activation", the only path that applies it.
    A mapping that names a layer which is not a target is a ValueError.
    """
    modules = dict(model.named_modules())
    targets = find_targets(model, cfg)
    if not isinstance(strategy, str):
        stray = sorted(set(strategy) - set(targets))
        if stray:
            raise ValueError(f"strategy names layer {stray[0]!r}, which is not a target of the config "
                             f"(targets: {targets[:4]}{'...' if len(targets) > 4 else ''})")
    chosen = {}
    for name in targets:
        asked = strategy if isinstance(strategy, str) else strategy.get(name, AUTO)
        layer = modules[name]
        if asked == AUTO:
            asked = _auto(layer, cfg.rank_for(name), cfg.dropout)
        if asked not in STRATEGIES:
            raise ValueError(f"layer {name!r}: unknown strategy {asked!r}; use {AUTO!r} or one of {STRATEGIES}")
        if asked != "activation" and cfg.dropout:
            raise ValueError(f"layer {name!r}: the {asked!r} strategy cannot apply dropout to the "
                             f"LoRA input; use 'activation' or dropout=0")
        if asked == "fused" and not isinstance(layer, nn.Conv2d):
            raise ValueError(f"layer {name!r}: the 'fused' strategy is for Conv2d layers, not a "
                             f"{type(layer).__name__}; use 'activation' or 'weight'")
        chosen[name] = asked
    return chosen


def _auto(layer: nn.Module, rank: int, dropout: float) -> str:
    if dropout or not isinstance(layer, nn.Conv2d):
        return "activation"
    k = layer.kernel_size[0] * layer.kernel_size[1]
    full = layer.out_channels * layer.in_channels // layer.groups * k
    low_rank = 2 * rank * layer.in_channels * k + 2 * layer.out_channels * rank
    if low_rank > FUSED_MAX_COST * full:
        return "weight"
    return "fused"


def _plain_conv(layer: nn.Module) -> bool:
    """An nn.Conv2d (or subclass) that runs the stock forward, so that LowRankConv can stand in for it."""
    kind = type(layer)
    return (isinstance(layer, nn.Conv2d) and kind.forward is nn.Conv2d.forward
            and kind._conv_forward is nn.Conv2d._conv_forward)


def _shell(model: nn.Module, how: Mapping[str, str], cfg: LoraConfig, mode: str) -> nn.Module:
    """A copy of the module tree sharing every tensor with `model`, in `mode` (one of _MODES), with
    the LoRA path on `how`'s layers."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    shell = copy.deepcopy(model, memo=dict(shared)).train(mode != "eval")
    if mode == "train":  # batch statistics, and no running statistics read or written
        for module in shell.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.track_running_stats = False
    modules = dict(shell.named_modules())
    for name, strategy in how.items():
        layer = modules[name]
        # Placeholders that functional_call fills per call: the adapter enters f as data.
        layer.register_buffer("lora_A", None, persistent=False)
        layer.register_buffer("lora_B", None, persistent=False)
        if strategy == "fused" and _plain_conv(layer):
            # The shell is ours: its layer may run another forward (the caller's model keeps its own).
            layer.forward = partial(_fused_forward, layer, scale=cfg.scale_for(name), spec=conv_spec(layer))
            continue
        # A runs through a hook-free twin of the layer itself, so that padding_mode, "same"
        # padding and subclasses that pad inside their own forward are honoured exactly.
        twin = copy.deepcopy(layer, memo=dict(shared))
        if strategy == "fused":
            layer.register_forward_hook(partial(_tap, twin=twin, scale=cfg.scale_for(name)))
        else:
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


def _fused_forward(layer: nn.Conv2d, x: torch.Tensor, *, scale: float, spec: tuple) -> torch.Tensor:
    a, b = layer.lora_A, layer.lora_B
    if a is None:
        return nn.Conv2d.forward(layer, x)
    pad, *conv = spec
    if pad is not None:
        x = F.pad(x, pad[0], mode=pad[1])
    return LowRankConv.apply(x, layer.weight, layer.bias, a, b, scale, tuple(conv))


def _tap(layer: nn.Module, args: tuple, out: torch.Tensor, *, twin: nn.Module, scale: float) -> torch.Tensor:
    a, b = layer.lora_A, layer.lora_B
    if a is None:
        return out
    return LowRankTap.apply(out, args[0], a, b, scale, twin)
