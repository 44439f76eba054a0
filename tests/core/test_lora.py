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


def _linear_and_conv():
    return nn.Sequential(nn.Linear(6, 4), nn.Unflatten(1, (4, 1, 1)), nn.Conv2d(4, 8, 3, groups=2))


@pytest.mark.parametrize("use", ["merge", "unmerge", "check_lora"])
def test_a_config_whose_rank_contradicts_the_tensors_is_refused_not_rescaled(use):
    model = _linear_and_conv()
    lora = _trained(model, fl.LoraConfig(rank=2), 0)
    for wrong in [fl.LoraConfig(rank=4), fl.LoraConfig(rank=2, rank_pattern={"2": 1})]:
        layer, rank = ("0", 4) if wrong.rank == 4 else ("2", 1)
        shapes = r"A \(2, 6\), B \(4, 2\)" if layer == "0" else r"A \(2, 2, 3, 3\), B \(8, 2, 1, 1\)"
        with pytest.raises(ValueError, match=rf"layer '{layer}': adapter shapes {shapes} do not fit its weight "
                                             rf".* the config's rank {rank} \(expected A \({rank}, "):
            if use == "check_lora":
                fl.check_lora(model, lora, wrong)
            else:
                getattr(fl, use)(fl.freeze(model), lora, wrong)


@pytest.mark.parametrize("layer, k, shape", [("0", "B", (4, 2, 1)), ("2", "B", (8, 2, 3, 3)), ("2", "A", (2, 4, 3, 3)),
                                             ("0", "A", (2, 6, 1)), ("0", "A", (2,))])
def test_tensors_of_the_right_rank_but_the_wrong_layout_are_refused(layer, k, shape):
    model = _linear_and_conv()
    cfg = fl.LoraConfig(rank=2)
    lora = _trained(model, cfg, 0)
    lora[layer][k] = torch.zeros(shape)
    with pytest.raises(ValueError, match=f"layer '{layer}': adapter shapes"):
        fl.check_lora(model, lora, cfg)
    with pytest.raises(ValueError, match=f"layer '{layer}': adapter shapes"):
        fl.merge(fl.freeze(model), lora, cfg)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
@pytest.mark.parametrize("k", ["A", "B"])
def test_adapter_tensors_that_are_not_floating_point_are_refused(k, dtype):
    model = _linear_and_conv()
    cfg = fl.LoraConfig(rank=2)
    lora = _trained(model, cfg, 0)
    lora["2"][k] = lora["2"][k].to(dtype)
    message = rf"layer '2': {k} is {dtype}; adapter tensors must be floating point \(float32"
    with pytest.raises(ValueError, match=message):
        fl.check_lora(model, lora, cfg)
    with pytest.raises(ValueError, match=message):
        fl.merge(fl.freeze(model), lora, cfg)
    with pytest.raises(ValueError, match=rf"layer 'x': {k} is {dtype}"):
        fl.delta_weight(lora["2"]["A"], lora["2"]["B"], 1.0, layer="x")


@pytest.mark.parametrize("ab, message", [({"A": torch.zeros(2, 6)}, r"got \['A'\]"),
                                         ({"A": torch.zeros(2, 6), "B": torch.zeros(4, 2), "C": 1}, "got"),
                                         ([torch.zeros(2, 6), torch.zeros(4, 2)], "got list"),
                                         ({"A": torch.zeros(2, 6), "B": [[0.0, 0.0]] * 4}, "B is list")])
def test_a_layer_that_is_not_an_a_and_b_pair_is_refused(ab, message):
    model = nn.Sequential(nn.Linear(6, 4))
    cfg = fl.LoraConfig(rank=2)
    with pytest.raises(ValueError, match=f"layer '0': .*{message}"):
        fl.check_lora(model, {"0": ab}, cfg)
    with pytest.raises(ValueError, match=f"layer '0': .*{message}"):
        fl.merge(fl.freeze(model), {"0": ab}, cfg)


def test_delta_weight_checks_that_a_and_b_pair_up_and_fit_the_rank_given():
    a, b = torch.randn(2, 3, 3, 3), torch.randn(5, 2, 1, 1)
    torch.testing.assert_close(fl.delta_weight(a, b, 0.5, rank=2),
                               0.5 * torch.einsum("or,rikl->oikl", b.flatten(1), a))
    with pytest.raises(ValueError, match=r"layer 'conv': adapter shapes .* the config's rank 3"):
        fl.delta_weight(a, b, 1.0, rank=3, layer="conv")
    with pytest.raises(ValueError, match=r"^adapter: adapter shapes A \(2, 3, 3, 3\), B \(5, 3, 1, 1\) do not fit "
                                         r"A's rank 2"):
        fl.delta_weight(a, torch.randn(5, 3, 1, 1), 1.0)
    for bad_a, bad_b in [(torch.tensor(1.0), b), (torch.randn(2), torch.randn(5, 2)), (a, torch.tensor(1.0)),
                         (a, torch.randn(5, 2, 3, 1))]:
        with pytest.raises(ValueError, match="adapter shapes"):
            fl.delta_weight(bad_a, bad_b, 1.0)
