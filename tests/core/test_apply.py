"""f(base, lora, x): the adapted model as a pure function.

The algebra, as properties over drawn Linear and Conv2d layers (every padding form and mode, stride,
dilation, groups, depthwise, and a subclass that pads inside its own forward), drawn configs whose
scale is rarely 1 (alpha != rank, rsLoRA), on every strategy the layer can take (`fl.STRATEGIES`):
  (a) running with the adapter equals running the explicitly merged weights W + s * B @ A;
  (b) a fresh adapter (B = 0) reproduces the base output exactly;
  (c) torch.func.grad gives the gradients of autograd through an explicit merge (A, B and the
      input), and leaves the base bitwise unchanged.
Each branch of the fused convolution is also run by name on every run: tests/core/test_conv.py.

Purity: f never writes to the model or the base, in either mode; the mode is an argument of the
call, not the model's; base and adapter must fit the model and config exactly.
"""
import copy
import inspect

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

import funclora as fl
from helpers import trained
from layers import StaticSamePadConv2d, configs, layers_with_strategy


def _adapted(layer, cfg, seed):
    """A model around `layer` and an adapter with non-zero B (as after training)."""
    model = nn.Sequential(layer).eval()
    lora = fl.init_lora(model, cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    lora = {n: {"A": ab["A"], "B": torch.randn(ab["B"].shape, generator=g)} for n, ab in lora.items()}
    return model, lora


def _by_hand(base, lora, cfg):
    a, b = lora["0"]["A"], lora["0"]["B"]
    w = base["0.weight"]
    return w + cfg.scale_for("0") * (b.flatten(1) @ a.flatten(1)).reshape(w.shape)


# Explicit examples: the branches CI (derandomized) must reach on every run; the rest is drawn.
SAME_EVEN = (nn.Conv2d(3, 4, (2, 3), padding="same"), torch.randn(2, 3, 6, 7), "fused")
STATIC_SAME = (StaticSamePadConv2d(2, 4, 3, stride=2, groups=2), torch.randn(1, 2, 7, 8), "fused")
REFLECT = (nn.Conv2d(3, 6, 3, padding=2, padding_mode="reflect", groups=3), torch.randn(2, 3, 6, 6), "weight")
LINEAR = (nn.Linear(5, 3), torch.randn(2, 4, 5), "activation")
SCALED = fl.LoraConfig(rank=2, alpha=7.0)
RSLORA = fl.LoraConfig(rank=3, alpha=0.5, use_rslora=True)


@given(layers_with_strategy(), configs(), st.integers(0, 2**16))
@example(SAME_EVEN, SCALED, 0).via("the odd remainder of 'same'")
@example(STATIC_SAME, RSLORA, 1).via("the tap path")
@example(REFLECT, SCALED, 2).via("a padding mode")
@example(LINEAR, RSLORA, 3).via("a Linear")
def test_adapter_equals_explicitly_merged_weights(case, cfg, seed):
    layer, x, strategy = case
    model, lora = _adapted(layer, cfg, seed)
    base = fl.freeze(model)
    merged = fl.merge(base, lora, cfg)
    torch.testing.assert_close(merged["0.weight"], _by_hand(base, lora, cfg), rtol=0, atol=0)
    out = fl.functional(model, cfg, strategy=strategy)(base, lora, x)
    with torch.no_grad():
        by_model = functional_call(model, dict(merged), (x,))  # the layer's own forward on W'
    torch.testing.assert_close(out, by_model, rtol=1e-4, atol=1e-4)


@given(layers_with_strategy(), configs(), st.integers(0, 2**16), st.sampled_from(["gaussian", "kaiming"]))
@example(SAME_EVEN, SCALED, 0, "gaussian").via("the odd remainder of 'same'")
@example(STATIC_SAME, RSLORA, 1, "kaiming").via("the tap path")
def test_fresh_adapter_reproduces_the_base_exactly(case, cfg, seed, init):
    layer, x, strategy = case
    model = nn.Sequential(layer).eval()
    cfg = fl.LoraConfig(rank=cfg.rank, alpha=cfg.alpha, use_rslora=cfg.use_rslora, init=init)
    base, f = fl.freeze(model), fl.functional(model, cfg, strategy=strategy)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(f(base, fl.init_lora(model, cfg, seed=seed), x), expected)
    assert torch.equal(f(base, None, x), expected)


@given(layers_with_strategy(), configs(max_rank=4), st.integers(0, 2**16))
@example(SAME_EVEN, SCALED, 0).via("the odd remainder of 'same'")
@example(STATIC_SAME, RSLORA, 1).via("the tap path")
@example(REFLECT, SCALED, 2).via("a padding mode")
@example(LINEAR, RSLORA, 3).via("a Linear")
def test_grad_matches_autograd_through_an_explicit_merge(case, cfg, seed):
    layer, x, strategy = case
    model, lora = _adapted(layer, cfg, seed)
    base, f = fl.freeze(model), fl.functional(model, cfg, strategy=strategy)
    before = {k: v.clone() for k, v in base.items()}
    weights = torch.linspace(-1, 2, f(base, None, x).numel()).view_as(f(base, None, x))  # not symmetric in B

    grads, loss = grad_and_value(lambda l, xx: (f(base, l, xx) * weights).sum(), argnums=(0, 1))(lora, x)

    a, b = (lora["0"][k].clone().requires_grad_() for k in "AB")
    xr = x.clone().requires_grad_()
    reference = (functional_call(model, {**base, "0.weight": _by_hand(base, {"0": {"A": a, "B": b}}, cfg)},
                                 (xr,)) * weights).sum()
    ga, gb, gx = torch.autograd.grad(reference, (a, b, xr))
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0]["0"]["A"], ga, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(grads[0]["0"]["B"], gb, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(grads[1], gx, rtol=1e-3, atol=1e-4)
    assert all(torch.equal(before[k], base[k]) for k in base)


def _vgg_like():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5)).eval()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    return state.keys() == model.state_dict().keys() and all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_the_callers_model_is_never_modified():
    model = _vgg_like()
    x = torch.randn(2, 3, 16, 16)
    types = [type(m) for m in model.modules()]
    state = _state(model)
    with torch.no_grad():
        out = model(x)
    cfg = fl.LoraConfig(rank=2)
    f, base, lora = fl.functional(model, cfg), fl.freeze(model), trained(model, cfg)
    f(base, lora, x)
    grad(lambda l: f(base, l, x).sum())(lora)
    assert [type(m) for m in model.modules()] == types
    assert _same_state(model, state)
    assert not any(m._forward_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), out)


