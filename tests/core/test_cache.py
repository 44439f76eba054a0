"""split(model, cfg): the frozen prefix runs once, and suffix(base, lora, prefix(base, x)) is f(base, lora, x).

The split is read off the model's own graph (torch.fx), so it is right for nets that are not a
simple chain: side branches that no adapter reaches are cached even when they rejoin after one.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad

import funclora as fl
from helpers import check_split, trained
from funclora.train import fit


def _vgg_like():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 16), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(16, 5)).eval()


class Branchy(nn.Module):
    """A stem, then an adapted branch beside a frozen one (a residual with a conv on the skip), joined,
    then a head. The frozen skip branch rejoins after the adapter: the split is not a prefix of layers."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1))
        self.skip = nn.Conv2d(6, 6, 1)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        a = F.relu(self.stem(x))
        joined = self.body(a) + self.skip(a).sigmoid()
        return self.head(joined.mean((2, 3)))


class AddsInPlace(nn.Module):
    """A residual written as `skip.add_(body(x))`: the in-place add lands on a cached feature."""

    def __init__(self):
        super().__init__()
        self.skip, self.body, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x):
        skip = self.skip(x)
        skip.add_(self.body(x))
        return self.head(F.relu(skip, inplace=True).mean((2, 3)))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.fc(x)


def test_head_only_caches_the_whole_backbone_and_the_first_layers_frozen_output():
    model, x = _vgg_like(), torch.randn(3, 3, 16, 16)
    cfg = fl.LoraConfig(rank=2, targets=("8", "11"))
    feats = check_split(model, cfg, x)
    # The flattened features (all the convs ran once) and layer 8's frozen output W x + b.
    assert [tuple(t.shape) for t in feats] == [(3, 32), (3, 16)]
    torch.testing.assert_close(feats[1], model[8](feats[0]))
    # So the suffix never reads layer 8's frozen weight: only its adapter.
    prefix, suffix = fl.split(model, cfg)
    base = fl.freeze(model)
    poisoned = fl.FrozenParams({**base, "8.weight": torch.full_like(base["8.weight"], float("nan"))})
    assert torch.isfinite(suffix(poisoned, trained(model, cfg), prefix(base, x))).all()


def test_every_layer_adapted_caches_the_input_and_the_first_layers_frozen_output():
    model, x = _vgg_like(), torch.randn(2, 3, 16, 16)
    feats = check_split(model, fl.LoraConfig(rank=2), x)
    assert len(feats) == 2 and torch.equal(feats[0], x)
    torch.testing.assert_close(feats[1], model[0](x))


def test_a_frozen_branch_that_rejoins_after_an_adapter_is_cached():
    model, x = Branchy().eval(), torch.randn(2, 3, 8, 8)
    stem = F.relu(model.stem(x)).detach()
    # Adapt the first conv of the body: its input (the stem), the frozen skip and its own frozen
    # output are the features.
    feats = check_split(model, fl.LoraConfig(rank=2, targets=("body.0",)), x)
    assert len(feats) == 3
    torch.testing.assert_close(feats[0], stem)
    torch.testing.assert_close(feats[1], model.skip(stem).sigmoid().detach())
    torch.testing.assert_close(feats[2], model.body[0](stem).detach())
    # Adapt the skip instead: the whole body ran once and is cached, beside the skip's input.
    feats = check_split(model, fl.LoraConfig(rank=2, targets=("skip",)), x)
    torch.testing.assert_close(feats[1], model.body(stem).detach())


def test_in_place_ops_in_the_suffix_leave_the_cache_alone():
    model, x = AddsInPlace().eval(), torch.randn(2, 3, 6, 6)
    cfg = fl.LoraConfig(rank=2, targets=("body",))
    prefix, suffix = fl.split(model, cfg)
    base, lora = fl.freeze(model), trained(model, cfg)
    feats = prefix(base, x)
    before = [t.clone() for t in feats]
    first = suffix(base, lora, feats)
    torch.testing.assert_close(suffix(base, lora, feats), first)
    assert all(torch.equal(a, b) for a, b in zip(feats, before))
    torch.testing.assert_close(first, fl.functional(model, cfg)(base, lora, x))


def test_gradients_through_the_suffix_are_those_through_f():
    model, x = Branchy().eval(), torch.randn(2, 3, 8, 8)
    cfg = fl.LoraConfig(rank=2, targets=("body.2", "head"))
    prefix, suffix = fl.split(model, cfg)
    base, lora, f = fl.freeze(model), trained(model, cfg), fl.functional(model, cfg)
    feats = prefix(base, x)
    cached = grad(lambda l: suffix(base, l, feats).square().sum())(lora)
    direct = grad(lambda l: f(base, l, x).square().sum())(lora)
    for name in lora:
        for part in "AB":
            torch.testing.assert_close(cached[name][part], direct[name][part], rtol=1e-5, atol=1e-6)


