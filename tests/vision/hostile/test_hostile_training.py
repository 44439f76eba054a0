"""Hostile training runs: a learning rate that blows the adapter up is refused (nothing written,
never a NaN file); a loss that grows by orders of magnitude is warned about loudly, and with
--strict refused.
"""
import math

import pytest
import torch

import funclora as fl
import funclora.train
from funclora.vision.guard import BLOWUP, loss_blowup
from hostile import LITE, assert_finite_files, cli, fails, one_line, snapshot, tiny_images, train_args


# λ = 10 (not the default 3): the keep term's gradient is what pushes the adapter past float32 in 2 steps.
@pytest.mark.parametrize("extra", [["--lr", "1e30", "--keep", "__IMAGES__"], ["--lr", "1e38", "--keep", "__IMAGES__"],
                                   ["--alpha", "1e38", "--lr", "1e10", "--keep", "__IMAGES__"]], ids=str)
def test_a_diverging_run_is_refused_and_writes_nothing(extra, tmp_path):
    images = tiny_images(tmp_path / "images")
    before = snapshot(tmp_path)
    argv = [a if a != "__IMAGES__" else images for a in extra]
    line = fails(cli("train", images, *LITE, "--quiet", "--out", tmp_path / "a.safetensors", *argv, "--keep-weight", 10,
                     "--steps", 2))
    assert "not finite" in line or "diverged" in line
    assert snapshot(tmp_path) == before and assert_finite_files(tmp_path) == 0


@pytest.fixture
def growing_loss(monkeypatch):
    """Every step's loss 1e3 times the last (the adapter itself stays finite and unchanged)."""
    real = funclora.train.make_step

    def make_step(*args, **kwargs):
        step = real(*args, **kwargs)
        count = []

        def grown(lora, state, base, x, y):
            lora2, state2, loss, parts = step(lora, state, base, x, y)
            count.append(1)
            return lora, state2, loss * 1e3 ** (len(count) - 1), parts
        return grown

    monkeypatch.setattr(funclora.train, "make_step", make_step)


def test_a_loss_grown_1e5_times_is_saved_with_a_loud_warning(tmp_path, growing_loss):
    images = tiny_images(tmp_path / "images")
    code, out, err = cli(*train_args(images, tmp_path / "a.safetensors", "--steps", 3))
    assert code == 0
    line = one_line(err, "warning", "diverged", "--lr", "--strict")
    assert "1e+06x" in line
    assert assert_finite_files(tmp_path) == 1


def test_strict_refuses_a_grown_loss_and_writes_nothing(tmp_path, growing_loss):
    images = tiny_images(tmp_path / "images")
    before = snapshot(tmp_path)
    line = fails(cli(*train_args(images, tmp_path / "a.safetensors", "--steps", 3, "--strict")), "diverged")
    assert "nothing saved" in line and snapshot(tmp_path) == before


@pytest.mark.parametrize("losses, diverged", [
    ([6.9, 6.9 * BLOWUP * 1.01], True), ([6.9, 6.9 * BLOWUP * 0.99], False), ([6.9, 0.01], False),
    ([0.0, 5.0], False), ([], False), ([1.0], False), ([1.0, math.nan], True), ([1.0, math.inf], True),
    ([1e-3, 1e3], True), ([5.0, 1e3, 5.0], False),
])
def test_what_counts_as_a_diverged_loss(losses, diverged):
    assert (loss_blowup(losses) is not None) == diverged


def test_zero_steps_saves_the_untrained_adapter(tmp_path):
    images = tiny_images(tmp_path / "images")
    code, _, err = cli(*train_args(images, tmp_path / "a.safetensors", "--steps", 0))
    assert code == 0 and err == ""
    lora, _ = fl.load(tmp_path / "a.safetensors")
    assert torch.count_nonzero(lora["_fc"]["B"]) == 0