@pytest.mark.parametrize("mutable", [False, True])
def test_train_mode_writes_nothing_under_grad_and_vmap(mutable):
    model = _vgg_like().train()
    state = _state(model)
    cfg = fl.LoraConfig(rank=2)
    f, base, lora = fl.functional(model, cfg), fl.freeze(model), trained(model, cfg)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])

    def loss(l, xx, yy):
        out = f(base, l, xx, train=True, seed=0, mutable=mutable)
        out, buffers = out if mutable else (out, {})
        return nn.functional.cross_entropy(out, yy), buffers

    f(base, lora, x, train=True, mutable=mutable)
    grads, buffers = grad(loss, has_aux=True)(lora, x, y)
    assert all(torch.isfinite(g).all() for ab in grads.values() for g in ab.values())
    if not mutable:  # per-example gradients: batch statistics of each example alone
        per = vmap(grad(lambda l, xi, yi: loss(l, xi[None], yi[None])[0]), in_dims=(None, 0, 0),
                   randomness="same")(lora, x, y)
        one = grad(lambda l: loss(l, x[2:3], y[2:3])[0])(lora)
        for n in lora:
            torch.testing.assert_close(per[n]["B"][2], one[n]["B"], rtol=1e-4, atol=1e-6)
    else:
        assert buffers["1.num_batches_tracked"].item() == 1
    assert _same_state(model, state)
    assert all(torch.equal(state[k], v) for k, v in base.items())


