"""Pure optimizers: optax-shaped (updates, then apply_updates), step for step the same as torch.optim,
never mutating their inputs, with their hyperparameters checked where they enter."""
import math

import pytest
import torch
from torch.utils._pytree import tree_leaves, tree_map

import funclora as fl

CASES = [
    (lambda: fl.sgd(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda: fl.sgd(0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (lambda: fl.sgd(0.1, momentum=0.9, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
    (lambda: fl.adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (lambda: fl.adam(0.01, b1=0.5, b2=0.8, eps=1e-3), lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.5, 0.8),
                                                                                eps=1e-3)),
    (lambda: fl.adamw(0.01, weight_decay=0.1), lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
    (lambda: fl.adamw(0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),  # the default decay, 1e-2
]


def _lora():
    g = torch.Generator().manual_seed(0)
    return {"a": {"A": torch.randn(3, 5, generator=g), "B": torch.randn(4, 3, generator=g)},
            "b": {"A": torch.randn(2, 4, 3, 3, generator=g), "B": torch.randn(6, 2, 1, 1, generator=g)}}


def _grads(step, scale=1.0):
    g = torch.Generator().manual_seed(100 + step)
    return {n: {k: scale * torch.randn(t.shape, generator=g) for k, t in ab.items()} for n, ab in _lora().items()}


def _run(opt, steps, scale=1.0):
    params = _lora()
    state = opt.init(params)
    for step in range(steps):
        updates, state = opt.update(_grads(step, scale), state, params)
        params = fl.apply_updates(params, updates)
    return params, state


def _torch_run(make, steps, scale=1.0, clip=None):
    reference = tree_map(lambda t: t.clone().requires_grad_(), _lora())
    flat = tree_leaves(reference)
    torch_opt = make(flat)
    for step in range(steps):
        for t, g in zip(flat, tree_leaves(_grads(step, scale))):
            t.grad = g
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(flat, clip)
        torch_opt.step()
    return tree_map(lambda t: t.detach(), reference)


@pytest.mark.parametrize("ours, theirs", CASES)
def test_matches_torch_optim_for_several_steps(ours, theirs):
    params, _ = _run(ours(), 5)
    torch.testing.assert_close(params, _torch_run(theirs, 5))


@pytest.mark.parametrize("ours, _", CASES)
def test_update_never_mutates_its_inputs(ours, _):
    opt, params = ours(), _lora()
    state = opt.init(params)
    updates, state = opt.update(_grads(0), state, params)  # momentum/moments are non-zero now
    params = fl.apply_updates(params, updates)
    grads = _grads(1)
    inputs = [t for t in tree_leaves((grads, state, params)) if isinstance(t, torch.Tensor)]
    snapshot = [t.clone() for t in inputs]
    opt.update(grads, state, params)
    fl.apply_updates(params, updates)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, inputs))


def test_updates_are_what_to_add_not_the_new_parameters():
    opt = fl.sgd(0.5)
    params = {"w": torch.tensor([10.0])}
    updates, _ = opt.update({"w": torch.tensor([2.0])}, opt.init(params), params)
    assert torch.equal(updates["w"], torch.tensor([-1.0]))
    assert torch.equal(fl.apply_updates(params, updates)["w"], torch.tensor([9.0]))


@pytest.mark.parametrize("opt", [fl.sgd(0.1), fl.sgd(0.1, momentum=0.5), fl.adam(0.1), fl.adamw(0.1)])
def test_the_step_count_is_a_tensor_that_starts_at_zero(opt):
    params = {"w": torch.ones(2)}
    state = opt.init(params)
    assert isinstance(state["step"], torch.Tensor) and state["step"].item() == 0
    for expected in (1, 2, 3):
        _, state = opt.update({"w": torch.ones(2)}, state, params)
        assert isinstance(state["step"], torch.Tensor) and state["step"].item() == expected


def test_a_compiled_update_is_compiled_once_not_once_per_step():
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    opt = fl.adam(0.1)
    update = torch.compile(opt.update, backend=counting_backend, fullgraph=True)
    params = {"w": torch.ones(3)}
    state = opt.init(params)
    eager_params, eager_state = params, state
    for _ in range(4):
        updates, state = update({"w": torch.ones(3)}, state, params)
        params = fl.apply_updates(params, updates)
        eager_updates, eager_state = opt.update({"w": torch.ones(3)}, eager_state, eager_params)
        eager_params = fl.apply_updates(eager_params, eager_updates)
    assert len(graphs) == 1
    torch.testing.assert_close(params, eager_params)


def test_learning_rate_may_be_a_schedule_of_the_step_count_from_zero():
    seen = []
    opt = fl.sgd(lambda step: seen.append(step) or 1.0 / (step + 1))
    params = {"w": torch.zeros(1)}
    state = opt.init(params)
    for _ in range(3):
        updates, state = opt.update({"w": torch.ones(1)}, state, params)
        params = fl.apply_updates(params, updates)
    assert seen == [0, 1, 2] and all(type(s) is int for s in seen)
    assert params["w"].item() == pytest.approx(-(1 + 1 / 2 + 1 / 3))


def test_adam_with_a_schedule_matches_the_constant_rate_it_returns():
    scheduled, _ = _run(fl.adamw(lambda step: 0.01, weight_decay=0.1), 3)
    constant, _ = _run(fl.adamw(0.01, weight_decay=0.1), 3)
    assert all(torch.equal(a, b) for a, b in zip(tree_leaves(scheduled), tree_leaves(constant)))


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.1, "fast", torch.tensor(-1.0)])
@pytest.mark.parametrize("make", [fl.sgd, fl.adam])
def test_a_schedule_value_that_is_not_a_finite_rate_is_refused_naming_the_step(make, value):
    opt = make(lambda step: 0.1 if step < 2 else value)
    params = {"w": torch.ones(1)}
    state = opt.init(params)
    for _ in range(2):
        _, state = opt.update({"w": torch.ones(1)}, state, params)
    with pytest.raises(ValueError, match="schedule returned .* at step 2"):
        opt.update({"w": torch.ones(1)}, state, params)


def test_a_schedule_may_reach_zero_and_may_return_a_tensor():
    opt = fl.sgd(lambda step: torch.tensor(0.0) if step else 1.0)
    params = {"w": torch.zeros(1)}
    state = opt.init(params)
    updates, state = opt.update({"w": torch.ones(1)}, state, params)
    assert updates["w"].item() == -1.0
    updates, _ = opt.update({"w": torch.ones(1)}, state, params)
    assert updates["w"].item() == 0.0


BAD = [
    (lambda: fl.sgd(0), "lr must be a finite number > 0"),
    (lambda: fl.sgd(-1), "lr must be"),
    (lambda: fl.adam(lr=math.nan), "lr must be"),
    (lambda: fl.adam(lr=math.inf), "lr must be"),
    (lambda: fl.adam(lr="0.1"), "lr must be"),
    (lambda: fl.adam(lr=True), "lr must be"),
    (lambda: fl.sgd(0.1, momentum=-0.5), r"momentum must be a finite number in \[0, 1\)"),
    (lambda: fl.sgd(0.1, momentum=1.0), "momentum must be"),
    (lambda: fl.sgd(0.1, momentum=math.nan), "momentum must be"),
    (lambda: fl.sgd(0.1, nesterov=True), "nesterov .* needs a momentum"),
    (lambda: fl.sgd(0.1, momentum=0.9, nesterov="yes"), "nesterov must be True or False"),
    (lambda: fl.adam(b1=1.0), r"b1 must be a finite number in \[0, 1\)"),
    (lambda: fl.adam(b1=-0.1), "b1 must be"),
    (lambda: fl.adam(b2=1.0), r"b2 must be a finite number in \[0, 1\)"),
    (lambda: fl.adam(b2=-1e-9), "b2 must be"),
    (lambda: fl.adam(b2=math.nan), "b2 must be"),
    (lambda: fl.adam(eps=0.0), "eps must be a finite number > 0"),
    (lambda: fl.adam(eps=-1e-8), "eps must be"),
    (lambda: fl.adamw(weight_decay=-0.1), "weight_decay must be a finite number >= 0"),
    (lambda: fl.adamw(weight_decay=math.inf), "weight_decay must be"),
    (lambda: fl.clip_by_global_norm(0.0), "max_norm must be a finite number > 0"),
    (lambda: fl.clip_by_global_norm(math.nan), "max_norm must be"),
    (lambda: fl.chain(), "chain needs"),
    (lambda: fl.chain(fl.adam(), lambda g: g), "chain needs"),
]


@pytest.mark.parametrize("make, message", BAD)
def test_bad_hyperparameters_are_refused_where_they_enter(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_edges_of_the_valid_ranges_are_accepted():
    for opt in [fl.sgd(1e-9, momentum=0.0), fl.sgd(0.1, momentum=0.999, nesterov=True),
                fl.adam(b1=0.0, b2=0.0, eps=1e-12), fl.adamw(weight_decay=0.0), fl.adam(lr=2),
                fl.clip_by_global_norm(1e-9)]:
        params = {"w": torch.ones(2)}
        updates, _ = opt.update({"w": torch.ones(2)}, opt.init(params), params)
        assert torch.isfinite(updates["w"]).all()


def test_adam_with_b1_and_b2_zero_is_sign_descent():
    params = {"w": torch.tensor([1.0, 1.0])}
    opt = fl.adam(0.1, b1=0.0, b2=0.0, eps=1e-12)
    updates, _ = opt.update({"w": torch.tensor([3.0, -0.5])}, opt.init(params), params)
    torch.testing.assert_close(updates["w"], torch.tensor([-0.1, 0.1]))


def test_adamw_decay_needs_the_params():
    opt = fl.adamw(0.1, weight_decay=0.1)
    with pytest.raises(ValueError, match="needs the params"):
        opt.update({"w": torch.ones(1)}, opt.init({"w": torch.ones(1)}))
    plain = fl.adam(0.1)
    updates, _ = plain.update({"w": torch.ones(1)}, plain.init({"w": torch.ones(1)}))  # Adam does not
    assert torch.isfinite(updates["w"]).all()


@pytest.mark.parametrize("scale, max_norm", [(1.0, 0.5), (1.0, 1e3), (1e-3, 1.0)])
def test_clip_by_global_norm_matches_torch_clip_grad_norm(scale, max_norm):
    clip = fl.clip_by_global_norm(max_norm)
    grads = _grads(0, scale)
    clipped, state = clip.update(grads, clip.init(_lora()))
    reference = tree_map(lambda t: t.clone(), grads)
    flat = tree_leaves(tree_map(lambda t: t.clone().requires_grad_(), _lora()))
    for t, g in zip(flat, tree_leaves(reference)):
        t.grad = g
    torch.nn.utils.clip_grad_norm_(flat, max_norm)
    torch.testing.assert_close(tree_leaves(clipped), [t.grad for t in flat])
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in tree_leaves(clipped)]))
    assert norm <= max_norm * (1 + 1e-5)
    if torch.linalg.vector_norm(torch.stack([g.norm() for g in tree_leaves(grads)])) <= max_norm:
        assert all(torch.equal(a, b) for a, b in zip(tree_leaves(clipped), tree_leaves(grads)))


