"""Specification of funclora.stacked: K adapters in one pass of K·N examples, without vmap.

  (a) block k of g(base, stack(loras), x) is f(base, loras[k], block k of x), for every kind of
      layer (Linear, every Conv2d: padded, strided, grouped, depthwise, 1×1, self-padding
      subclasses) and every strategy, and ranks padded by stack;
  (b) the gradient of the sum of the K blocks' losses is, for each adapter, its own loss's gradient;
  (c) a 1×1 convolution takes the matrix-product path only where the layer's forward is a plain
      1×1 convolution (a subclass that does more keeps the general path and stays exact);
  (d) reads_input_first tells a model whose input goes straight into an adapted layer.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import funclora as fl
from funclora.stacked import reads_input_first, stacked_apply
from helpers import trained
from layers import StaticSamePadConv2d, configs, conv_cases, layers_with_strategy



def _near(got, want, what):
    """Equal to float rounding: sums of many products, in another order than alone (atol relative to the size)."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(1.0, want.abs().max().item()),
                               msg=lambda m: f"{what}: {m}")


def _check(model, cfgs, x, strategy="auto"):
    """Outputs and gradients of the stacked pass against each adapter alone (rank: the largest)."""
    top = max(cfgs, key=lambda c: c.rank)
    loras = [trained(model, c, seed=s, scale=0.5) for s, c in enumerate(cfgs)]
    stacked = fl.stack(loras)
    base, k, n = fl.freeze(model), len(loras), x.shape[0]
    xs = torch.cat([x * (1 + i) for i in range(k)])  # each block its own data
    g = stacked_apply(model, top, strategy)
    f = fl.functional(model, top, strategy=strategy)

    out = g(base, stacked, xs)
    grads = torch.func.grad(lambda s: g(base, s, xs).square().sum())(stacked)
    for i, lora in enumerate(fl.unstack(stacked)):
        xi = xs[i * n:(i + 1) * n]
        _near(out[i * n:(i + 1) * n], f(base, lora, xi), f"block {i}")
        alone = torch.func.grad(lambda one: f(base, one, xi).square().sum())(lora)
        for name in lora:
            for t in "AB":
                _near(grads[name][t][i], alone[name][t], f"adapter {i}, layer {name!r}, {t}")
    return out


@settings(max_examples=25)
@given(layers_with_strategy(), configs(), st.integers(1, 3))
def test_each_block_is_its_adapter_alone_for_every_layer_and_strategy(case, cfg, k):
    layer, x, strategy = case
    cfg = fl.LoraConfig(rank=cfg.rank, alpha=cfg.alpha, use_rslora=cfg.use_rslora, targets=fl.ALL)
    _check(nn.Sequential(layer).eval(), [cfg] * k, x, strategy)


@pytest.mark.parametrize("strategy", ["fused", "weight"])
@pytest.mark.parametrize("case", sorted(conv_cases()))
def test_every_convolution_branch(case, strategy):
    make, shape = conv_cases()[case]
    torch.manual_seed(0)
    _check(nn.Sequential(make()).eval(), [fl.LoraConfig(rank=2, targets=fl.ALL)] * 2, torch.randn(shape), strategy)


class _Scaled1x1(nn.Conv2d):
    """A 1×1 convolution whose forward does more than convolve (its weight doubled)."""

    def forward(self, x):
        return self._conv_forward(x, 2 * self.weight, self.bias)


class _Padded1x1(StaticSamePadConv2d):
    """EfficientNet's 1×1 convolution: a subclass whose forward pads (by nothing) first."""


def test_pointwise_convolutions_plain_padded_and_one_that_does_more():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 1), nn.ReLU(), _Padded1x1(6, 6, 1), nn.ReLU(), _Scaled1x1(6, 5, 1),
                          nn.Conv2d(5, 5, 3, padding=1, groups=5), nn.BatchNorm2d(5), nn.Flatten(),
                          nn.Linear(5 * 16, 3)).eval()
    cfgs = [fl.LoraConfig(rank=r, targets=fl.ALL) for r in (1, 3, 2)]  # padded to 3
    how = {"0": "fused", "2": "fused", "4": "fused"}  # the low-rank path; the depthwise conv: "weight"
    assert fl.plan(model, cfgs[1], how) == {**how, "5": "weight", "8": "activation"}
    _check(model, cfgs, torch.randn(2, 4, 4, 4), strategy=how)
    shell = dict(stacked_apply(model, cfgs[1], how).shell.named_modules())
    pointwise = {name: shell[name].forward.keywords["pointwise"] for name in ("0", "2", "4")}
    assert pointwise == {"0": True, "2": True, "4": False}


def test_a_fresh_adapter_gives_exactly_the_base():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8 * 4, 2))
    cfg = fl.LoraConfig(rank=2, targets=fl.ALL)
    base, x = fl.freeze(model), torch.randn(3, 3, 4, 4)
    stacked = fl.stack([fl.init_lora(model, cfg, seed=s) for s in range(2)])
    out = stacked_apply(model, cfg, {"0": "fused"})(base, stacked, torch.cat([x, x]))
    assert torch.equal(out, torch.cat([model(x), model(x)]))


def test_bad_inputs_are_named():
    model = nn.Sequential(nn.Linear(4, 3))
    cfg = fl.LoraConfig(rank=2)
    g, base = stacked_apply(model, cfg), fl.freeze(model)
    stacked = fl.stack([fl.init_lora(model, cfg, seed=s) for s in range(2)])
    with pytest.raises(ValueError, match="not a multiple of the 2 stacked adapters"):
        g(base, stacked, torch.randn(3, 4))
    with pytest.raises(ValueError, match="layer '0': stacked adapter shapes"):
        g(base, fl.init_lora(model, cfg), torch.randn(4, 4))  # one adapter, not stacked
    with pytest.raises(ValueError, match="adapter layers do not match"):
        g(base, {}, torch.randn(4, 4))


def test_reads_input_first():
    cfg = fl.LoraConfig(rank=2, targets=fl.ALL)
    x = torch.randn(2, 3, 4, 4)
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), nn.Flatten())
    frozen_first = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1))
    for model, first in ((nested, True), (frozen_first, False)):
        cfg_ = fl.LoraConfig(rank=2, targets=("1",)) if model is frozen_first else cfg
        assert reads_input_first(stacked_apply(model, cfg_), fl.freeze(model), x) is first

    class Scaled(nn.Module):  # the adapted layer sees a computed tensor, not x
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x * 2)

    model = Scaled()
    assert not reads_input_first(stacked_apply(model, cfg), fl.freeze(model), x)

    class NeedsTwo(Scaled):  # cannot run one example alone: no claim (fit_many then takes vmap's path)
        def forward(self, x):
            if x.shape[0] < 2:
                raise ValueError("give me two")
            return self.conv(x)

    model = NeedsTwo()
    assert not reads_input_first(stacked_apply(model, cfg), fl.freeze(model), x)