@pytest.mark.parametrize("momentum", [0.1, None])
def test_train_mode_normalises_by_the_batch_and_returns_the_statistics_torch_would_keep(momentum):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.Flatten(),
                          nn.Linear(4 * 16, 3)).eval()
    cfg = fl.LoraConfig(rank=2, alpha=4.0)
    base, lora, f = fl.freeze(model), trained(model, cfg), fl.functional(model, cfg)
    x = torch.randn(5, 3, 6, 6)
    twin = copy.deepcopy(model).train()  # what torch itself does, on a copy we may spoil
    with torch.no_grad():
        for _ in range(2):  # twice: momentum=None averages by num_batches_tracked
            expected = functional_call(twin, {**dict(fl.merge(base, lora, cfg)), **dict(twin.named_buffers())}, (x,))
    out, buffers = f(base, lora, x, train=True, mutable=True)
    out, buffers = f(fl.FrozenParams({**base, **buffers}), lora, x, train=True, mutable=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert sorted(buffers) == ["1.num_batches_tracked", "1.running_mean", "1.running_var"]
    for name, value in twin.named_buffers():
        torch.testing.assert_close(buffers[name], value, rtol=1e-6, atol=1e-7)
    assert torch.equal(f(base, lora, x, train=True), out)  # mutable changes what is returned, not out
    with torch.no_grad():  # eval mode: the running statistics, and the buffers handed back as they are
        eval_out, same = f(base, lora, x, mutable=True)
        torch.testing.assert_close(eval_out, functional_call(model, dict(fl.merge(base, lora, cfg)), (x,)))
    assert all(same[k] is base[k] for k in same)


def test_the_mode_is_the_calls_argument_not_the_models():
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5)).train()
    cfg = fl.LoraConfig(rank=2)
    f, base = fl.functional(model, cfg), fl.freeze(model)
    x = torch.randn(4, 16)
    with torch.no_grad():
        clean = model.eval()(x) + 0  # eval mode, by the model itself
    model.train()
    assert torch.equal(f(base, None, x), clean)  # default: eval, though the model is in train mode
    model.eval()  # and the other way round: train=True drops out though the model is in eval mode
    dropped = f(base, None, x, train=True, seed=0)
    assert (dropped == 0).any() and not torch.equal(dropped, clean)