def test_clip_scales_every_leaf_by_one_factor_and_keeps_its_dtype():
    clip = fl.clip_by_global_norm(1.0)
    grads = {"a": torch.tensor([3.0]), "b": torch.tensor([0.0, 4.0], dtype=torch.float64)}
    clipped, _ = clip.update(grads, clip.init(None))
    assert clipped["b"].dtype == torch.float64
    torch.testing.assert_close(clipped["a"], torch.tensor([0.6]), rtol=1e-5, atol=0)
    torch.testing.assert_close(clipped["b"], torch.tensor([0.0, 0.8], dtype=torch.float64), rtol=1e-5, atol=0)
    assert clip.update({}, {})[0] == {}


@pytest.mark.parametrize("ours, theirs", CASES)
def test_chained_clipping_matches_torch_clip_then_step(ours, theirs):
    params, state = _run(fl.chain(fl.clip_by_global_norm(0.5), ours()), 4, scale=3.0)
    assert isinstance(state, tuple) and len(state) == 2 and state[1]["step"].item() == 4
    torch.testing.assert_close(params, _torch_run(theirs, 4, scale=3.0, clip=0.5))


def test_chain_runs_its_transformations_in_order():
    params = {"w": torch.zeros(1)}
    grads = {"w": torch.tensor([10.0])}
    clip_first = fl.chain(fl.clip_by_global_norm(1.0), fl.sgd(1.0))
    sgd_first = fl.chain(fl.sgd(1.0), fl.clip_by_global_norm(2.0))
    assert clip_first.update(grads, clip_first.init(params), params)[0]["w"].item() == pytest.approx(-1.0)
    assert sgd_first.update(grads, sgd_first.init(params), params)[0]["w"].item() == pytest.approx(-2.0)
