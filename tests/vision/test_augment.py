"""Specification of funclora.vision.augment and `funclora train --augment`: a fresh, seeded draw per step."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from funclora.vision.augment import augment_image, augmented_batches
from helpers import GOLDFISH
from helpers import run_cli as _run

FISH = sorted(GOLDFISH.glob("*.png"))


def _preprocess(image: Image.Image) -> torch.Tensor:
    return to_tensor(image.resize((32, 32)))


def test_each_step_draws_a_new_batch_and_the_same_step_draws_the_same_one():
    images = [Image.open(p).convert("RGB") for p in FISH[:2]]
    batches = augmented_batches(images, _preprocess, seed=0)
    assert batches(0).shape == (2, 3, 32, 32)
    assert torch.equal(batches(5), batches(5))
    assert not torch.equal(batches(5), batches(6))
    assert torch.equal(augmented_batches(images, _preprocess, seed=0)(5), batches(5))  # seeded
    assert not torch.equal(augmented_batches(images, _preprocess, seed=1)(5), batches(5))
    assert not torch.equal(batches(0)[0], batches(0)[1])


def test_an_augmented_image_keeps_its_size_and_mode_and_stays_close_to_the_original():
    image = Image.open(FISH[0]).convert("RGB")
    variants = [augment_image(image, seed) for seed in range(6)]
    assert all(v.size == image.size and v.mode == "RGB" for v in variants)
    original = to_tensor(image)
    changes = [(to_tensor(v) - original).abs().mean().item() for v in variants]
    assert all(0 < c < 0.3 for c in changes)  # light: changed, but still the same picture


def test_drawing_leaves_torchs_global_random_state_alone():
    image = Image.open(FISH[0]).convert("RGB")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    augment_image(image, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        augmented_batches([], _preprocess)


def test_train_augment_runs_and_is_reproducible(tmp_path):
    fish = tmp_path / "fish"
    fish.mkdir()
    shutil.copy(FISH[0], fish)
    outputs = []
    for name in ("a", "b"):
        code, out, err = _run("train", fish, "--backbone", "efficientnet_lite0", "--weights", "none", "--steps", 2,
                              "--keep", "none", "--augment", "--out", tmp_path / f"{name}.safetensors", "--json")
        assert code == 0, err
        outputs.append(json.loads(out)["images"])
    assert outputs[0] == outputs[1]


def test_augment_is_for_layers_mode(tmp_path):
    shutil.copy(FISH[0], tmp_path)
    code, _, err = _run("train", tmp_path, "--backbone", "efficientnet_lite0", "--weights", "none",
                        "--mode", "seed", "--augment")
    assert code == 1 and "--augment" in err and "--mode layers" in err
