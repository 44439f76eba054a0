"""Specification of funclora.many: K adapters as one stacked pytree, K training runs as one vmapped step.

  (a) stack / unstack are exact inverses; different ranks pad with zeros and change nothing;
  (b) fit_many's adapter k equals its solo fl.fit run (same data, optimizer, steps), for shared and
      per-adapter data, one optimizer or K, a keep term, cached features, and mixed ranks;
  (c) the frozen base never runs as a per-adapter (K-group) convolution: on all K·N examples at once
      (the stacked pass, funclora.stacked), once where a frozen prefix reads shared data (vmap);
  (d) f(base, stack(loras), x, adapter_index=idx) equals running each example with its own adapter.
"""
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import funclora as fl
from funclora.keep import keep_term
from helpers import trained
from layers import StaticSamePadConv2d

TOL = dict(rtol=1e-5, atol=1e-6)


def _model(seed=0):
    """Every kind of layer the vision backbones have: conv (plain, grouped, self-padding), BN, Linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
        StaticSamePadConv2d(8, 8, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def _data(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _close(a, b, **tol):
    for name in a:
        for t in a[name]:
            torch.testing.assert_close(a[name][t], b[name][t], **(tol or TOL), msg=f"layer {name!r} {t}")


@given(st.integers(1, 4), st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_unstack_inverts_stack_exactly_and_pads_only_with_zeros(k, ranks):
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Conv2d(4, 6, 1))
    loras = [trained(model, fl.LoraConfig(rank=ranks[i % len(ranks)], targets=fl.ALL), seed=i) for i in range(k)]
    stacked = fl.stack(loras)
    top = max(ranks[i % len(ranks)] for i in range(k))
    assert stacked["0"]["A"].shape == (k, top, 5) and stacked["2"]["B"].shape == (k, 6, top, 1, 1)
    for lora, back, padded in zip(loras, fl.unstack(stacked, loras), fl.unstack(stacked)):
        for name in lora:
            r = lora[name]["A"].shape[0]
            assert torch.equal(back[name]["A"], lora[name]["A"]) and torch.equal(back[name]["B"], lora[name]["B"])
            assert not padded[name]["A"][r:].any() and not padded[name]["B"][:, r:].any()


def test_a_padded_adapter_computes_the_same_function():
    model = _model()
    cfg2, cfg4 = fl.LoraConfig(rank=2, targets=fl.ALL), fl.LoraConfig(rank=4, targets=fl.ALL)
    lora = trained(model, cfg2)
    x, _ = _data(1)
    with torch.no_grad():
        torch.testing.assert_close(fl.functional(model, cfg4)(fl.freeze(model), fl.pad_rank(lora, 4), x),
                                   fl.functional(model, cfg2)(fl.freeze(model), lora, x), **TOL)
    with pytest.raises(ValueError, match="cannot pad rank 2 down to 1"):
        fl.pad_rank(lora, 1)


def test_stack_refuses_adapters_of_other_layers():
    model = _model()
    a = fl.init_lora(model, fl.LoraConfig(rank=2, targets=fl.ALL))
    b = fl.init_lora(model, fl.LoraConfig(rank=2, targets=("9",)))
    with pytest.raises(ValueError, match="adapter 1 has layers"):
        fl.stack([a, b])
    with pytest.raises(ValueError, match="at least one"):
        fl.stack([])


@pytest.mark.parametrize("shared", [True, False], ids=["shared data", "own data"])
def test_each_adapter_equals_its_solo_fit(shared):
    model = _model()
    cfg = fl.LoraConfig(rank=2, targets=fl.ALL)
    base, f = fl.freeze(model), fl.functional(model, cfg)
    loras = [fl.init_lora(model, cfg, seed=s) for s in range(3)]
    data = [_data(0)] * 3 if shared else [_data(s) for s in range(3)]
    opts = [fl.adam(3e-2), fl.adamw(1e-2), fl.sgd(0.1, momentum=0.9)]
    xs = data[0][0] if shared else [x for x, _ in data]
    ys = data[0][1] if shared else [y for _, y in data]

    trained_many, histories = fl.fit_many(f, base, loras, xs, ys, opt=opts, steps=6, progress=False)

    for k in range(3):
        solo, losses = fl.fit(f, base, loras[k], *data[k], opt=opts[k], steps=6, progress=False)
        torch.testing.assert_close(histories[k], losses, **TOL)
        _close(trained_many[k], solo)
    assert histories[0] != histories[1]  # they did train apart


def _vmap_only(f):
    """f without its stacked form: fit_many takes the vmap path."""
    def g(*args, **kwargs):
        return f(*args, **kwargs)
    g.vmappable = f.vmappable
    return g


PATHS = pytest.mark.parametrize("path", ["stacked", "vmap"])


@PATHS
def test_one_optimizer_for_all_and_a_keep_term_with_a_weight_per_adapter(path):
    model = _model()
    cfg = fl.LoraConfig(rank=2, targets=fl.ALL)
    base, f = fl.freeze(model), fl.functional(model, cfg)
    run = f if path == "stacked" else _vmap_only(f)
    x, y = _data(0)
    keep = keep_term(f, base, _data(5)[0], weight=1.0)
    loras = [fl.init_lora(model, cfg, seed=s) for s in range(2)]

    out, hist = fl.fit_many(run, base, loras, x, y, opt=fl.adam(5e-2), steps=4, extra=keep,
                            extra_weights=[0.0, 3.0], progress=False, terms=True)

    for k, weight in enumerate([0.0, 3.0]):
        solo, solo_hist = fl.fit(f, base, loras[k], x, y, opt=fl.adam(5e-2), steps=4, progress=False, terms=True,
                                 extra=keep_term(f, base, _data(5)[0], weight=weight))
        _close(out[k], solo)
        for name in ("loss", "train", "extra"):
            torch.testing.assert_close(hist[k][name], solo_hist[name], **TOL)
    assert hist[1]["extra"][-1] > 0 == hist[0]["extra"][-1]


@PATHS
def test_adapters_of_different_ranks_and_alphas_train_as_they_would_alone(path):
    model = _model()
    cfgs = [fl.LoraConfig(rank=1, targets=fl.ALL), fl.LoraConfig(rank=4, targets=fl.ALL),
            fl.LoraConfig(rank=2, alpha=8.0, targets=fl.ALL)]  # scales 1, 1 and 4
    big = fl.LoraConfig(rank=4, targets=fl.ALL)               # f's scale: 1
    base, x, y = fl.freeze(model), *_data(0)
    loras = [fl.init_lora(model, c, seed=s) for s, c in enumerate(cfgs)]

    opt = fl.sgd(0.1, momentum=0.9)  # not scale-invariant (as Adam nearly is): a wrong scale shows
    f = fl.functional(model, big)
    out, hist = fl.fit_many(f if path == "stacked" else _vmap_only(f), base, loras, x, y, opt=opt, steps=5,
                            scales=[1.0, 1.0, 4.0], progress=False)

    for k, c in enumerate(cfgs):
        solo, losses = fl.fit(fl.functional(model, c), base, loras[k], x, y, opt=opt, steps=5,
                              progress=False)
        assert out[k]["0"]["A"].shape == loras[k]["0"]["A"].shape  # back at its own rank
        torch.testing.assert_close(hist[k], losses, **TOL)
        _close(out[k], solo)


def test_cached_features_and_batches_that_change_every_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).eval()
    cfg = fl.LoraConfig(rank=2, targets=("5",))  # the head: everything before it is cached
    base = fl.freeze(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fl.NoCacheWarning)
        prefix, suffix = fl.split(model, cfg)
    (x0, y), (x1, _) = _data(0), _data(1)
    feats = [prefix(base, x0), prefix(base, x1)]
    loras = [fl.init_lora(model, cfg, seed=s) for s in range(2)]

    out, hist = fl.fit_many(suffix, base, loras, lambda i: feats[i % 2], y, opt=fl.adam(0.1), steps=4,
                            progress=False)

    solo, losses = fl.fit(suffix, base, loras[1], lambda i: feats[i % 2], y, opt=fl.adam(0.1), steps=4,
                          progress=False)
    _close(out[1], solo)
    torch.testing.assert_close(hist[1], losses, **TOL)


def test_a_diverging_adapter_stops_and_the_others_train_on():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    cfg = fl.LoraConfig(rank=2)
    base, f = fl.freeze(model), fl.functional(model, cfg)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    loras = [fl.init_lora(model, cfg, seed=s) for s in range(2)]
    out, hist = fl.fit_many(f, base, loras, x, y, opt=[fl.sgd(1e30), fl.sgd(1e-3)], steps=5, progress=False)
    assert len(hist[0]) < 5 and not torch.isfinite(torch.tensor(hist[0][-1]))
    assert len(hist[1]) == 5 and all(torch.isfinite(t).all() for ab in out[0].values() for t in ab.values())
    assert fl.make_loss(f)(out[0], base, x, y).item() == pytest.approx(hist[0][-2])  # its last finite one
    solo, losses = fl.fit(f, base, loras[1], x, y, opt=fl.sgd(1e-3), steps=5, progress=False)
    _close(out[1], solo)
    with pytest.raises(ValueError, match="every adapter"):
        fl.fit_many(f, base, loras, x, y, opt=fl.sgd(1e30), steps=5, progress=False)


def test_wrong_counts_are_named():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    cfg = fl.LoraConfig(rank=2)
    base, f, x, y = fl.freeze(model), fl.functional(model, cfg), torch.randn(6, 4), torch.zeros(6, dtype=torch.long)
    loras = [fl.init_lora(model, cfg, seed=s) for s in range(2)]
    with pytest.raises(ValueError, match="opt: 3 given for 2 adapters"):
        fl.fit_many(f, base, loras, x, y, opt=[fl.adam()] * 3, steps=1, progress=False)
    with pytest.raises(ValueError, match="x: 1 given for 2 adapters"):
        fl.fit_many(f, base, loras, [x], y, opt=fl.adam(), steps=1, progress=False)
    with pytest.raises(ValueError, match="differ in shape"):
        fl.fit_many(f, base, loras, [x, x[:3]], y, opt=fl.adam(), steps=1, progress=False)
    with pytest.raises(ValueError, match="scales must be 2 finite numbers"):
        fl.fit_many(f, base, loras, x, y, opt=fl.adam(), steps=1, scales=[1.0], progress=False)


class _Convolutions(TorchDispatchMode):
    """Records (weight shape, groups, rows of the input) of every convolution that actually runs (below vmap)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.seen.append((tuple(args[1].shape), args[8], args[0].shape[0]))
        return func(*args, **(kwargs or {}))


