"""The low-rank convolution kernels behind the "fused" strategy (see funclora.apply.STRATEGIES).

A "fused" Conv2d runs one convolution with the merged weight W + s * B @ A; its backward takes the
input gradient through that same weight and A's and B's gradients from rank-r activations, so
that no full-size weight gradient is ever formed:

    grad x = conv_transpose(g, W + s B A)
    grad B = s * sum g h^T           with h = conv(x, A)          (r channels)
    grad A = s * conv_weight_grad(x, B^T g)                        (B^T g: r channels)

>>> import torch
>>> x, w = torch.randn(2, 4, 6, 6), torch.randn(8, 4, 3, 3)
>>> a, b = torch.randn(2, 4, 3, 3), torch.randn(8, 2, 1, 1)
>>> spec = conv_spec(torch.nn.Conv2d(4, 8, 3, padding="same"))
>>> spec
(None, (1, 1), (1, 1), (1, 1), 1)
>>> out = LowRankConv.apply(x, w, None, a, b, 0.5, spec[1:])
>>> torch.allclose(out, torch.nn.functional.conv2d(x, w + 0.5 * (b.flatten(1) @ a.flatten(1)).view_as(w), padding=1), atol=1e-5)
True
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = ["conv_spec", "merged_weight", "LowRankConv", "low_rank_conv_grads", "b_grads", "LowRankTap",
           "channels_last"]


def conv_spec(layer: nn.Conv2d) -> tuple:
    """(F.pad arguments or None, stride, padding, dilation, groups): nn.Conv2d's forward as explicit ints.

    Non-zero padding modes pad first, as nn.Conv2d does; "same" pads symmetrically inside the
    convolution and the odd remainder on the right/bottom first, as torch's own "same" does.

    >>> conv_spec(torch.nn.Conv2d(1, 1, (2, 4), padding="same"))      # remainder: bottom 1, right 1
    (((0, 1, 0, 1), 'constant'), (1, 1), (0, 1), (1, 1), 1)
    >>> conv_spec(torch.nn.Conv2d(1, 1, 3, padding=2, padding_mode="reflect"))[:3]
    (((2, 2, 2, 2), 'reflect'), (1, 1), (0, 0))
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


def merged_weight(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A in one pass (exactly W when B is zero), in W's own memory layout."""
    if channels_last(w):  # rows of (kh, kw, in), as a channels-last weight lies in memory
        w_rows = w.permute(0, 2, 3, 1)
        a_rows = a.permute(0, 2, 3, 1).reshape(a.shape[0], -1)
        merged = torch.addmm(w_rows.reshape(w.shape[0], -1), b.flatten(1), a_rows, alpha=scale)
        return merged.view(w_rows.shape).permute(0, 3, 1, 2)
    return torch.addmm(w.flatten(1), b.flatten(1), a.flatten(1), alpha=scale).view_as(w)


class LowRankConv(torch.autograd.Function):
    """conv(x, W + s B A) whose backward never forms a full-size weight gradient (unless W needs one).

    apply(x, w, bias, a, b, scale, (stride, padding, dilation, groups)), x already padded if the
    layer pads by a mode (conv_spec's first entry). h and B^T g have r channels (r * groups when grouped).
    """

    generate_vmap_rule = True  # torch.func.vmap over f (per-example gradients) keeps working

    @staticmethod
    def forward(x, w, bias, a, b, scale, conv):
        stride, padding, dilation, groups = conv
        return F.conv2d(x, merged_weight(w, a, b, scale), bias, stride, padding, dilation, groups)

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
            return (*low_rank_conv_grads(g, *ctx.saved_tensors, ctx.scale, ctx.conv, needs), None, None)


def low_rank_conv_grads(g, x, w, a, b, scale, conv, needs):
    """(grad x, grad W, grad bias, grad A, grad B) of LowRankConv for the output gradient g; None
    where `needs` (five booleans) says that one is not needed."""
    stride, padding, dilation, groups = conv
    need_x, need_w, need_bias, need_a, need_b = needs
    merged = merged_weight(w, a, b, scale) if need_x or need_w else None
    backward = partial(torch.ops.aten.convolution_backward, bias_sizes=None, stride=stride, padding=padding,
                       dilation=dilation, transposed=False, output_padding=[0, 0], groups=groups)
    gx = ga = gb = None
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
        gb, gh = b_grads(g, h, b, scale, groups)
        if need_a:
            ga = backward(gh, x, a_tiled, output_mask=[False, True, False])[1]
            ga = ga.view(groups, *a.shape).sum(0) if groups > 1 else ga
    return gx, None, gbias, ga, gb if need_b else None


def b_grads(g: torch.Tensor, h: torch.Tensor, b: torch.Tensor, scale: float, groups: int):
    """(grad B, grad h) of scale * conv1x1(h, B, groups) for the output gradient g."""
    if groups == 1 and channels_last(g) and channels_last(h):
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


class LowRankTap(torch.autograd.Function):
    """Passes a conv's output through unchanged; backward adds A's and B's low-rank gradients.

    apply(out, x, a, b, scale, twin). For "fused" Conv2d subclasses: the layer itself ran on
    W + s B A with A and B detached (so the input gradient is the layer's own), and this node
    computes h = twin(x; A) and A's weight gradient with the layer's own forward (torch.func.vjp),
    B's from h and g, as LowRankConv does. `twin` is a copy of the layer that runs with weight A.
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
            gb, gh = b_grads(g, h, b, ctx.scale, groups)
            ga = pull(gh)[0]
            ga = ga.view(groups, *a.shape).sum(0) if groups > 1 else ga
        return g, None, ga, gb, None, None


def channels_last(t: torch.Tensor) -> bool:
    """Whether `t` lies in channels-last memory (and is not also plainly contiguous, as 1x1 images are)."""
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
