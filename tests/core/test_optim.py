"""Pure optimizers: they agree with torch.optim step for step and never mutate their inputs."""
import pytest
import torch
from torch.utils._pytree import tree_leaves

import funclora as fl

CASES = [
    (lambda: fl.sgd(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda: fl.sgd(0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (lambda: fl.sgd(0.1, momentum=0.9, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    (lambda: fl.adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (lambda: fl.adamw(0.01, weight_decay=0.1), lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
]


def _lora():
    g = torch.Generator().manual_seed(0)
    return {"a": {"A": torch.randn(3, 5, generator=g), "B": torch.randn(4, 3, generator=g)},
            "b": {"A": torch.randn(2, 4, 3, 3, generator=g), "B": torch.randn(6, 2, 1, 1, generator=g)}}


def _grads(step):
    g = torch.Generator().manual_seed(100 + step)
    return {n: {k: torch.randn(t.shape, generator=g) for k, t in ab.items()} for n, ab in _lora().items()}


@pytest.mark.parametrize("ours, theirs", CASES)
def test_matches_torch_optim_for_several_steps(ours, theirs):
    params = _lora()
    reference = {n: {k: t.clone().requires_grad_() for k, t in ab.items()} for n, ab in params.items()}
    flat = [t for ab in reference.values() for t in ab.values()]
    torch_opt, opt = theirs(flat), ours()
    state = opt.init(params)
    for step in range(5):
        grads = _grads(step)
        params, state = opt.update(grads, state, params)
        for (n, k), t in [((n, k), t) for n, ab in reference.items() for k, t in ab.items()]:
            t.grad = grads[n][k]
        torch_opt.step()
    for n, ab in params.items():
        for k, t in ab.items():
            torch.testing.assert_close(t, reference[n][k].detach())


@pytest.mark.parametrize("ours, _", CASES)
def test_update_never_mutates_its_inputs(ours, _):
    opt, params = ours(), _lora()
    state = opt.init(params)
    params, state = opt.update(_grads(0), state, params)  # momentum/moments are non-zero now
    grads = _grads(1)
    inputs = [t for t in tree_leaves((grads, state, params)) if isinstance(t, torch.Tensor)]
    snapshot = [t.clone() for t in inputs]
    step = state["step"]
    opt.update(grads, state, params)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, inputs)) and state["step"] == step


def test_learning_rate_may_be_a_schedule_of_the_step():
    opt = fl.sgd(lambda step: 1.0 / step)
    params = {"w": torch.zeros(1)}
    state = opt.init(params)
    for _ in range(3):
        params, state = opt.update({"w": torch.ones(1)}, state, params)
    assert params["w"].item() == pytest.approx(-(1 + 1 / 2 + 1 / 3))


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="lr must be"):
        fl.adam(lr=-1)
    with pytest.raises(ValueError, match="momentum must be"):
        fl.sgd(0.1, momentum=-0.5)
