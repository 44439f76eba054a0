"""f(base, lora, x): the adapted model as a pure function.

The algebra, as properties over drawn Linear and Conv2d layers (every padding form and mode, stride,
dilation, groups, depthwise, and a subclass that pads inside its own forward):
  (a) running with the adapter equals running the explicitly merged weights W + s * B @ A;
  (b) a fresh adapter (B = 0) reproduces the base output exactly;
  (c) torch.func.grad gives gradients shaped like the adapter that match autograd through an
      explicit merge, and leaves the base bitwise unchanged;
and (a)-(c) hold for each of the strategies a layer can take (`fl.STRATEGIES`, chosen by `fl.plan`).
"""
import copy
import inspect

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, grad_and_value

import funclora as fl
from layers import StaticSamePadConv2d, layers


def _adapted(layer, rank, seed, alpha=None):
    """A model around `layer`, its config, and an adapter with non-zero B (as after training)."""
    model = nn.Sequential(layer).eval()
    cfg = fl.LoraConfig(rank=rank, alpha=alpha)
    lora = fl.init_lora(model, cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    lora = {n: {"A": ab["A"], "B": torch.randn(ab["B"].shape, generator=g)} for n, ab in lora.items()}
    return model, cfg, lora


@given(layers(), st.integers(1, 6), st.integers(0, 2**16), st.sampled_from([None, 1.0, 3.0]))
def test_adapter_equals_explicitly_merged_weights(case, rank, seed, alpha):
    layer, x = case
    model, cfg, lora = _adapted(layer, rank, seed, alpha)
    base, f = fl.freeze(model), fl.functional(model, cfg)
    a, b = lora["0"]["A"], lora["0"]["B"]
    by_hand = layer.weight + cfg.scale_for("0") * (b.flatten(1) @ a.flatten(1)).reshape(layer.weight.shape)
    merged = fl.merge(base, lora, cfg)
    torch.testing.assert_close(merged["0.weight"], by_hand, rtol=0, atol=0)
    torch.testing.assert_close(f(base, lora, x), f(merged, None, x), rtol=1e-4, atol=1e-4)


@given(layers(), st.integers(1, 6), st.integers(0, 2**16), st.sampled_from(["gaussian", "kaiming"]))
def test_fresh_adapter_reproduces_the_base_exactly(case, rank, seed, init):
    layer, x = case
    model = nn.Sequential(layer).eval()
    cfg = fl.LoraConfig(rank=rank, init=init)
    base, f = fl.freeze(model), fl.functional(model, cfg)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(f(base, fl.init_lora(model, cfg, seed=seed), x), expected)
    assert torch.equal(f(base, None, x), expected)


@given(layers(), st.integers(1, 4), st.integers(0, 2**16))
def test_grad_matches_autograd_through_an_explicit_merge(case, rank, seed):
    layer, x = case
    model, cfg, lora = _adapted(layer, rank, seed)
    base, f = fl.freeze(model), fl.functional(model, cfg)
    before = {k: v.clone() for k, v in base.items()}

    grads, loss = grad_and_value(lambda l: f(base, l, x).square().mean())(lora)

    a, b = (lora["0"][k].clone().requires_grad_() for k in "AB")
    weight = base["0.weight"] + cfg.scale_for("0") * (b.flatten(1) @ a.flatten(1)).reshape(base["0.weight"].shape)
    reference = functional_call(model, {**base, "0.weight": weight}, (x,)).square().mean()
    ga, gb = torch.autograd.grad(reference, (a, b))

    assert {n: {k: t.shape for k, t in d.items()} for n, d in grads.items()} == \
        {n: {k: t.shape for k, t in d.items()} for n, d in lora.items()}
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads["0"]["A"], ga, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(grads["0"]["B"], gb, rtol=1e-3, atol=1e-5)
    assert all(torch.equal(before[k], base[k]) for k in base)


@given(layers(), st.integers(1, 4), st.integers(0, 2**16), st.sampled_from(fl.STRATEGIES))
def test_every_strategy_computes_the_merged_function(case, rank, seed, strategy):
    layer, x = case
    assume(strategy != "fused" or isinstance(layer, nn.Conv2d))
    model, cfg, lora = _adapted(layer, rank, seed)
    base = fl.freeze(model)
    merged = fl.functional(model, cfg)(fl.merge(base, lora, cfg), None, x)
    by_strategy = fl.functional(model, cfg, strategy=strategy)(base, lora, x)
    torch.testing.assert_close(by_strategy, merged, rtol=1e-4, atol=1e-4)


def _vgg_like():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5)).eval()


