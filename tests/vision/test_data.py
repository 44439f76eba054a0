"""Specification of funclora.vision.data: class folders, the validation split and the seeded batch order."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from funclora.vision.data import (EpochBatches, ImageFiles, class_folders, collate, epoch_order, is_class_folder,
                                  loader, split_val)
from funclora.vision.features import BATCH


def _folders(root, counts: dict[str, int]):
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (6, 6), (i * 20, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_class_folders_are_sorted_by_name_and_images_within_them(tmp_path):
    _folders(tmp_path, {"sandal": 2, "boot": 3, "Coat": 1})
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    paths, labels, classes = class_folders(tmp_path)
    assert classes == ("Coat", "boot", "sandal")
    assert labels == [0, 1, 1, 1, 2, 2]
    assert [p.parent.name + "/" + p.name for p in paths[:3]] == ["Coat/0.png", "boot/0.png", "boot/1.png"]


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    _folders(tmp_path, {"boot": 2})
    (tmp_path / "sandal").mkdir()
    with pytest.raises(ValueError, match=r"sandal: class folder 'sandal' has no images"):
        class_folders(tmp_path)


def test_loose_images_and_missing_folders_are_errors_naming_them(tmp_path):
    _folders(tmp_path, {"boot": 1})
    Image.new("RGB", (4, 4)).save(tmp_path / "stray.png")
    with pytest.raises(ValueError, match=r"images \['stray.png'\] lie directly in the folder"):
        class_folders(tmp_path)
    with pytest.raises(ValueError, match="no such folder"):
        class_folders(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        (tmp_path / "empty").mkdir()
        class_folders(tmp_path / "empty")


def test_a_class_folder_is_told_from_a_flat_folder_of_images(tmp_path):
    assert is_class_folder(_folders(tmp_path / "ds", {"a": 1, "b": 1}))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "x.png")
    assert not is_class_folder(flat) and not is_class_folder(flat / "x.png") and not is_class_folder(tmp_path / "no")


def test_the_validation_split_holds_out_a_fraction_of_each_class_from_the_seed():
    labels = [0] * 10 + [1] * 4 + [2]
    train, val = split_val(labels, 0.25, seed=0)
    assert sorted(train + val) == list(range(15)) and not set(train) & set(val)
    assert [labels[i] for i in val].count(0) == 2 and [labels[i] for i in val].count(1) == 1
    assert 14 in train  # a class of one image keeps it for training
    assert split_val(labels, 0.25, seed=0) == (train, val) and split_val(labels, 0.25, seed=1) != (train, val)
    with pytest.raises(ValueError, match="fraction in"):
        split_val(labels, 1.0)


def test_each_epoch_has_its_own_order_fixed_by_seed_and_epoch():
    assert epoch_order(20, 0, 0) == epoch_order(20, 0, 0)
    assert epoch_order(20, 0, 0) != epoch_order(20, 0, 1) and epoch_order(20, 0, 0) != epoch_order(20, 1, 0)
    assert sorted(epoch_order(20, 3, 5)) == list(range(20))


def test_batches_resume_at_any_position_and_shards_cover_each_global_batch():
    whole = list(EpochBatches(10, batch_size=4, seed=0, epoch=2))
    assert [len(b) for b in whole] == [4, 4, 2] and sorted(sum(whole, [])) == list(range(10))
    assert list(EpochBatches(10, 4, 0, 2, start=1)) == whole[1:] and len(EpochBatches(10, 4, 0, 2, start=1)) == 2
    shards = [list(EpochBatches(10, 4, 0, 2, rank=r, world=2)) for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*shards)] == [sorted(b) for b in whole]


def test_the_loader_gives_the_same_batches_with_or_without_workers(tmp_path):
    paths, labels, _ = class_folders(_folders(tmp_path, {"a": 3, "b": 4}))
    data = ImageFiles(paths, labels, lambda image: torch.tensor(image.getpixel((0, 0)), dtype=torch.float32))
    plain = list(loader(data, 3, seed=1, epoch=0))
    threaded = list(loader(data, 3, seed=1, epoch=0, workers=2))
    assert len(plain) == 3 and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(plain, threaded))
    order = epoch_order(7, 1, 0)
    assert plain[0][1].tolist() == [labels[i] for i in order[:3]]


def test_collate_stacks_tensors_and_feature_tuples_and_fills_in_the_batch_size():
    x, y = collate([(torch.ones(2), 0), (torch.zeros(2), 1)])
    assert x.shape == (2, 2) and y.tolist() == [0, 1]
    (a, n, c), _ = collate([((torch.ones(3), BATCH, 7), 1)] * 5)
    assert a.shape == (5, 3) and n == 5 and c == 7
