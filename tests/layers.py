"""Hypothesis strategies for the layers funclora adapts: Linear and every kind of Conv2d."""
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import funclora as fl


class StaticSamePadConv2d(nn.Conv2d):
    """The EfficientNet-port conv: pads to 'same' inside its own forward, then convolves unpadded."""

    def forward(self, x):
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ph = max((-(-x.shape[-2] // sh) - 1) * sh + (kh - 1) * dh + 1 - x.shape[-2], 0)
        pw = max((-(-x.shape[-1] // sw) - 1) * sw + (kw - 1) * dw + 1 - x.shape[-1], 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


@st.composite
def linear_layers(draw):
    """(layer, input) for a Linear with drawn in/out features and batch shape."""
    layer = nn.Linear(draw(st.integers(1, 12)), draw(st.integers(1, 12)), bias=draw(st.booleans()))
    batch = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
    return layer, torch.randn(*batch, layer.in_features)


@st.composite
def conv_layers(draw):
    """(layer, input) for a Conv2d drawn over kernel, stride, padding, dilation, groups, padding_mode."""
    groups = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    in_ch = groups * (1 if depthwise else draw(st.integers(1, 3)))
    out_ch = groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = draw(st.sampled_from([1, 2, (1, 2)]))
    stride = draw(st.sampled_from([1, 2, (2, 1), 3]))
    size = (draw(st.integers(8, 12)), draw(st.integers(8, 12)))  # >= the widest dilated kernel (7)
    kind = draw(st.sampled_from(["int", "tuple", "same", "valid", "static-same"]))
    padding = {"int": draw(st.integers(0, 2)), "tuple": (draw(st.integers(0, 2)), draw(st.integers(0, 2))),
               "same": "same", "valid": "valid", "static-same": 0}[kind]
    if padding == "same":  # torch allows 'same' only with stride 1
        stride = 1
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    cls = StaticSamePadConv2d if kind == "static-same" else nn.Conv2d
    layer = cls(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation,
                groups=groups, bias=draw(st.booleans()), padding_mode="zeros" if cls is not nn.Conv2d else mode)
    return layer, torch.randn(draw(st.integers(1, 3)), in_ch, *size)


def layers():
    return st.one_of(linear_layers(), conv_layers())


@st.composite
def configs(draw, max_rank=6):
    """A LoraConfig whose scale is rarely 1: alpha != rank and rsLoRA drawn (a dropped scale must show)."""
    rank = draw(st.integers(1, max_rank))
    return fl.LoraConfig(rank=rank, alpha=draw(st.sampled_from([None, 0.5, 3.0, 7.0])),
                         use_rslora=draw(st.booleans()))


@st.composite
def layers_with_strategy(draw):
    """(layer, input, strategy): every strategy that applies to the drawn layer ("fused": Conv2d only)."""
    layer, x = draw(layers())
    strategies = ("activation", "fused", "weight") if isinstance(layer, nn.Conv2d) else ("activation", "weight")
    return layer, x, draw(st.sampled_from(strategies))


def conv_cases() -> dict:
    """Named (layer factory, input shape): every branch of the fused convolution, for parametrized tests
    (so that each is reached on every run, not only when hypothesis happens to draw it)."""
    return {
        "plain": (lambda: nn.Conv2d(4, 6, 3), (2, 4, 7, 6)),
        "int-padding-stride-dilation": (lambda: nn.Conv2d(4, 6, 3, padding=2, stride=2, dilation=2), (2, 4, 9, 8)),
        "same-odd-kernel": (lambda: nn.Conv2d(4, 6, 3, padding="same"), (2, 4, 6, 7)),
        # even kernels: the odd remainder of "same" goes bottom/right, and only where it is odd
        "same-remainder-bottom": (lambda: nn.Conv2d(4, 6, (2, 3), padding="same"), (2, 4, 6, 7)),
        "same-remainder-right": (lambda: nn.Conv2d(4, 6, (3, 4), padding="same"), (2, 4, 6, 7)),
        "same-dilated-remainder": (lambda: nn.Conv2d(4, 6, (2, 2), padding="same", dilation=(3, 1)), (1, 4, 8, 7)),
        "valid": (lambda: nn.Conv2d(4, 6, 3, padding="valid", stride=(2, 1)), (2, 4, 8, 7)),
        "grouped": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (2, 4, 6, 6)),
        "depthwise": (lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), (2, 4, 6, 6)),
        "reflect": (lambda: nn.Conv2d(4, 6, 3, padding=(1, 2), padding_mode="reflect"), (2, 4, 6, 7)),
        "replicate": (lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="replicate", stride=2), (2, 4, 7, 7)),
        "circular": (lambda: nn.Conv2d(4, 6, (3, 2), padding=(2, 1), padding_mode="circular"), (2, 4, 6, 7)),
        "subclass-tap": (lambda: StaticSamePadConv2d(4, 6, 3, stride=2), (2, 4, 7, 6)),
        "subclass-tap-grouped": (lambda: StaticSamePadConv2d(4, 6, 2, groups=2), (2, 4, 6, 7)),
    }