def test_the_callers_model_is_never_modified():
    model = _vgg_like()
    x = torch.randn(2, 3, 16, 16)
    types = [type(m) for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        out = model(x)
    cfg = fl.LoraConfig(rank=2)
    f, base, lora = fl.functional(model, cfg), fl.freeze(model), fl.init_lora(model, cfg)
    f(base, lora, x)
    grad(lambda l: f(base, l, x).sum())(lora)
    assert [type(m) for m in model.modules()] == types
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), out)


def test_building_f_copies_no_weights():
    model = _vgg_like()
    f = fl.functional(model, fl.LoraConfig(rank=2))
    # f closes over a module tree of its own, whose tensors are the model's own storage.
    trees = [v for v in inspect.getclosurevars(f).nonlocals.values() if isinstance(v, nn.Module)]
    own = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert trees, "f should close over its module tree"
    for module in trees:
        assert {t.data_ptr() for t in [*module.parameters(), *module.buffers()]} <= own


def test_training_steps_leave_the_base_bitwise_unchanged():
    model = _vgg_like()
    cfg = fl.LoraConfig(rank=2, targets=("8", "11", "4"))
    f, base, lora = fl.functional(model, cfg), fl.freeze(model), fl.init_lora(model, cfg)
    snapshot = {k: v.clone() for k, v in base.items()}
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    opt = fl.adam(1e-2)
    state = opt.init(lora)
    loss = lambda l: nn.functional.cross_entropy(f(base, l, x), y)  # noqa: E731
    first = loss(lora)
    for _ in range(5):
        grads = grad(loss)(lora)
        updates, state = opt.update(grads, state, lora)
        lora = fl.apply_updates(lora, updates)
    assert loss(lora) < first
    assert all(torch.equal(snapshot[k], base[k]) for k in base)


def test_f_refuses_an_adapter_for_other_layers():
    model = _vgg_like()
    cfg = fl.LoraConfig(rank=2, targets=("11",))
    f = fl.functional(model, cfg)
    other = fl.init_lora(model, fl.LoraConfig(rank=2, targets=("8",)))
    with pytest.raises(ValueError, match="do not match the targets"):
        f(fl.freeze(model), other, torch.randn(1, 3, 16, 16))


def test_dropout_applies_on_the_lora_path_only_in_train_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32))
    cfg = fl.LoraConfig(rank=4, dropout=0.5)
    lora = {"0": {"A": torch.randn(4, 32), "B": torch.randn(32, 4)}}
    x = torch.randn(8, 32)
    train_f = fl.functional(model.train(), cfg)
    eval_f = fl.functional(model.eval(), cfg)
    base = fl.freeze(model)
    assert not torch.equal(train_f(base, lora, x), train_f(base, lora, x))
    assert torch.equal(eval_f(base, lora, x), eval_f(base, lora, x))
    with pytest.raises(ValueError, match="dropout"):
        fl.functional(model, cfg, strategy="weight")


