"""funclora.conv: the fused low-rank convolution, branch by branch.

Each named case (tests/layers.py: conv_cases) is one branch of the kernels: "same" padding with its
odd remainder on each side, "valid", stride and dilation, grouped and depthwise, every padding mode,
and the Conv2d subclass that pads in its own forward (the pass-through "tap" path). Every case runs
on every test run, in float64 against autograd through an explicit merge, with a scale that is not 1:
a dropped or misplaced scale, or padding on the wrong side, fails here.
"""
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

import funclora as fl
from funclora.conv import LowRankConv, channels_last, conv_spec, low_rank_conv_grads, merged_weight
from layers import conv_cases

CASES = conv_cases()
CONFIGS = {"alpha": fl.LoraConfig(rank=2, alpha=7.0), "rslora": fl.LoraConfig(rank=3, alpha=5.0, use_rslora=True)}


def _case(name, cfg, dtype=torch.float64, seed=0):
    """model (the layer alone, eval), base, a trained adapter, input; all in `dtype`."""
    torch.manual_seed(seed)
    make, shape = CASES[name]
    model = nn.Sequential(make()).to(dtype).eval()
    lora = {n: {"A": ab["A"], "B": torch.randn(ab["B"].shape, dtype=dtype)}
            for n, ab in fl.init_lora(model, cfg, seed=seed).items()}
    return model, fl.freeze(model), lora, torch.randn(shape, dtype=dtype)


def _merged_by_hand(base, lora, cfg, w=None):
    a, b = lora["0"]["A"], lora["0"]["B"]
    w = base["0.weight"] if w is None else w
    return w + cfg.scale_for("0") * (b.flatten(1) @ a.flatten(1)).reshape(w.shape)