def test_training_on_cached_features_gives_the_same_losses():
    model = _vgg_like()
    cfg = fl.LoraConfig(rank=2, targets=("8", "11"))
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    base, f = fl.freeze(model), fl.functional(model, cfg)
    prefix, suffix = fl.split(model, cfg)
    start = fl.init_lora(model, cfg, seed=1)
    _, uncached = fit(f, base, start, x, y, opt=fl.adam(1e-2), steps=6, progress=False)
    _, cached = fit(suffix, base, start, prefix(base, x), y, opt=fl.adam(1e-2), steps=6, progress=False)
    assert uncached[-1] < uncached[0]
    assert cached == pytest.approx(uncached, rel=1e-5, abs=1e-6)


def test_an_untraceable_model_falls_back_to_no_caching_with_a_notice():
    model = Untraceable().eval()
    cfg = fl.LoraConfig(rank=2)
    with pytest.warns(fl.NoCacheWarning, match="cannot trace Untraceable"):
        prefix, suffix = fl.split(model, cfg)
    x = torch.randn(3, 4)
    base, lora = fl.freeze(model), trained(model, cfg)
    assert prefix(base, x) == (x,)
    torch.testing.assert_close(suffix(base, lora, (x,)), fl.functional(model, cfg)(base, lora, x))


def test_a_split_for_train_mode_caches_nothing_and_its_suffix_is_f_in_train_mode():
    model = _vgg_like()
    cfg = fl.LoraConfig(rank=2, targets=("11",))
    with pytest.warns(fl.NoCacheWarning, match="train mode"):
        prefix, suffix = fl.split(model, cfg, train=True)
    x = torch.randn(2, 3, 16, 16)
    base, lora, f = fl.freeze(model), trained(model, cfg), fl.functional(model, cfg)
    feats = prefix(base, x)
    assert feats[0] is x
    dropped = suffix(base, lora, feats, seed=3)
    assert torch.equal(dropped, f(base, lora, x, train=True, seed=3))
    assert not torch.equal(dropped, f(base, lora, x))
    out, buffers = suffix(base, lora, feats, seed=3, mutable=True)
    assert torch.equal(out, dropped) and buffers["1.num_batches_tracked"].item() == 1


class ReadsItsMode(nn.Module):
    """A forward that branches on self.training: traced as f runs it (eval), whatever the model's mode."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        x = self.stem(x)
        if self.training:
            x = x * 100.0
        return self.head(x.mean((2, 3)))


def test_the_split_runs_in_eval_mode_whatever_the_models_mode():
    model = ReadsItsMode().train()
    cfg = fl.LoraConfig(rank=2, targets=("head",))
    prefix, suffix = fl.split(model, cfg)  # no warning: train mode is an argument, not the model's state
    base, lora, x = fl.freeze(model), trained(model, cfg), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(suffix(base, lora, prefix(base, x)), fl.functional(model, cfg)(base, lora, x))
        assert torch.equal(fl.functional(model, cfg)(base, None, x), model.eval()(x))


@pytest.mark.parametrize("train", [False, True])
def test_prefix_and_suffix_refuse_a_base_that_does_not_fit_the_model(train):
    model = _vgg_like()
    cfg = fl.LoraConfig(rank=2, targets=("8",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fl.NoCacheWarning)
        prefix, suffix = fl.split(model, cfg, train=train)
    base, x = fl.freeze(model), torch.randn(1, 3, 16, 16)
    feats = prefix(base, x)
    partial = {k: v for k, v in base.items() if k != "0.weight"}
    with pytest.raises(ValueError, match="base has no tensor '0.weight'"):
        prefix(partial, x)
    with pytest.raises(ValueError, match="base has no tensor '0.weight'"):
        suffix(partial, None, feats)
    with pytest.raises(ValueError, match="base has a tensor 'extra'"):
        suffix({**base, "extra": torch.zeros(1)}, None, feats)
    with pytest.raises(ValueError, match="layer '8'.*rank 2"):
        suffix(base, trained(model, fl.LoraConfig(rank=3, targets=("8",))), feats)


def test_split_leaves_the_model_alone():
    model = _vgg_like()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prefix, suffix = fl.split(model, fl.LoraConfig(rank=2, targets=("8",)))
    prefix(fl.freeze(model), torch.randn(1, 3, 16, 16))
    assert not any(m._forward_hooks for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
