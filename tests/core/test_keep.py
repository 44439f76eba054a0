"""Specification of the keep term (funclora.keep) and `funclora train --keep`: λ·KL(base ‖ adapted)
on a keep set, zero for a fresh adapter, the base's outputs computed once."""
from __future__ import annotations


import pytest
import torch
from torch.utils._pytree import tree_map

import funclora as fl
from funclora.keep import kl_to_base, keep_term
from funclora.train import fit



def _problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    cfg = fl.LoraConfig(rank=2)
    x, y = torch.randn(5, 6), torch.zeros(5, dtype=torch.long)     # teach class 0...
    x_keep = torch.randn(7, 6)                                     # ...and leave these alone
    return model, cfg, fl.freeze(model), fl.functional(model, cfg), x, y, x_keep


def _counting(f):
    """f, and a dict counting its calls with and without an adapter."""
    calls = {"base": 0, "adapted": 0}

    def counted(base, lora, x):
        calls["base" if lora is None else "adapted"] += 1
        return f(base, lora, x)

    return counted, calls


def test_kl_to_base_is_the_kl_divergence_of_the_adapted_from_the_base_distribution():
    base_logits, logits = torch.randn(3, 5), torch.randn(3, 5)
    p, q = base_logits.softmax(-1), logits.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    assert torch.allclose(kl_to_base(base_logits, logits), expected)
    assert kl_to_base(base_logits, base_logits + 7.0) < 1e-6  # a shift of every logit changes nothing


def test_the_term_is_zero_for_a_fresh_adapter_and_positive_once_it_has_changed():
    model, cfg, base, f, x, y, x_keep = _problem()
    extra = keep_term(f, base, x_keep, weight=1.0)
    fresh = fl.init_lora(model, cfg, seed=0)                       # B = 0: adapted == base
    assert extra(fresh, base).item() == 0.0
    trained, _ = fit(f, base, fresh, x, y, opt=fl.adam(0.05), steps=10, progress=False)
    assert extra(trained, base).item() > 0.0


def test_the_weight_scales_the_term():
    model, cfg, base, f, x, y, x_keep = _problem()
    lora = tree_map(lambda t: t + 0.3, fl.init_lora(model, cfg))
    one, three = keep_term(f, base, x_keep, 1.0)(lora, base), keep_term(f, base, x_keep, 3.0)(lora, base)
    assert torch.allclose(three, 3 * one) and one > 0


def test_the_base_outputs_are_computed_once_not_per_step():
    model, cfg, base, f, x, y, x_keep = _problem()
    counted, calls = _counting(f)
    extra = keep_term(counted, base, x_keep, weight=1.0)
    fit(counted, base, fl.init_lora(model, cfg), x, y, opt=fl.adam(0.05), steps=6, extra=extra, progress=False)
    assert calls == {"base": 1, "adapted": 2 * 6}  # per step: the training batch and the keep set


def test_given_base_outputs_are_used_as_they_are():
    model, cfg, base, f, x, y, x_keep = _problem()
    counted, calls = _counting(f)
    target = f(base, None, x_keep)
    extra = keep_term(counted, base, x_keep, target=target)
    assert calls["base"] == 0 and extra(fl.init_lora(model, cfg), base).item() == 0.0


def test_the_keep_term_holds_the_keep_sets_predictions_where_plain_training_moves_them():
    model, cfg, base, f, x, y, x_keep = _problem()
    base_keep = f(base, None, x_keep)
    runs = {}
    for name, extra in {"plain": None, "keep": keep_term(f, base, x_keep, weight=10.0)}.items():
        lora, _ = fit(f, base, fl.init_lora(model, cfg), x, y, opt=fl.adam(0.05), steps=40, extra=extra,
                      progress=False)
        assert (f(base, lora, x).argmax(-1) == 0).all(), name  # both learn the task
        runs[name] = kl_to_base(base_keep, f(base, lora, x_keep)).item()
    assert runs["keep"] < runs["plain"] / 5


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_a_bad_weight_is_refused(weight):
    model, cfg, base, f, x, y, x_keep = _problem()
    with pytest.raises(ValueError, match="keep weight must be a finite number >= 0"):
        keep_term(f, base, x_keep, weight)
