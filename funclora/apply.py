"""Run a model with adapters as a pure function `f(base, lora, x)`, built on functional_call.

Every targeted layer computes base_layer(x) + scale * B(A(x)), i.e. the layer with weight
W + scale * B @ A. How it gets there is chosen per layer (`plan`, see STRATEGIES): on the
low-rank path backward never forms a full-size weight gradient; where that path would cost
more than the full weight gradient (few channels, depthwise convolutions) the weight is merged.

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
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .config import LoraConfig, find_targets
from .lora import Lora, delta_weight, key

__all__ = ["functional", "plan", "STRATEGIES"]

STRATEGIES = ("activation", "fused", "weight")
"""How a layer applies its adapter (all compute the same function; they differ in cost):

"activation": x -> A -> B beside the base layer (a forward hook): works for every layer and is
    the only one that applies `cfg.dropout`; the cheapest for Linear layers.
"fused": Conv2d only. Forward is the layer itself with W + scale * B @ A (the cost of the base
    layer); backward takes the input gradient through that same weight and A's and B's gradients
    from the rank-r activations A(x) and B^T g, recomputed there, so no full-size weight gradient
    and no extra full-size activation is ever formed. A plain nn.Conv2d runs it as one custom
    autograd.Function; a subclass with its own forward (e.g. one that pads first) runs its forward
    on the merged weight, and a pass-through node on its output adds A's and B's gradients.
"weight": W + scale * B @ A before the layer runs (autograd): one full-size weight gradient, which
    is the cheapest where the layer has few channels per group (depthwise convolutions).