# The three properties, for every strategy that applies to the drawn layer ("fused": Conv2d only).
@given(layers(), st.integers(1, 4), st.integers(0, 2**16), st.sampled_from(fl.STRATEGIES))
def test_every_strategy_is_exact_at_zero_and_matches_autograd_through_a_merge(case, rank, seed, strategy):
    layer, x = case
    assume(strategy != "fused" or isinstance(layer, nn.Conv2d))
    model, cfg, lora = _adapted(layer, rank, seed)
    base, f = fl.freeze(model), fl.functional(model, cfg, strategy=strategy)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(f(base, fl.init_lora(model, cfg, seed=seed), x), expected)  # B = 0: bit for bit
    xg = x.clone()
    grads, loss = grad_and_value(lambda l, xx: f(base, l, xx).square().mean(), argnums=(0, 1))(lora, xg)
    a, b = (lora["0"][k].clone().requires_grad_() for k in "AB")
    xr = x.clone().requires_grad_()
    weight = base["0.weight"] + cfg.scale_for("0") * (b.flatten(1) @ a.flatten(1)).reshape(base["0.weight"].shape)
    reference = functional_call(model, {**base, "0.weight": weight}, (xr,)).square().mean()
    ga, gb, gx = torch.autograd.grad(reference, (a, b, xr))
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0]["0"]["A"], ga, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(grads[0]["0"]["B"], gb, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(grads[1], gx, rtol=1e-3, atol=1e-5)  # the input's gradient too


def test_plan_takes_the_low_rank_path_where_it_costs_less_than_a_full_weight_gradient():
    model = nn.Sequential(nn.Conv2d(64, 64, 3), nn.Conv2d(64, 64, 3, groups=64), StaticSamePadConv2d(64, 64, 3),
                          nn.Conv2d(3, 64, 3), nn.Flatten(), nn.Linear(8, 8))
    cfg = fl.LoraConfig(rank=8)
    assert fl.plan(model, cfg) == {"0": "fused", "1": "weight", "2": "fused", "3": "weight", "5": "activation"}
    assert set(fl.plan(model, fl.LoraConfig(rank=8, dropout=0.1)).values()) == {"activation"}
    assert fl.plan(model, cfg, {"0": "weight"})["0"] == "weight"
    with pytest.raises(ValueError, match="layer '5'.*Conv2d"):
        fl.plan(model, cfg, {"5": "fused"})
    with pytest.raises(ValueError, match="layer '0'.*unknown strategy 'fast'"):
        fl.plan(model, cfg, "fast")


def test_per_example_gradients_under_vmap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), StaticSamePadConv2d(16, 16, 3, groups=2),
                          nn.Flatten(), nn.Linear(16 * 25, 3)).eval()
    cfg = fl.LoraConfig(rank=2)
    base = fl.freeze(model)
    lora = {n: {"A": ab["A"], "B": 0.1 * torch.randn(ab["B"].shape)} for n, ab in fl.init_lora(model, cfg).items()}
    x, y = torch.randn(3, 3, 5, 5), torch.tensor([0, 1, 2])
    f = fl.functional(model, cfg, strategy={"0": "fused", "2": "fused"})
    loss = lambda l, xi, yi: nn.functional.cross_entropy(f(base, l, xi[None]), yi[None])  # noqa: E731
    per = torch.func.vmap(grad(loss), in_dims=(None, 0, 0))(lora, x, y)
    for i in range(3):
        one = grad(loss)(lora, x[i], y[i])
        for n in lora:
            torch.testing.assert_close(per[n]["A"][i], one[n]["A"], rtol=1e-4, atol=1e-6)


def test_torch_compile_gives_the_eager_gradients():
    # An adapted layer before a fused one, so that the fused layer's input needs a gradient too
    # (torch.compile once reported its A and B as not needing one).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Flatten(), nn.Linear(8 * 16, 3)).eval()
    cfg = fl.LoraConfig(rank=2)
    base, f = fl.freeze(model), fl.functional(model, cfg, strategy={"0": "fused", "2": "fused"})
    lora = {n: {"A": ab["A"], "B": 0.1 * torch.randn(ab["B"].shape)} for n, ab in fl.init_lora(model, cfg).items()}
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    g = grad(lambda l: nn.functional.cross_entropy(f(base, l, x), y))
    eager, compiled = g(lora), torch.compile(g, backend="aot_eager")(lora)
    for n in lora:
        for k in "AB":
            torch.testing.assert_close(compiled[n][k], eager[n][k], rtol=1e-5, atol=1e-6)
