"""K adapters in one forward pass, without vmap: the stacked form of `functional`'s f.

g(base, stacked, x): `stacked` is `fl.stack(loras)` (a leading K axis on every A and B) and x
holds K blocks of N examples, adapter-major (rows k·N .. (k+1)·N are adapter k's). Every frozen
layer runs once on the whole K·N batch with its own, unbatched weight; only the adapted layers
look at the blocks:

  "low-rank" (dense layers): the frozen layer on all K·N rows, plus scale · B_k(A_k(x_k)) per
      block: batched matrix products for Linear and 1×1 convolutions, one rank-r convolution per
      block otherwise. No dense weight is ever merged per adapter (that would be K convolutions
      of the full width, or one K-group convolution).
  "merged" (`fl.plan`'s "weight" layers: depthwise convolutions, few channels): block k runs the
      layer with W + scale · B_k A_k, as alone; K cheap convolutions.

Gradients come from torch.func.grad of the sum of the K losses: the adapters share no
parameter, so each one's gradient is its own loss's. Eval mode only (batch statistics over K·N
rows would mix the adapters). `funclora.many.fit_many` trains with it.

>>> import torch, funclora as fl
>>> from funclora.stacked import stacked_apply
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(72, 2))
>>> cfg = fl.LoraConfig(rank=2, targets=fl.ALL)
>>> loras = [fl.init_lora(model, cfg, seed=s) for s in range(3)]
>>> for lora in loras:
...     lora["3"]["B"] = torch.randn(2, 2)
>>> x = torch.randn(4, 3, 5, 5)
>>> g, f = stacked_apply(model, cfg), fl.functional(model, cfg)
>>> out = g(fl.freeze(model), fl.stack(loras), torch.cat([x, x, x]))
>>> torch.allclose(out[4:8], f(fl.freeze(model), loras[1], x), atol=1e-6)
True
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .apply import AUTO, _adapter_shapes, _base_error, _targets_error, plan
from .config import LoraConfig
from .lora import Lora, key

__all__ = ["stacked_apply", "reads_input_first"]

StackedApply = Callable[[Mapping[str, torch.Tensor], Lora, torch.Tensor], torch.Tensor]


def stacked_apply(model: nn.Module, cfg: LoraConfig, strategy: str | Mapping[str, str] = AUTO) -> StackedApply:
    """g(base, stacked, x) -> the outputs of K·N examples, block k run with adapter k (see above).

    A layer that `fl.plan(model, cfg, strategy)` runs by "weight" takes the "merged" form here,
    every other one the "low-rank" form."""
    how = plan(model, cfg, strategy)
    shell = _shell(model, cfg, how)
    names = frozenset([*(n for n, _ in model.named_parameters()), *(n for n, _ in model.named_buffers())])
    modules = dict(model.named_modules())
    shapes = {n: _adapter_shapes(modules[n].weight, cfg.rank_for(n)) for n in how}
    targets = set(how)

    def g(base: Mapping[str, torch.Tensor], stacked: Lora, x: torch.Tensor) -> torch.Tensor:
        if base.keys() != names:
            _base_error(base, names)
        if stacked.keys() != targets:
            _targets_error(stacked, targets)
        params = dict(base)
        k = None
        for name, (a_shape, b_shape) in shapes.items():
            a, b = stacked[name]["A"], stacked[name]["B"]
            k = a.shape[0] if k is None else k
            if a.shape != (k, *a_shape) or b.shape != (k, *b_shape):
                raise ValueError(f"layer {name!r}: stacked adapter shapes A {tuple(a.shape)}, B {tuple(b.shape)}; "
                                 f"want ({k}, {', '.join(map(str, a_shape))}) and ({k}, "
                                 f"{', '.join(map(str, b_shape))}) (fl.stack of adapters of this config)")
            params[key(name, "lora_A")], params[key(name, "lora_B")] = a, b
        if k is not None and x.shape[0] % k:
            raise ValueError(f"x has {x.shape[0]} rows, not a multiple of the {k} stacked adapters")
        return functional_call(shell, params, (x,))

    g.shell = shell
    return g


def reads_input_first(g: StackedApply, base: Mapping[str, torch.Tensor], x: torch.Tensor) -> bool:
    """Whether the first layer to run on x (one example of it) is an adapted one, fed x itself: then
    there is no frozen prefix to share, and K copies of x cost nothing that sharing would save."""
    shell, seen = g.shell, []

    class Found(Exception):
        pass

    def first(module, args, *, adapted):
        seen.append(adapted and len(args) > 0 and args[0] is probe)
        raise Found

    hooks = [m.register_forward_pre_hook(partial(first, adapted=hasattr(m, "lora_A")))
             for name, m in shell.named_modules() if name and (hasattr(m, "lora_A") or not any(m.children()))]
    probe = x[:1]
    try:
        with torch.no_grad():
            functional_call(shell, dict(base), (probe,))
    except Found:
        pass
    except Exception:  # it cannot run one example alone: vmap's path is right for any model
        return False
    finally:
        for hook in hooks:
            hook.remove()
    return bool(seen and seen[0])


def _shell(model: nn.Module, cfg: LoraConfig, how: Mapping[str, str]) -> nn.Module:
    """An eval-mode copy of the module tree sharing every tensor with `model`, its targets stacked."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    shell = copy.deepcopy(model, memo=dict(shared)).eval()
    modules = dict(shell.named_modules())
    for name, strategy in how.items():
        layer = modules[name]
        twin = copy.deepcopy(layer, memo=dict(shared))  # hook-free: runs A, or a merged weight
        layer.register_buffer("lora_A", None, persistent=False)
        layer.register_buffer("lora_B", None, persistent=False)
        run = _merged if strategy == "weight" else _low_rank
        layer.forward = partial(run, layer, twin=twin, scale=cfg.scale_for(name), pointwise=_pointwise(twin))
    return shell