def test_train_modes_randomness_comes_from_the_seed():
    model = nn.Sequential(nn.Linear(32, 32), nn.Dropout(0.3))
    cfg = fl.LoraConfig(rank=4, dropout=0.5)  # and the adapter's own dropout
    f, base, lora = fl.functional(model, cfg), fl.freeze(model), trained(model, cfg)
    x = torch.randn(8, 32)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = f(base, lora, x, train=True, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left as it was
    assert torch.equal(f(base, lora, x, train=True, seed=7), first)
    assert not torch.equal(f(base, lora, x, train=True, seed=8), first)
    # seed=None: torch's global generator, so torch.manual_seed before the step reproduces it
    torch.manual_seed(7)
    unseeded = f(base, lora, x, train=True)
    torch.manual_seed(7)
    assert torch.equal(f(base, lora, x, train=True), unseeded)
    assert not torch.equal(f(base, lora, x, train=True), unseeded)
    assert torch.equal(f(base, lora, x), f(base, lora, x))  # eval: no dropout at all
    for bad in [1.5, "7", True]:
        with pytest.raises(ValueError, match="seed must be an int"):
            f(base, lora, x, train=True, seed=bad)


def test_train_mode_gradient_is_autograd_through_the_merge_with_the_same_masks():
    model = _vgg_like()
    cfg = fl.LoraConfig(rank=2, alpha=3.0)
    base, lora, f = fl.freeze(model), trained(model, cfg), fl.functional(model, cfg)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    grads = grad(lambda l: nn.functional.cross_entropy(f(base, l, x, train=True, seed=3), y))(lora)
    twin = copy.deepcopy(model).train()
    merged = {n: {k: v.clone().requires_grad_() for k, v in ab.items()} for n, ab in lora.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        out = functional_call(twin, {**dict(fl.merge(base, merged, cfg)), **{k: v.clone() for k, v in twin.named_buffers()}},
                              (x,))
    reference = torch.autograd.grad(nn.functional.cross_entropy(out, y), [merged[n][k] for n in lora for k in "AB"])
    for got, want in zip([grads[n][k] for n in lora for k in "AB"], reference):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_a_base_that_does_not_fit_the_model_is_refused_by_name():
    model = _vgg_like()
    cfg = fl.LoraConfig(rank=2)
    f, base, x = fl.functional(model, cfg), fl.freeze(model), torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="base has no tensor '0.bias'"):
        f({}, None, x)
    with pytest.raises(ValueError, match="base has no tensor '1.running_mean'"):
        f({k: v for k, v in base.items() if k != "1.running_mean"}, None, x)
    with pytest.raises(ValueError, match="base has a tensor '8.extra'"):
        f(fl.FrozenParams({**base, "8.extra": torch.zeros(1)}), trained(model, cfg), x)
    with pytest.raises(ValueError, match="base has a tensor '0.lora_A'"):  # the adapter goes in lora
        f({**base, "0.lora_A": torch.zeros(2, 3, 3, 3)}, None, x)


def test_an_adapter_that_contradicts_the_config_is_refused_by_layer():
    model = _vgg_like()
    cfg = fl.LoraConfig(rank=2)
    f, base, x = fl.functional(model, cfg), fl.freeze(model), torch.randn(1, 3, 16, 16)
    lora = trained(model, cfg)
    rank4 = trained(model, fl.LoraConfig(rank=4))
    with pytest.raises(ValueError, match="layer '0'.*rank 2"):
        f(base, rank4, x)
    with pytest.raises(ValueError, match="layer '8'.*contradict"):
        f(base, {**lora, "8": {"A": lora["8"]["A"], "B": lora["11"]["B"]}}, x)
    with pytest.raises(ValueError, match="layer '4'"):
        f(base, {**lora, "4": {"A": lora["4"]["A"]}}, x)
    other = fl.init_lora(model, fl.LoraConfig(rank=2, targets=("8",)))
    with pytest.raises(ValueError, match=r"do not match the targets.*missing \['0', '11', '4'\]"):
        f(base, other, x)
    with pytest.raises(ValueError, match=r"not targeted \['8'\]"):
        fl.functional(model, fl.LoraConfig(rank=2, targets=("0",)))(base, fl.init_lora(model, fl.LoraConfig(rank=2, targets=("0", "8"))), x)
    with pytest.raises(ValueError, match="do not match the targets"):
        f(base, {}, x)  # no adapter is None, not an empty one


def test_building_f_copies_no_weights():
    model = _vgg_like()
    f = fl.functional(model, fl.LoraConfig(rank=2))
    # f closes over module trees of its own (one per mode), whose tensors are the model's own storage.
    shells = inspect.getclosurevars(f).nonlocals["shells"]
    assert sorted(shells) == ["eval", "train", "train+stats"]
    own = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    for mode, module in shells.items():
        assert module.training == (mode != "eval")
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


def test_adapter_dropout_applies_on_the_lora_path_only_in_train_mode():
    model = nn.Sequential(nn.Linear(32, 32))
    cfg = fl.LoraConfig(rank=4, alpha=2.0, dropout=0.5)
    lora = trained(model, cfg)
    lora["0"]["B"] = lora["0"]["B"] * 10
    x = torch.randn(8, 32)
    f, base = fl.functional(model, cfg), fl.freeze(model)
    with torch.no_grad():
        clean = model(x) + cfg.scale_for("0") * (x @ lora["0"]["A"].t() @ lora["0"]["B"].t())
        base_only = model(x)
    torch.testing.assert_close(f(base, lora, x), clean)
    dropped = f(base, lora, x, train=True, seed=0)
    assert not torch.allclose(dropped, clean)
    assert torch.equal(f(base, None, x, train=True, seed=0), base_only)  # the model has no dropout of its own
    with pytest.raises(ValueError, match="dropout"):
        fl.functional(model, cfg, strategy="weight")


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


def test_plan_sits_exactly_at_the_cost_threshold():
    # out=in=c, k=1, r: low rank 2rc + 2cr = 4rc against c*c: fused iff 4r <= FUSED_MAX_COST * c = c / 2
    cfg = fl.LoraConfig(rank=2)
    assert fl.plan(nn.Sequential(nn.Conv2d(16, 16, 1)), cfg) == {"0": "fused"}      # 4*2*16 = 128 = 0.5 * 256
    assert fl.plan(nn.Sequential(nn.Conv2d(15, 15, 1)), cfg) == {"0": "weight"}     # 120 > 112.5
    # groups divide the full gradient, not the low-rank one: (in/groups) * out * k
    assert fl.plan(nn.Sequential(nn.Conv2d(32, 32, 1, groups=2)), cfg) == {"0": "fused"}   # 256 <= 256
    assert fl.plan(nn.Sequential(nn.Conv2d(32, 32, 1, groups=4)), cfg) == {"0": "weight"}
    # the kernel area weighs A's side: 2*r*in*k + 2*out*r against out*in*k
    assert fl.plan(nn.Sequential(nn.Conv2d(9, 12, 3)), cfg) == {"0": "fused"}      # 324 + 48 <= 486
    assert fl.plan(nn.Sequential(nn.Conv2d(12, 8, 3)), cfg) == {"0": "weight"}     # 432 + 32 > 432


def test_a_strategy_for_a_layer_that_is_not_a_target_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2))
    cfg = fl.LoraConfig(rank=2, targets=("2",))
    for build in (fl.plan, lambda m, c, s: fl.functional(m, c, strategy=s)):
        with pytest.raises(ValueError, match="strategy names layer '0', which is not a target"):
            build(model, cfg, {"0": "fused"})
        with pytest.raises(ValueError, match="layer '9'"):
            build(model, cfg, {"2": "weight", "9": "weight"})