"""
AUTO = "auto"
"""Pick per layer by a cost model (see `plan`)."""

FUSED_MAX_COST = 0.5
"""`plan` takes a low-rank path for a convolution when its multiply-adds are at most this fraction
of the full weight gradient's. Below 1 because rank-r convolutions (few output channels) run at
about a third to a half of the full convolution's speed on CPU (VGG19's layers on a 2-core x86 CPU)."""

Apply = Callable[[Mapping[str, torch.Tensor], "Lora | None", torch.Tensor], torch.Tensor]


def functional(model: nn.Module, cfg: LoraConfig, *,
               strategy: str | Mapping[str, str] = AUTO) -> Apply:
    """The pure function f(base, lora, x) of `model` with `cfg`'s adapters; f(base, None, x) is the base.

    The model is not modified: f runs a structural copy whose tensors are the model's own (no
    weights are copied), whose targeted layers carry the LoRA path, and which keeps the train/eval
    mode the model had here. `strategy` picks the path per layer (see STRATEGIES and `plan`): "auto",
    one of STRATEGIES for all, or {layer name: strategy} (layers not named: "auto"). Every strategy
    computes the same function up to float rounding, and a fresh adapter (B = 0) gives exactly the
    base's output on each of them: W + scale * (0 @ A) is W, bit for bit.
    """
    shell, tensors = adapted_shell(model, cfg, strategy)

    def f(base: Mapping[str, torch.Tensor], lora: Lora | None, x: torch.Tensor, *,
          adapter_index: torch.Tensor | None = None) -> torch.Tensor:
        if adapter_index is not None:  # lora is fl.stack(loras): example n runs adapter_index[n]
            from .many import per_example
            return per_example(f, base, lora, x, adapter_index)
        return functional_call(shell, tensors(base, lora), (x,))

    # What funclora.many vmaps over adapters: "fused" layers on the "activation" path, so that no
    # dense frozen weight is merged per adapter (vmap would make each such convolution a K-group
    # one); "weight" layers (depthwise, few channels) stay merged: K merged depthwise weights are
    # one depthwise conv over K·C channels, no dearer than the base, and no rank-r·C activation.
    f.vmappable = cache(lambda: functional(model, cfg, strategy={
        n: "activation" if s == "fused" else s for n, s in plan(model, cfg, strategy).items()}))
    return f


def adapted_shell(model: nn.Module, cfg: LoraConfig, strategy: str | Mapping[str, str] = AUTO
                  ) -> tuple[nn.Module, Callable[[Mapping[str, torch.Tensor], "Lora | None"], dict]]:
    """(shell, tensors): the module tree `functional` runs, and (base, lora) -> the dict of tensors
    to run it with (functional_call's argument). For building other pure functions on the same
    tree (funclora.cache traces it); most code wants `functional`."""
    targets = find_targets(model, cfg)
    how = plan(model, cfg, strategy)
    shell = _shell(model, {n: s for n, s in how.items() if s != "weight"}, cfg)
    modules = dict(model.named_modules())
    by_weight = [n for n in targets if how[n] == "weight"]
    # fused subclasses run their own forward on W + s B A, with A and B detached (the pass-through
    # node on their output gives A's and B's gradients): the conv computes no weight gradient.
    by_tap = [n for n in targets if how[n] == "fused" and not _plain_conv(modules[n])]
    target_set = set(targets)

    def tensors(base: Mapping[str, torch.Tensor], lora: Lora | None) -> dict:
        params = dict(base)
        if lora:
            if lora.keys() != target_set:
                raise ValueError(f"adapter layers {sorted(lora)[:3]}... do not match the targets of "
                                 f"this function {targets[:3]}...; build f with the adapter's config")
            for name in by_weight:
                w = params[key(name, "weight")]
                params[key(name, "weight")] = w + delta_weight(lora[name]["A"], lora[name]["B"], cfg.scale_for(name))
            for name in by_tap:
                a, b = lora[name]["A"].detach(), lora[name]["B"].detach()
                params[key(name, "weight")] = _merged(params[key(name, "weight")], a, b, cfg.scale_for(name))
            for name in target_set.difference(by_weight):
                params[key(name, "lora_A")], params[key(name, "lora_B")] = lora[name]["A"], lora[name]["B"]
        return params

    return shell, tensors


def plan(model: nn.Module, cfg: LoraConfig, strategy: str | Mapping[str, str] = AUTO) -> dict[str, str]:
    """{layer name: strategy} that `functional(model, cfg, strategy=strategy)` uses, "auto" resolved.

    "auto" counts multiply-adds per output pixel: the full weight gradient costs
    out * in/groups * k (k = kernel area); the low-rank gradients cost 2 * r * in * k (A's
    convolution and its weight gradient) + 2 * out * r (B's two passes over the output gradient).
    A convolution takes "fused" when that is at most FUSED_MAX_COST of the full one, else "weight";
    a Linear takes "activation".
    With dropout, every layer takes "activation", the only path that applies it.
    """
    modules = dict(model.named_modules())
    chosen = {}
    for name in find_targets(model, cfg):
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
    """An nn.Conv2d (or subclass) that runs the stock forward, so that _LowRankConv can stand in for it."""
    kind = type(layer)
    return (isinstance(layer, nn.Conv2d) and kind.forward is nn.Conv2d.forward
            and kind._conv_forward is nn.Conv2d._conv_forward)


def _shell(model: nn.Module, how: Mapping[str, str], cfg: LoraConfig) -> nn.Module:
    """A copy of the module tree sharing every tensor with `model`, with the LoRA path on `how`'s layers."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    shell = copy.deepcopy(model, memo=dict(shared))
    modules = dict(shell.named_modules())
    for name, strategy in how.items():
        layer = modules[name]
        # Placeholders that functional_call fills per call: the adapter enters f as data.
        layer.register_buffer("lora_A", None, persistent=False)
        layer.register_buffer("lora_B", None, persistent=False)
        if strategy == "fused" and _plain_conv(layer):
            # The shell is ours: its layer may run another forward (the caller's model keeps its own).
            layer.forward = partial(_fused_forward, layer, scale=cfg.scale_for(name), spec=_conv_spec(layer))
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


def _conv_spec(layer: nn.Conv2d) -> tuple:
    """(F.pad arguments or None, stride, padding, dilation, groups): nn.Conv2d's forward as explicit ints.

    Non-zero padding modes pad first, as nn.Conv2d does; "same" pads symmetrically inside the
    convolution and the odd remainder on the right/bottom first, as torch's own "same" does.
    """
    pad, padding = None, layer.padding
    if layer.padding_mode != "zeros":
        pad, padding = (tuple(layer._reversed_padding_repeated_twice), layer.padding_mode), (0, 0)
    elif padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        padding = tuple(t // 2 for t in total)
        extra = [t - 2 * (t // 2) for t in total]
        if any(extra):
            pad = ((0, extra[1], 0, extra[0]), "constant")
    return pad, tuple(layer.stride), tuple(padding), tuple(layer.dilation), layer.groups


def _fused_forward(layer: nn.Conv2d, x: torch.Tensor, *, scale: float, spec: tuple) -> torch.Tensor:
    a, b = layer.lora_A, layer.lora_B
    if a is None:
        return nn.Conv2d.forward(layer, x)
    pad, *conv = spec
    if pad is not None:
        x = F.pad(x, pad[0], mode=pad[1])
    return _LowRankConv.apply(x, layer.weight, layer.bias, a, b, scale, tuple(conv))


def _merged(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A in one pass (exactly W when B is zero), in W's own memory layout."""
    if _channels_last(w):  # rows of (kh, kw, in), as a channels-last weight lies in memory
        w_rows = w.permute(0, 2, 3, 1)
        a_rows = a.permute(0, 2, 3, 1).reshape(a.shape[0], -1)
        merged = torch.addmm(w_rows.reshape(w.shape[0], -1), b.flatten(1), a_rows, alpha=scale)
        return merged.view(w_rows.shape).permute(0, 3, 1, 2)
    return torch.addmm(w.flatten(1), b.flatten(1), a.flatten(1), alpha=scale).view_as(w)


class _LowRankConv(torch.autograd.Function):
    """conv(x, W + s B A) whose backward never forms a full-size weight gradient (unless W needs one).

    grad x = conv_transpose(g, W + s B A); grad B = s sum g h^T with h = conv(x, A);
    grad A = s conv_weight_grad(x, B^T g). h and B^T g have r channels (r * groups when grouped).
    """

    generate_vmap_rule = True  # torch.func.vmap over f (per-example gradients) keeps working

    @staticmethod
    def forward(x, w, bias, a, b, scale, conv):
        stride, padding, dilation, groups = conv
        return F.conv2d(x, _merged(w, a, b, scale), bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, bias, a, b, scale, conv = inputs
        # W + s B A is recomputed in backward (one cheap matrix product) rather than kept alive:
        # under torch.func.grad nothing saved is freed before the whole backward is done.
        ctx.save_for_backward(x, w, a, b)
        ctx.scale, ctx.conv = scale, conv

    @staticmethod
    def backward(ctx, g):
        needs = ctx.needs_input_grad[:5]
        if torch.compiler.is_compiling():
            # torch.compile of torch.func.grad(f) has been seen to report A and B as not needing
            # grad (torch 2.14): compute x's, A's and B's gradients regardless; unneeded ones are dropped.
            needs = (True, needs[1], needs[2], True, True)
        # No graph of the backward itself (torch.func.grad asks for one): its temporaries are freed here.
        with torch.no_grad():
            return (*_low_rank_conv_grads(g, *ctx.saved_tensors, ctx.scale, ctx.conv, needs), None, None)


def _low_rank_conv_grads(g, x, w, a, b, scale, conv, needs):
    stride, padding, dilation, groups = conv
    merged = _merged(w, a, b, scale) if needs[0] or needs[1] else None
    need_x, need_w, need_bias, need_a, need_b = needs
    backward = partial(torch.ops.aten.convolution_backward, bias_sizes=None, stride=stride, padding=padding,
                       dilation=dilation, transposed=False, output_padding=[0, 0], groups=groups)
    gx = gw = ga = gb = None
    gbias = g.sum((0, 2, 3)) if need_bias else None
    if need_w:  # the base weight itself is differentiated: its full gradient also gives A's and B's
        gx, gw, _ = backward(g, x, merged, output_mask=[need_x, True, False])
        flat = gw.flatten(1)
        ga = (scale * b.flatten(1).t() @ flat).view_as(a) if need_a else None
        gb = (scale * flat @ a.flatten(1).t()).view_as(b) if need_b else None
        return gx, gw, gbias, ga, gb
    if need_x:
        gx = backward(g, x, merged, output_mask=[True, False, False])[0]
    if need_a or need_b:
        a_tiled = a.repeat(groups, 1, 1, 1) if groups > 1 else a
        h = F.conv2d(x, a_tiled, None, stride, padding, dilation, groups)
        gb, gh = _b_grads(g, h, b, scale, groups)
        if need_a:
            ga = backward(gh, x, a_tiled, output_mask=[False, True, False])[1]
            ga = ga.view(groups, *a.shape).sum(0) if groups > 1 else ga
    return gx, None, gbias, ga, gb if need_b else None


def _b_grads(g: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scale: float, groups: int):
    """(grad B, grad h) of scale * conv1x1(h, B, groups) for the output gradient g."""
    if groups == 1 and _channels_last(g) and _channels_last(h):
        # (pixels, channels) matrices, as channels-last tensors lie in memory: no layout copies
        n, c, r = g.shape[0], g.shape[1], h.shape[1]
        g3, h3 = g.permute(0, 2, 3, 1).reshape(n, -1, c), h.permute(0, 2, 3, 1).reshape(n, -1, r)
        gb = (scale * torch.bmm(h3.transpose(1, 2), g3).sum(0)).t().reshape(b.shape)
        gh = (g3.reshape(-1, c) @ (scale * b.flatten(1))).view(n, *h.shape[2:], r).permute(0, 3, 1, 2)
        return gb, gh
    if groups == 1:  # B as batched matrix products over (N, channels, pixels): no layout copies
        g3, h3 = g.flatten(2), h.flatten(2)
        gb = (scale * torch.bmm(g3, h3.transpose(1, 2)).sum(0)).view_as(b)
        gh = torch.bmm((scale * b.flatten(1).t()).expand(g3.shape[0], -1, -1), g3).view_as(h)
        return gb, gh
    gh, gb, _ = torch.ops.aten.convolution_backward(
        g, h, b, None, [1, 1], [0, 0], [1, 1], False, [0, 0], groups, [True, True, False])
    return scale * gb, scale * gh


def _tap(layer: nn.Module, args: tuple, out: torch.Tensor, *, twin: nn.Module, scale: float) -> torch.Tensor:
    a, b = layer.lora_A, layer.lora_B
    if a is None:
        return out
    return _LowRankTap.apply(out, args[0], a, b, scale, twin)


class _LowRankTap(torch.autograd.Function):
    """Passes a conv's output through unchanged; backward adds A's and B's low-rank gradients.

    For "fused" Conv2d subclasses: the layer itself ran on W + s B A with A and B detached (so
    the input gradient is the layer's own), and this node computes h = twin(x; A) and A's weight
    gradient with the layer's own forward (torch.func.vjp), B's from h and g, as _LowRankConv does.
    """

    @staticmethod
    def vmap(info, in_dims, out, x, a, b, scale, twin):  # forward is the identity, batched or not
        return out, in_dims[0]

    @staticmethod
    def forward(out, x, a, b, scale, twin):
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        out, x, a, b, scale, twin = inputs
        ctx.mark_dirty(out)  # the output "is" the input: later in-place ops (ReLU) stay legal
        ctx.save_for_backward(x, a, b)
        ctx.scale, ctx.twin = scale, twin

    @staticmethod
    def backward(ctx, g):
        x, a, b = ctx.saved_tensors
        groups = ctx.twin.groups
        a_tiled = a.repeat(groups, 1, 1, 1) if groups > 1 else a
        h, pull = torch.func.vjp(lambda w: functional_call(ctx.twin, {"weight": w, "bias": None}, (x,)), a_tiled)
        with torch.no_grad():
            gb, gh = _b_grads(g, h, b, ctx.scale, groups)
            ga = pull(gh)[0]
            ga = ga.view(groups, *a.shape).sum(0) if groups > 1 else ga
        return g, None, ga, gb, None, None


def _channels_last(t: torch.Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