def _reference(model, base, lora, cfg, x, wanted=("A", "B", "x")):
    """Loss and gradients by plain autograd through the layer's own forward on W + s B @ A."""
    a, b = (lora["0"][k].clone().requires_grad_() for k in "AB")
    xr = x.clone().requires_grad_()
    out = functional_call(model, {**base, "0.weight": _merged_by_hand(base, {"0": {"A": a, "B": b}}, cfg)}, (xr,))
    loss = (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum()
    return loss, dict(zip(wanted, torch.autograd.grad(loss, [{"A": a, "B": b, "x": xr}[k] for k in wanted])))


def _loss(f):
    def loss(base, lora, x):
        out = f(base, lora, x)
        return (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum()
    return loss


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", CASES)
def test_fused_gradients_match_autograd_through_the_merge(name, config):
    cfg = CONFIGS[config]
    model, base, lora, x = _case(name, cfg)
    f = fl.functional(model, cfg, strategy="fused")
    g_lora, g_x = grad(_loss(f), argnums=(1, 2))(base, lora, x)
    loss, ref = _reference(model, base, lora, cfg, x)
    torch.testing.assert_close(_loss(f)(base, lora, x), loss.detach(), rtol=1e-10, atol=1e-10)
    for k in "AB":
        torch.testing.assert_close(g_lora["0"][k], ref[k], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g_x, ref["x"], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", CASES)
def test_fused_layer_without_an_adapter_is_the_layer_itself(name):
    model, base, lora, x = _case(name, CONFIGS["alpha"])
    f = fl.functional(model, CONFIGS["alpha"], strategy="fused")
    with torch.no_grad():
        assert torch.equal(f(base, None, x), model(x))
        fresh = fl.init_lora(model, CONFIGS["alpha"])
        assert torch.equal(f(base, fresh, x), model(x))  # B = 0: W + s (0 @ A) is W, bit for bit


@pytest.mark.parametrize("name", ["plain", "same-remainder-bottom", "grouped", "reflect", "subclass-tap"])
def test_the_base_weight_and_bias_may_be_differentiated_too(name):
    # Full fine-tuning plus an adapter: W's own gradient, and A's and B's taken from it.
    cfg = CONFIGS["alpha"]
    model, base, lora, x = _case(name, cfg)
    f = fl.functional(model, cfg, strategy="fused")
    trainable = {"0.weight": base["0.weight"], "0.bias": base["0.bias"]}

    def loss(trainable, lora):
        return _loss(f)(fl.FrozenParams({**base, **trainable}), lora, x)

    g_base, g_lora = grad(loss, argnums=(0, 1))(trainable, lora)
    w, bias = (t.clone().requires_grad_() for t in trainable.values())
    a, b = (lora["0"][k].clone().requires_grad_() for k in "AB")
    out = functional_call(model, {**base, "0.weight": _merged_by_hand(base, {"0": {"A": a, "B": b}}, cfg, w),
                                  "0.bias": bias}, (x,))
    reference = (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum()
    gw, gbias, ga, gb = torch.autograd.grad(reference, (w, bias, a, b))
    for got, want in [(g_base["0.weight"], gw), (g_base["0.bias"], gbias), (g_lora["0"]["A"], ga),
                      (g_lora["0"]["B"], gb)]:
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["plain", "same-remainder-right", "grouped", "circular", "subclass-tap"])
def test_channels_last_model_and_input(name):
    cfg = CONFIGS["rslora"]
    model, base, lora, x = _case(name, cfg)
    model = model.to(memory_format=torch.channels_last)
    base, x = fl.freeze(model), x.contiguous(memory_format=torch.channels_last)
    assert channels_last(base["0.weight"]) and channels_last(x)
    f = fl.functional(model, cfg, strategy="fused")
    g_lora, g_x = grad(_loss(f), argnums=(1, 2))(base, lora, x)
    loss, ref = _reference(model, base, lora, cfg, x)
    for k in "AB":
        torch.testing.assert_close(g_lora["0"][k], ref[k], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g_x, ref["x"], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["plain", "same-remainder-bottom", "grouped", "subclass-tap"])
def test_bfloat16(name):
    cfg = CONFIGS["alpha"]
    model, base, lora, x = _case(name, cfg, dtype=torch.bfloat16)
    f = fl.functional(model, cfg, strategy="fused")
    g_lora = grad(_loss(f), argnums=1)(base, lora, x)
    assert all(g.dtype == torch.bfloat16 for g in g_lora["0"].values())
    # The float64 reference on the same (bfloat16-representable) numbers: bfloat16 has ~3 digits.
    model64 = model.to(torch.float64)
    lora64 = {"0": {k: v.double() for k, v in lora["0"].items()}}
    _, ref = _reference(model64, fl.freeze(model64), lora64, cfg, x.double(), wanted=("A", "B"))
    for k in "AB":
        scale = ref[k].abs().max()
        torch.testing.assert_close(g_lora["0"][k].double() / scale, ref[k] / scale, rtol=0, atol=0.05)


def test_conv_spec_writes_the_layers_padding_as_explicit_ints():
    spec = lambda *a, **k: conv_spec(nn.Conv2d(1, 1, *a, **k))  # noqa: E731
    assert spec(3, padding="same") == (None, (1, 1), (1, 1), (1, 1), 1)
    assert spec((2, 3), padding="same") == (((0, 0, 0, 1), "constant"), (1, 1), (0, 1), (1, 1), 1)
    assert spec((3, 4), padding="same", dilation=(1, 1)) == (((0, 1, 0, 0), "constant"), (1, 1), (1, 1), (1, 1), 1)
    assert spec((2, 2), padding="same", dilation=(3, 2)) == (((0, 0, 0, 1), "constant"), (1, 1), (1, 1), (3, 2), 1)
    assert spec(3, padding="valid", stride=2) == (None, (2, 2), (0, 0), (1, 1), 1)
    assert spec((3, 1), padding=(2, 1), padding_mode="reflect") == (((1, 1, 2, 2), "reflect"), (1, 1), (0, 0), (1, 1), 1)
    assert conv_spec(nn.Conv2d(4, 6, 3, groups=2, dilation=2, stride=(1, 3))) == (None, (1, 3), (0, 0), (2, 2), 2)


@pytest.mark.parametrize("layout", ["contiguous", "channels-last"])
def test_merged_weight_is_w_plus_scaled_b_a_in_ws_own_layout(layout):
    torch.manual_seed(0)
    w, a, b = torch.randn(6, 4, 3, 2, dtype=torch.float64), torch.randn(2, 4, 3, 2, dtype=torch.float64), \
        torch.randn(6, 2, 1, 1, dtype=torch.float64)
    if layout == "channels-last":
        w = w.contiguous(memory_format=torch.channels_last)
    merged = merged_weight(w, a, b, 2.5)
    torch.testing.assert_close(merged, w + 2.5 * (b.flatten(1) @ a.flatten(1)).view_as(w), rtol=1e-12, atol=1e-12)
    assert channels_last(merged) == (layout == "channels-last")
    assert torch.equal(merged_weight(w, a, torch.zeros_like(b), 2.5), w)


@pytest.mark.parametrize("name", ["plain", "same-odd-kernel", "grouped", "depthwise"])
@pytest.mark.parametrize("needs", ["x", "w", "bias", "a", "b", "x+a", "w+b"])
def test_only_the_gradients_asked_for_are_computed_and_each_is_right(name, needs):
    # LowRankConv directly, each input requiring grad alone or in pairs: every branch of its backward.
    torch.manual_seed(1)
    layer = CASES[name][0]().double()
    pad, *conv = conv_spec(layer)
    assert pad is None
    x = torch.randn(CASES[name][1], dtype=torch.float64)
    w, bias = layer.weight.detach().clone(), torch.randn(layer.out_channels, dtype=torch.float64)
    r = 3
    a = torch.randn(r, *w.shape[1:], dtype=torch.float64)
    b = torch.randn(w.shape[0], r, 1, 1, dtype=torch.float64)
    inputs = {"x": x, "w": w, "bias": bias, "a": a, "b": b}
    for k in needs.split("+"):
        inputs[k].requires_grad_()
    out = LowRankConv.apply(x, w, bias, a, b, 1.7, tuple(conv))
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [inputs[k] for k in needs.split("+")], g)
    ref_inputs = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    xi, wi, bi, ai, bbi = (ref_inputs[k] for k in ["x", "w", "bias", "a", "b"])
    ref_out = nn.functional.conv2d(xi, wi + 1.7 * (bbi.flatten(1) @ ai.flatten(1)).view_as(wi), bi, *conv)
    torch.testing.assert_close(out, ref_out.detach(), rtol=1e-12, atol=1e-12)
    want = torch.autograd.grad(ref_out, [ref_inputs[k] for k in needs.split("+")], g)
    for got_one, want_one in zip(got, want):
        torch.testing.assert_close(got_one, want_one, rtol=1e-10, atol=1e-10)
    grads = low_rank_conv_grads(g, x, w, a, b, 1.7, tuple(conv), tuple(k in needs.split("+") for k in inputs))
    assert [k for k, t in zip(inputs, grads) if t is not None] == needs.split("+")