def test_per_example_gradients_under_vmap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), StaticSamePadConv2d(16, 16, 3, groups=2),
                          nn.Flatten(), nn.Linear(16 * 25, 3)).eval()
    cfg = fl.LoraConfig(rank=2, alpha=5.0)
    base = fl.freeze(model)
    lora = trained(model, cfg)
    x, y = torch.randn(3, 3, 5, 5), torch.tensor([0, 1, 2])
    f = fl.functional(model, cfg, strategy={"0": "fused", "2": "fused"})
    loss = lambda l, xi, yi: nn.functional.cross_entropy(f(base, l, xi[None]), yi[None])  # noqa: E731
    per = torch.func.vmap(grad(loss), in_dims=(None, 0, 0))(lora, x, y)
    for i in range(3):
        one = grad(loss)(lora, x[i], y[i])
        for n in lora:
            for k in "AB":
                torch.testing.assert_close(per[n][k][i], one[n][k], rtol=1e-4, atol=1e-6)


def test_torch_compile_gives_the_eager_gradients():
    # An adapted layer before a fused one, so that the fused layer's input needs a gradient too
    # (torch.compile once reported its A and B as not needing one).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Flatten(), nn.Linear(8 * 16, 3)).eval()
    cfg = fl.LoraConfig(rank=2, alpha=3.0)
    base, f = fl.freeze(model), fl.functional(model, cfg, strategy={"0": "fused", "2": "fused"})
    lora = trained(model, cfg)
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    g = grad(lambda l: nn.functional.cross_entropy(f(base, l, x), y))
    eager, compiled = g(lora), torch.compile(g, backend="aot_eager")(lora)
    for n in lora:
        for k in "AB":
            torch.testing.assert_close(compiled[n][k], eager[n][k], rtol=1e-5, atol=1e-6)