def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Flatten(), nn.Linear(32 * 64, 5)).eval()


@pytest.mark.parametrize("shared", [True, False], ids=["shared data", "own data"])
def test_frozen_convolutions_run_once_on_all_examples_never_per_adapter(shared):
    model, k = _conv_model(), 3
    cfg = fl.LoraConfig(rank=2, targets=fl.ALL)
    assert fl.plan(model, cfg) == {"0": "fused", "2": "fused", "4": "weight", "6": "activation"}
    base, f = fl.freeze(model), fl.functional(model, cfg)
    loras = [fl.init_lora(model, cfg, seed=s) for s in range(k)]
    x, y = _data(0)
    n = x.shape[0]
    with _Convolutions() as mode:
        fl.fit_many(f, base, loras, x if shared else [x] * k, y, opt=fl.adam(), steps=1, progress=False)
    seen = set(mode.seen)
    # the stacked pass (funclora.stacked): each dense frozen conv once, with its own weight, on all K·N rows...
    assert {((32, 3, 3, 3), 1, k * n), ((32, 32, 3, 3), 1, k * n)} <= seen
    assert not {s for s in seen if s[1] == k or s[0][0] == k * 32}, mode.seen  # ...never a K-group conv
    # the depthwise conv ("weight" in fl.plan) runs merged per adapter: K convs of its own shape on N rows
    assert mode.seen.count(((32, 1, 3, 3), 32, n)) == k


