"""init_lora, merge and unmerge: adapter shapes, the merge algebra, and refusing bad merges."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import funclora as fl
from layers import layers


def test_adapter_shapes_match_peft_for_linear_and_every_conv():
    model = nn.Sequential(nn.Linear(10, 6), nn.Conv2d(8, 12, (3, 5), groups=4), nn.Conv2d(6, 6, 3, groups=6))
    lora = fl.init_lora(model, fl.LoraConfig(rank=3))
    assert {n: {k: tuple(t.shape) for k, t in ab.items()} for n, ab in lora.items()} == {
        "0": {"A": (3, 10), "B": (6, 3)},
        "1": {"A": (3, 2, 3, 5), "B": (12, 3, 1, 1)},
        "2": {"A": (3, 1, 3, 3), "B": (6, 3, 1, 1)},
    }


def test_b_starts_at_zero_and_a_follows_the_chosen_init():
    model = nn.Sequential(nn.Linear(400, 300))
    gaussian = fl.init_lora(model, fl.LoraConfig(rank=4, init="gaussian"))["0"]
    kaiming = fl.init_lora(model, fl.LoraConfig(rank=4, init="kaiming"))["0"]
    assert not gaussian["B"].any() and not kaiming["B"].any()
    assert gaussian["A"].std().item() == pytest.approx(1 / 4, rel=0.05)  # N(0, 1/r), as PEFT's "gaussian"
    assert kaiming["A"].abs().max().item() <= 1 / 400**0.5  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))


def test_adapters_follow_the_weights_dtype_and_are_reproducible():
    model = nn.Sequential(nn.Linear(8, 4).to(torch.float64), nn.Linear(4, 2).to(torch.bfloat16))
    cfg = fl.LoraConfig(rank=2)
    lora = fl.init_lora(model, cfg, seed=7)
    assert lora["0"]["A"].dtype == torch.float64 and lora["1"]["B"].dtype == torch.bfloat16
    again, other = fl.init_lora(model, cfg, seed=7), fl.init_lora(model, cfg, seed=8)
    assert torch.equal(lora["0"]["A"], again["0"]["A"])
    assert not torch.equal(lora["0"]["A"], other["0"]["A"])
    assert not any(t.requires_grad for ab in lora.values() for t in ab.values())


def test_rank_pattern_gives_per_layer_ranks():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    cfg = fl.LoraConfig(rank=2, rank_pattern={"1": 5, "[02]": 3})
    assert [fl.init_lora(model, cfg)[n]["A"].shape[0] for n in "012"] == [3, 5, 3]


def _trained(model, cfg, seed):
    lora = fl.init_lora(model, cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return {n: {"A": ab["A"], "B": torch.randn(ab["B"].shape, generator=g)} for n, ab in lora.items()}


@given(layers(), st.integers(1, 6), st.integers(0, 2**16), st.booleans())
def test_unmerge_inverts_merge(case, rank, seed, rslora):
    layer, _ = case
    model = nn.Sequential(layer)
    cfg = fl.LoraConfig(rank=rank, alpha=2.0, use_rslora=rslora)
    base, lora = fl.freeze(model), _trained(model, cfg, seed)
    merged = fl.merge(base, lora, cfg)
    assert set(merged) == set(base)
    assert not torch.equal(merged["0.weight"], base["0.weight"])
    back = fl.unmerge(merged, lora, cfg)
    for k in base:
        torch.testing.assert_close(back[k], base[k], rtol=1e-5, atol=1e-5)


def test_merge_passes_other_tensors_through_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    cfg = fl.LoraConfig(rank=2, targets=("3",))
    base = fl.freeze(model)
    merged = fl.merge(base, _trained(model, cfg, 0), cfg)
    assert all(merged[k] is base[k] for k in base if k != "3.weight")
    with pytest.raises(TypeError):
        merged["3.weight"] = torch.zeros(2, 4)


def test_merge_refuses_non_finite_weights_naming_the_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    cfg = fl.LoraConfig(rank=2)
    lora = _trained(model, cfg, 0)
    lora["1"]["B"] = torch.full_like(lora["1"]["B"], float("inf"))
    with pytest.raises(ValueError, match="layer '1'.*not finite"):
        fl.merge(fl.freeze(model), lora, cfg)


def test_merge_refuses_an_adapter_for_another_model():
    cfg = fl.LoraConfig(rank=2)
    lora = _trained(nn.Sequential(nn.Linear(4, 4)), cfg, 0)
    with pytest.raises(ValueError, match="layer '0'.*another model"):
        fl.merge(fl.freeze(nn.Sequential(nn.Linear(5, 4))), lora, cfg)
    with pytest.raises(ValueError, match="layer '0'.*another model"):
        fl.merge(fl.freeze(nn.Sequential(nn.ReLU())), lora, cfg)


def test_check_lora_names_the_layer_that_does_not_fit():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    cfg = fl.LoraConfig(rank=2)
    lora = fl.init_lora(model, cfg)
    fl.check_lora(model, lora, cfg)
    lora["1"]["A"] = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="layer '1'"):
        fl.check_lora(model, lora, cfg)
    with pytest.raises(ValueError, match="missing"):
        fl.check_lora(model, {"0": lora["0"]}, cfg)
