"""Hypothesis strategies for the layers funclora adapts: Linear and every kind of Conv2d."""
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn


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