def test_with_a_frozen_prefix_and_shared_data_the_prefix_runs_once():
    model, k = _conv_model(), 3
    cfg = fl.LoraConfig(rank=2, targets=("2", "4", "6"))  # the first conv is frozen: computed once for all
    base, f = fl.freeze(model), fl.functional(model, cfg)
    loras = [fl.init_lora(model, cfg, seed=s) for s in range(k)]
    x, y = _data(0)
    with _Convolutions() as mode:
        fl.fit_many(f, base, loras, x, y, opt=fl.adam(), steps=1, progress=False)
    rows = {s[2] for s in mode.seen if s[0] == (32, 3, 3, 3)}
    assert rows == {x.shape[0]}, mode.seen  # once, on the N shared examples (vmap: the prefix is unbatched)
    assert not {s for s in mode.seen if s[0][0] == k * 32 and s[1] == 1}, mode.seen


def _every_kind():
    """1×1 (plain and self-padding), 3×3 and strided self-padding convolutions on the low-rank path,
    a depthwise one merged, BatchNorm, a Linear."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), StaticSamePadConv2d(8, 8, 1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
        StaticSamePadConv2d(8, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    how = {"0": "fused", "3": "fused", "5": "activation", "7": "weight", "8": "fused", "12": "activation"}
    return model, how


@pytest.mark.parametrize("shared", [True, False], ids=["shared data", "own data"])
def test_every_kind_of_layer_on_the_stacked_pass_equals_its_solo_fit_at_its_own_rank(shared):
    model, how = _every_kind()
    cfgs = [fl.LoraConfig(rank=r, targets=fl.ALL) for r in (2, 1, 3)]
    top = cfgs[2]
    base, f = fl.freeze(model), fl.functional(model, top, strategy=how)
    assert fl.plan(model, top, how) == how
    loras = [fl.init_lora(model, c, seed=s) for s, c in enumerate(cfgs)]
    data = [_data(0)] * 3 if shared else [_data(s) for s in range(3)]
    opts = [fl.adam(3e-2), fl.sgd(0.1, momentum=0.9), fl.adamw(1e-2)]
    xs = data[0][0] if shared else [x for x, _ in data]
    ys = data[0][1] if shared else [y for _, y in data]
    assert fl.many.stacked_form(f, base, data[0][0], None) is not None  # this is the path under test

    out, histories = fl.fit_many(f, base, loras, xs, ys, opt=opts, steps=4, progress=False)

    for k, c in enumerate(cfgs):
        solo, losses = fl.fit(fl.functional(model, c, strategy=how), base, loras[k], *data[k], opt=opts[k],
                              steps=4, progress=False)
        assert out[k]["0"]["A"].shape == loras[k]["0"]["A"].shape
        torch.testing.assert_close(histories[k], losses, **TOL)
        _close(out[k], solo, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and mixed-adapter inference on the trained adapters
        x, _ = _data(3, n=5)
        idx = torch.tensor([2, 0, 1, 2, 0])
        padded = [fl.pad_rank(lora, 3) for lora in out]
        mixed = f(base, fl.stack(out), x, adapter_index=idx)
        alone = torch.cat([f(base, padded[i], x[j:j + 1]) for j, i in enumerate(idx.tolist())])
        torch.testing.assert_close(mixed, alone, **TOL)


def test_mixed_adapter_inference_equals_each_example_with_its_own_adapter():
    model = _model()
    cfg = fl.LoraConfig(rank=2, targets=fl.ALL)
    base, f = fl.freeze(model), fl.functional(model, cfg)
    loras = [trained(model, cfg, seed=s) for s in range(3)]
    x, _ = _data(0, n=7)
    idx = torch.tensor([2, 0, 1, 1, 2, 0, 2])
    with torch.no_grad():
        mixed = f(base, fl.stack(loras), x, adapter_index=idx)
        alone = torch.cat([f(base, loras[i], x[n:n + 1]) for n, i in enumerate(idx.tolist())])
    torch.testing.assert_close(mixed, alone, **TOL)
    assert not torch.allclose(mixed, f(base, loras[0], x))  # the adapters do differ
    with pytest.raises(ValueError, match=r"adapter_index must lie in \[0, 3\)"):
        f(base, fl.stack(loras), x, adapter_index=idx + 1)
    with pytest.raises(ValueError, match="one integer per example"):
        f(base, fl.stack(loras), x, adapter_index=idx[:3])


def test_one_optimizer_with_a_global_norm_clip_clips_each_adapter_by_its_own_norm():
    model = _model()
    cfg = fl.LoraConfig(rank=2, targets=fl.ALL)
    base, f = fl.freeze(model), fl.functional(model, cfg)
    data = [_data(0), _data(1)]
    loras = [fl.init_lora(model, cfg, seed=s) for s in range(2)]
    opt = fl.chain(fl.clip_by_global_norm(0.05), fl.sgd(0.5, momentum=0.5))  # the clip binds
    out, hist = fl.fit_many(f, base, loras, [x for x, _ in data], [y for _, y in data], opt=opt, steps=3,
                            progress=False)
    for k in range(2):
        solo, losses = fl.fit(f, base, loras[k], *data[k], opt=opt, steps=3, progress=False)
        _close(out[k], solo)
        torch.testing.assert_close(hist[k], losses, **TOL)
