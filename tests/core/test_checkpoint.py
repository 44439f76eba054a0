"""Specification of funclora.checkpoint: the whole training state round-trips bit for bit, is written
atomically, and an interrupted run resumed from it ends exactly where the uninterrupted run ends."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils._pytree import tree_leaves

import funclora as fl
from funclora.checkpoint import check_settings, latest_checkpoint, load_checkpoint, save_checkpoint


def _equal(a, b) -> bool:
    la, lb = tree_leaves(a), tree_leaves(b)
    return len(la) == len(lb) and all(
        (isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and u.dtype == v.dtype and torch.equal(u, v))
        or (not isinstance(u, torch.Tensor) and u == v) for u, v in zip(la, lb))


def test_a_pytree_of_tensors_numbers_and_none_round_trips_bitwise(tmp_path):
    tree = {"params": {"lora": {"fc": {"A": torch.randn(2, 3), "B": torch.zeros(4, 2)}},
                       "head": {"weight": torch.randn(3, 5, dtype=torch.bfloat16), "bias": torch.randn(3)}},
            "state": {"step": 12, "mu": [torch.randn(2)], "nu": (torch.randn(1, dtype=torch.float64),)},
            "losses": [0.1, 1 / 3, 2.5e-300], "best": None, "name": "x", "rng": {"torch": torch.get_rng_state()}}
    path = save_checkpoint(tmp_path, 12, tree, settings={"lr": "0.01"})
    back, info = load_checkpoint(path)
    assert _equal(back, tree) and info == {"step": 12, "settings": {"lr": "0.01"}}
    assert type(back["state"]["nu"]) is tuple


def test_tensors_that_share_memory_are_saved_each_on_its_own(tmp_path):
    zeros = torch.zeros(3)
    state = fl.adam(0.1).init({"w": zeros})  # Adam starts mu and nu as one tensor
    back, _ = load_checkpoint(save_checkpoint(tmp_path, 0, state))
    assert _equal(back, state)


def test_only_the_newest_checkpoints_are_kept_and_latest_is_the_highest_step(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, {"x": torch.tensor(step)}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000010.safetensors", "step-000000015.safetensors"]
    assert latest_checkpoint(tmp_path).name == "step-000000015.safetensors"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_a_write_that_fails_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    first = save_checkpoint(tmp_path, 1, {"x": torch.ones(2)})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("funclora.checkpoint.save_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, 2, {"x": torch.zeros(2)})
    assert os.listdir(tmp_path) == [first.name]
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))[0]["x"], torch.ones(2))


def test_other_files_are_refused_naming_the_file(tmp_path):
    adapter = tmp_path / "a.safetensors"
    model = torch.nn.Linear(2, 2)
    fl.save(adapter, fl.init_lora(model, fl.LoraConfig(rank=1)), fl.LoraConfig(rank=1))
    with pytest.raises(ValueError, match="a.safetensors: not a funclora checkpoint"):
        load_checkpoint(adapter)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="checkpoint: leaf 0 is a object"):
        save_checkpoint(tmp_path, 0, [object()])


def test_different_settings_are_refused_naming_each_difference():
    check_settings({"lr": "0.1", "seed": "0"}, {"lr": "0.1", "seed": "0"})
    with pytest.raises(ValueError) as error:
        check_settings({"lr": "0.1", "seed": "0", "data": "5 images"}, {"lr": "0.2", "seed": "0", "data": "6 images"})
    message = str(error.value)
    assert "lr was 0.1, now 0.2" in message and "data was 5 images, now 6 images" in message
    assert "seed" not in message


class _Stop(Exception):
    pass


def test_a_run_interrupted_and_resumed_from_its_checkpoint_ends_bitwise_equal(tmp_path):
    """The loop a training command runs: minibatches, checkpoints every 3 steps. The interrupted run
    dies after step 7 (its last checkpoint is step 6) and resumes from step 6."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    cfg = fl.LoraConfig(rank=2, targets=("0",))
    body, base = fl.headless(model, "2"), None
    base = fl.freeze(body)
    f = fl.with_head(fl.functional(body, cfg))
    data = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(10)]
    start = {"lora": fl.init_lora(body, cfg, seed=1), "head": fl.new_head(8, 3, seed=1)}
    opt = fl.adam(0.05)

    def run(folder, params, state=None, done=0, losses=(), stop_after=None):
        losses = list(losses)

        def on_step(step, params, state, history):
            losses.append(history["loss"][-1])
            if step % 3 == 0:
                save_checkpoint(folder, step, {"params": params, "state": state, "losses": losses})
            if step == stop_after:
                raise _Stop
        params, state, _ = fl.fit_batches(f, base, params, data[done:], opt=opt, state=state, start=done,
                                          on_step=on_step, progress=False)
        return params, losses

    whole, whole_losses = run(tmp_path / "a", start)
    with pytest.raises(_Stop):
        run(tmp_path / "b", start, stop_after=7)
    tree, info = load_checkpoint(latest_checkpoint(tmp_path / "b"))
    assert info["step"] == 6
    resumed, resumed_losses = run(tmp_path / "b", tree["params"], tree["state"], info["step"], tree["losses"])
    assert _equal(resumed, whole) and resumed_losses == whole_losses and len(whole_losses) == 10
