"""Specification of funclora.head: a new classifier head trained in full beside the adapters."""
from __future__ import annotations

import pytest
import torch

import funclora as fl


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(),
                               torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Linear(7, 1000))).eval()


def test_headless_replaces_the_head_in_a_copy_sharing_every_other_tensor():
    model = _model()
    body = fl.headless(model, "2.1")
    assert isinstance(body[2][1], torch.nn.Identity) and isinstance(model[2][1], torch.nn.Linear)
    assert body[0].weight is model[0].weight and body[2][0] is model[2][0]
    x = torch.randn(3, 5)
    assert torch.equal(body(x), model[2][0](model[1](model[0](x))))
    assert set(fl.freeze(body)) == set(fl.freeze(model)) - {"2.1.weight", "2.1.bias"}


@pytest.mark.parametrize("name, message", [("9", "not a module"), ("1", "is a ReLU"), ("", "not a module")])
def test_headless_refuses_what_is_no_linear_layer_naming_it(name, message):
    with pytest.raises(ValueError, match=message):
        fl.headless(_model(), name)


def test_a_new_head_is_drawn_from_its_seed_like_nn_linear():
    a, b, c = fl.new_head(7, 4, seed=3), fl.new_head(7, 4, seed=3), fl.new_head(7, 4, seed=4)
    assert torch.equal(a["weight"], b["weight"]) and torch.equal(a["bias"], b["bias"])
    assert not torch.equal(a["weight"], c["weight"])
    assert a["weight"].abs().max() <= 7 ** -0.5 and a["weight"].std() > 0.1
    with pytest.raises(ValueError, match="classes must be an integer >= 1"):
        fl.new_head(7, 0)


def test_with_head_is_the_body_then_the_head_and_grad_reaches_both_the_adapters_and_the_head():
    model = _model()
    body = fl.headless(model, "2.1")
    cfg = fl.LoraConfig(rank=2, targets=("0",))
    f, base = fl.with_head(fl.functional(body, cfg)), fl.freeze(body)
    params = {"lora": fl.init_lora(body, cfg), "head": fl.new_head(7, 3, seed=0)}
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    expected = torch.nn.functional.linear(body(x), params["head"]["weight"], params["head"]["bias"])
    assert torch.equal(f(base, params, x), expected)  # B = 0: the body is the base
    grads = torch.func.grad(lambda p: torch.nn.functional.cross_entropy(f(base, p, x), y))(params)
    assert grads["head"]["weight"].abs().sum() > 0 and grads["lora"]["0"]["B"].abs().sum() > 0
    # Head only: no adapters at all.
    only = {"lora": {}, "head": params["head"]}
    assert torch.equal(f(base, only, x), expected)


def test_the_head_is_saved_in_the_adapter_file_and_read_back(tmp_path):
    body = fl.headless(_model(), "2.1")
    cfg = fl.LoraConfig(rank=2, targets=("0",))
    lora, head = fl.init_lora(body, cfg), fl.new_head(7, 3, seed=0)
    path = tmp_path / "a.safetensors"
    fl.save(path, lora, cfg, metadata={"classes": "[]"}, modules={"2.1": head})
    back, cfg2 = fl.load(path)
    modules = fl.load_modules(path)
    assert cfg2 == cfg and set(back) == {"0"}
    assert torch.equal(modules["2.1"]["weight"], head["weight"]) and torch.equal(modules["2.1"]["bias"], head["bias"])
    plain = tmp_path / "b.safetensors"
    fl.save(plain, lora, cfg)
    assert fl.load_modules(plain) == {}
    with pytest.raises(ValueError, match="reserved"):
        fl.save(plain, lora, cfg, metadata={"modules_to_save": "x"})