def _pointwise(twin: nn.Module) -> bool:
    """Whether the layer is a 1×1 convolution of one group that keeps the image size, as its own
    forward runs it (a subclass may pad first): then it is a matrix product per pixel. Checked
    on a small random image, since a subclass's forward may do more than convolve."""
    if not (isinstance(twin, nn.Conv2d) and twin.kernel_size == (1, 1) and twin.stride == (1, 1)
            and twin.groups == 1):
        return False
    g, like = torch.Generator().manual_seed(0), dict(dtype=twin.weight.dtype, device=twin.weight.device)
    w = torch.randn(2, twin.in_channels, 1, 1, generator=g).to(**like)
    x = torch.randn(1, twin.in_channels, 3, 3, generator=g).to(**like)
    try:
        with torch.no_grad():
            out = functional_call(twin, {"weight": w, "bias": None}, (x,))
    except Exception:  # a forward that wants its own shapes: take the general path
        return False
    return out.shape == (1, 2, 3, 3) and torch.allclose(out, torch.einsum("oi,nihw->nohw", w.flatten(1), x),
                                                         rtol=1e-4, atol=1e-5)


def _blocks(x: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    return x.split(x.shape[0] // k)


def _merged(layer: nn.Module, x: torch.Tensor, *, twin: nn.Module, scale: float, pointwise: bool) -> torch.Tensor:
    a, b = layer.lora_A, layer.lora_B
    if a is None:
        return type(layer).forward(layer, x)
    w = layer.weight  # K merged weights W + scale * B_k @ A_k in one batched product
    merged = torch.baddbmm(w.flatten(1), b.flatten(2), a.flatten(2), alpha=scale).view(-1, *w.shape)
    return torch.cat([functional_call(twin, {"weight": merged[i], "bias": layer.bias}, (xi,))
                      for i, xi in enumerate(_blocks(x, a.shape[0]))])


def _low_rank(layer: nn.Module, x: torch.Tensor, *, twin: nn.Module, scale: float, pointwise: bool) -> torch.Tensor:
    a, b = layer.lora_A, layer.lora_B
    out = type(layer).forward(layer, x)  # the frozen layer, once, on all K·N rows
    if a is None:
        return out
    k, r = a.shape[0], a.shape[1]
    if isinstance(layer, nn.Linear):  # out + (K, rows, in) @ (K, in, r) @ (K, r, out), the sum in one product
        rows = out.reshape(k, -1, out.shape[-1])
        h = torch.bmm(x.reshape(k, -1, x.shape[-1]), a.transpose(1, 2))
        return torch.baddbmm(rows, h, scale * b.transpose(1, 2)).view_as(out)
    groups, n = layer.groups, x.shape[0] // k
    if pointwise:  # (K, 1, r, in) @ (K, N, in, pixels): one batched product for all blocks
        h = torch.matmul(a.view(k, 1, r, -1), x.reshape(k, n, x.shape[1], -1))
    else:  # A as the layer itself (its padding, stride, groups), one rank-r convolution per block
        tiled = a.repeat(1, groups, 1, 1, 1) if groups > 1 else a
        h = torch.stack([functional_call(twin, {"weight": tiled[i], "bias": None}, (xi,))
                         for i, xi in enumerate(_blocks(x, k))]).flatten(3)
    if groups == 1:  # out + B_k @ h per example (pixels as columns), the sum in one product
        per_row = (scale * b.view(k, 1, -1, r)).expand(k, n, -1, r).reshape(k * n, -1, r)
        return torch.baddbmm(out.reshape(k * n, out.shape[1], -1), per_row, h.reshape(k * n, r, -1)).view_as(out)
    # B as a grouped 1×1 convolution per block, as funclora.apply's "activation" path
    delta = torch.stack([F.conv2d(h[i].view(n, -1, *out.shape[2:]), b[i], groups=groups) for i in range(k)])
    return out + scale * delta.view_as(out)
