"""Specification of funclora.train: a pure training step over the adapters, and a loop of them."""
from __future__ import annotations

import pytest
import torch
from torch.utils._pytree import tree_leaves, tree_map

import funclora as fl
from funclora.train import cross_entropy, fit, make_loss, make_step


def _problem(seed: int = 0):
    """A small conv + linear classifier, its adapters on every layer, and a batch to learn."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).eval()
    cfg = fl.LoraConfig(rank=2)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 5, (8,))
    return model, cfg, fl.freeze(model), fl.functional(model, cfg), x, y


def _copy(tree):
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tree)


def _bitwise_equal(a, b) -> bool:
    la, lb = tree_leaves(a), tree_leaves(b)
    return len(la) == len(lb) and all(
        torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v for u, v in zip(la, lb))


def test_cross_entropy_is_the_mean_negative_log_likelihood():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 2])
    expected = -(logits.log_softmax(-1)[[0, 1], labels]).mean()
    assert torch.allclose(cross_entropy(logits, labels), expected)


def test_a_step_lowers_the_loss_and_returns_new_adapters_and_state():
    model, cfg, base, f, x, y = _problem()
    opt = fl.adam(1e-2)
    lora = fl.init_lora(model, cfg, seed=0)
    state = opt.init(lora)
    lora_before, state_before = _copy(lora), _copy(state)

    new_lora, new_state, loss = make_step(f, opt)(lora, state, base, x, y)

    assert loss.ndim == 0 and not loss.requires_grad
    assert loss == make_loss(f)(lora, base, x, y)  # the loss of the lora it was given
    assert new_state["step"] == 1 and not _bitwise_equal(new_lora, lora)
    assert _bitwise_equal(lora, lora_before) and _bitwise_equal(state, state_before)  # inputs untouched
    assert make_loss(f)(new_lora, base, x, y) < loss


def test_the_base_stays_bitwise_unchanged_after_training():
    model, cfg, base, f, x, y = _problem()
    snapshot = {k: v.clone() for k, v in base.items()}
    module_snapshot = {k: v.clone() for k, v in model.state_dict().items()}

    lora, losses = fit(f, base, fl.init_lora(model, cfg), x, y, opt=fl.adam(5e-2), steps=25, progress=False)

    assert losses[-1] < losses[0] / 2  # it did train
    assert base.keys() == snapshot.keys()
    assert all(torch.equal(base[k], snapshot[k]) for k in snapshot)
    assert all(torch.equal(v, module_snapshot[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_gradients_are_taken_with_respect_to_the_adapters_only():
    model, cfg, base, f, x, y = _problem()
    lora = fl.init_lora(model, cfg)
    grads = torch.func.grad(make_loss(f))(lora, base, x, y)
    assert tree_map(lambda t: t.shape, grads) == tree_map(lambda t: t.shape, lora)


def test_the_same_seed_gives_bitwise_the_same_adapter():
    def run(seed):
        model, cfg, base, f, x, y = _problem()
        return fit(f, base, fl.init_lora(model, cfg, seed=seed), x, y, opt=fl.adam(1e-2), steps=10,
                   progress=False)

    (a, losses_a), (b, losses_b), (c, _) = run(0), run(0), run(1)
    assert _bitwise_equal(a, b) and losses_a == losses_b
    assert not _bitwise_equal(a, c)


def test_fit_returns_one_loss_per_step_and_zero_steps_returns_the_start():
    model, cfg, base, f, x, y = _problem()
    lora = fl.init_lora(model, cfg)
    trained, losses = fit(f, base, lora, x, y, opt=fl.sgd(0.1), steps=3, progress=False)
    assert len(losses) == 3 and losses[0] == make_loss(f)(lora, base, x, y).item()
    same, none = fit(f, base, lora, x, y, opt=fl.sgd(0.1), steps=0, progress=False)
    assert none == [] and _bitwise_equal(same, lora)


def test_an_extra_term_is_added_to_the_loss():
    model, cfg, base, f, x, y = _problem()
    lora = fl.init_lora(model, cfg)
    penalty = lambda lora, base: sum(t.square().sum() for t in tree_leaves(lora))  # noqa: E731
    plain, with_extra = make_loss(f), make_loss(f, extra=penalty)
    assert torch.allclose(with_extra(lora, base, x, y), plain(lora, base, x, y) + penalty(lora, base))
    # Trained with a heavy penalty the adapters stay smaller.
    small, _ = fit(f, base, lora, x, y, opt=fl.adam(1e-2), steps=10, extra=lambda l, b: 10 * penalty(l, b),
                   progress=False)
    free, _ = fit(f, base, lora, x, y, opt=fl.adam(1e-2), steps=10, progress=False)
    assert penalty(small, base) < penalty(free, base)


def test_the_trained_function_may_read_precomputed_features():
    # A frozen prefix run once, its output fed to the trainable suffix: f only has to be pure.
    model, cfg, base, f, x, y = _problem()
    head = torch.nn.Sequential(model[3]).eval()
    head_cfg = fl.LoraConfig(rank=2)
    features = model[:3](x).detach()
    lora, losses = fit(fl.functional(head, head_cfg), fl.freeze(head), fl.init_lora(head, head_cfg), features, y,
                       opt=fl.adam(5e-2), steps=20, progress=False)
    assert losses[-1] < losses[0]


def test_progress_goes_to_stderr_and_can_be_silenced(capsys):
    model, cfg, base, f, x, y = _problem()
    fit(f, base, fl.init_lora(model, cfg), x, y, opt=fl.sgd(0.1), steps=2, progress=True)
    shown = capsys.readouterr()
    assert shown.out == "" and "training" in shown.err and "0/2" in shown.err
    fit(f, base, fl.init_lora(model, cfg), x, y, opt=fl.sgd(0.1), steps=2, progress=False)
    assert capsys.readouterr() == ("", "")


def test_a_diverging_run_stops_with_an_error_naming_the_step():
    model, cfg, base, f, x, y = _problem()
    with pytest.raises(ValueError, match=r"diverged at step \d+.*learning rate"):
        fit(f, base, fl.init_lora(model, cfg), x, y, opt=fl.sgd(1e30), steps=5, progress=False)


def test_an_adapter_made_infinite_by_one_step_is_refused_naming_the_step_and_layer():
    model, cfg, base, f, x, y = _problem()
    # The loss of step 1 is computed before its update, so it is finite: only the adapter shows it.
    with pytest.raises(ValueError, match=r"diverged at step 1: the adapter of layer '0' \(A\) is not finite "
                                         r"\((inf|nan)\).*learning rate"):
        fit(f, base, fl.init_lora(model, cfg), x, y, opt=fl.adam(lr=1e39), steps=1, progress=False)


def _sqrt_problem():
    """Loss 0 at A = 0, whose gradient through sqrt is 0 * inf = nan: the loss stays finite."""
    f = lambda base, lora, x: (lora["l"]["A"].sqrt() * 0).sum() + (lora["l"]["B"] * x).sum()  # noqa: E731
    return f, {"l": {"B": torch.ones(2), "A": torch.zeros(2)}}


def test_a_nan_adapter_is_named_nan():
    f, lora = _sqrt_problem()
    with pytest.raises(ValueError, match=r"step 1: the adapter of layer 'l' \(A\) is not finite \(nan\)"):
        fit(f, None, lora, torch.ones(2), None, opt=fl.sgd(0.1), steps=3, loss_fn=lambda out, y: out,
            progress=False)


def test_an_adapter_that_is_not_a_layer_dict_is_checked_too():
    f, lora = _sqrt_problem()
    g = lambda base, tree, x: f(base, {"l": {"A": tree[0], "B": tree[1]}}, x)  # noqa: E731
    with pytest.raises(ValueError, match=r"step 1: the adapter is not finite after the update"):
        fit(g, None, (lora["l"]["A"], lora["l"]["B"]), torch.ones(2), None, opt=fl.sgd(0.1), steps=3,
            loss_fn=lambda out, y: out, progress=False)


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_steps_must_be_a_whole_number(steps):
    model, cfg, base, f, x, y = _problem()
    with pytest.raises(ValueError, match="steps must be an integer"):
        fit(f, base, fl.init_lora(model, cfg), x, y, opt=fl.sgd(0.1), steps=steps, progress=False)


def test_terms_gives_each_part_of_the_loss_per_step():
    model, cfg, base, f, x, y = _problem()
    lora = fl.init_lora(model, cfg)
    penalty = lambda lora, base: sum(t.square().sum() for t in tree_leaves(lora))  # noqa: E731
    trained, history = fit(f, base, lora, x, y, opt=fl.adam(1e-2), steps=4, extra=penalty, progress=False,
                           terms=True)
    _, losses = fit(f, base, lora, x, y, opt=fl.adam(1e-2), steps=4, extra=penalty, progress=False)
    assert set(history) == {"loss", "train", "extra"} and history["loss"] == losses
    assert all(len(v) == 4 for v in history.values())
    assert history["train"][0] == make_loss(f)(lora, base, x, y).item()
    assert history["extra"][0] == penalty(lora, base).item()
    assert all(t + e == pytest.approx(total) for t, e, total in zip(history["train"], history["extra"], losses))
    _, plain = fit(f, base, lora, x, y, opt=fl.adam(1e-2), steps=2, progress=False, terms=True)
    assert plain["extra"] == [0.0, 0.0]


def test_x_may_be_a_function_of_the_step_that_returns_its_batch():
    model, cfg, base, f, x, y = _problem()
    asked = []

    def batches(step):
        asked.append(step)
        return x + 0.01 * step

    lora, losses = fit(f, base, fl.init_lora(model, cfg), batches, y, opt=fl.adam(1e-2), steps=3, progress=False)
    assert asked == [0, 1, 2] and len(losses) == 3
    same, _ = fit(f, base, fl.init_lora(model, cfg), lambda step: x, y, opt=fl.adam(1e-2), steps=3, progress=False)
    fixed, _ = fit(f, base, fl.init_lora(model, cfg), x, y, opt=fl.adam(1e-2), steps=3, progress=False)
    assert _bitwise_equal(same, fixed)


def test_compile_runs_the_same_steps_under_torch_compile():
    model, cfg, base, f, x, y = _problem()
    lora = fl.init_lora(model, cfg)
    eager, eager_losses = fit(f, base, lora, x, y, opt=fl.adam(1e-2), steps=3, progress=False)
    compiled, losses = fit(f, base, lora, x, y, opt=fl.adam(1e-2), steps=3, progress=False, compile="aot_eager")
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    for n in lora:
        for k in "AB":
            torch.testing.assert_close(compiled[n][k], eager[n][k], rtol=1e-5, atol=1e-6)
