"""Specification of funclora.vision.features: frozen features on disk, reused, and invalidated exactly."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from funclora.vision.data import collate
from funclora.vision.features import (BATCH, FeatureFiles, cached_features, content_hash, setting_key,
                                      tensors_hash)


def _images(folder, n=5):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (4, 4), (40 * i, 10, 200 - 30 * i)).save(folder / f"{i}.png")
    return sorted(folder.iterdir())


class _Counting:
    """prefix(x) = (per-image mean colour, x.size(0)), counting the images it has seen."""

    def __init__(self):
        self.seen = 0

    def __call__(self, x):
        self.seen += x.shape[0]
        return x.mean(dim=(2, 3)), x.shape[0]


def test_a_second_run_reads_every_feature_back_and_computes_none(tmp_path):
    paths, prefix = _images(tmp_path / "img"), _Counting()
    files, made = cached_features(paths, prefix, to_tensor, tmp_path / "cache", "k", batch_size=2, progress=False)
    assert made == 5 and prefix.seen == 5
    again, made = cached_features(paths, prefix, to_tensor, tmp_path / "cache", "k", batch_size=2, progress=False)
    assert made == 0 and prefix.seen == 5 and again == files
    feats, label = FeatureFiles(files, [0, 1, 2, 3, 4])[3]
    assert torch.equal(feats[0], to_tensor(Image.open(paths[3]).convert("RGB")).mean(dim=(1, 2))) and label == 3
    assert feats[1] is BATCH  # the traced batch size becomes each batch's own
    (means, n), labels = collate([FeatureFiles(files, [0] * 5)[i] for i in range(3)])
    assert means.shape == (3, 3) and n == 3


def test_a_changed_image_is_recomputed_alone(tmp_path):
    paths, prefix = _images(tmp_path / "img"), _Counting()
    files, _ = cached_features(paths, prefix, to_tensor, tmp_path / "cache", "k", batch_size=1, progress=False)
    Image.new("RGB", (4, 4), (1, 2, 3)).save(paths[2])
    new_files, made = cached_features(paths, prefix, to_tensor, tmp_path / "cache", "k", batch_size=1, progress=False)
    assert made == 1 and prefix.seen == 6
    assert [a == b for a, b in zip(files, new_files)] == [True, True, False, True, True]
    assert new_files[2].stem == content_hash(paths[2])


def test_a_changed_setting_is_another_key_and_recomputes_everything(tmp_path):
    paths = _images(tmp_path / "img", 3)
    base = {"w": torch.ones(2)}
    key = setting_key(backbone="b", weights=tensors_hash(base), preprocess="p")
    assert key == setting_key(preprocess="p", backbone="b", weights=tensors_hash({"w": torch.ones(2)}))
    for other in (setting_key(backbone="b", weights=tensors_hash({"w": torch.tensor([1.0, 1.5])}), preprocess="p"),
                  setting_key(backbone="b", weights=tensors_hash(base), preprocess="q"),
                  setting_key(backbone="b", weights=tensors_hash({"w": torch.ones(2, dtype=torch.float64)}),
                              preprocess="p")):
        assert other != key
    cached_features(paths, _Counting(), to_tensor, tmp_path / "cache", key, progress=False)
    other = setting_key(backbone="b", weights=tensors_hash(base), preprocess="q")
    assert cached_features(paths, _Counting(), to_tensor, tmp_path / "cache", other, progress=False)[1] == 3


def test_a_feature_that_is_not_per_image_is_refused(tmp_path):
    paths = _images(tmp_path / "img", 2)
    with pytest.raises(ValueError, match="feature 0 is not a per-image batch"):
        cached_features(paths, lambda x: (torch.ones(7),), to_tensor, tmp_path / "c", "k", progress=False)
    with pytest.raises(ValueError, match="feature 0 is a str"):
        cached_features(paths, lambda x: ("no",), to_tensor, tmp_path / "c", "k", progress=False)


def test_a_failed_write_leaves_no_file_behind(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img", 2)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("funclora.vision.features.save_file", full_disk)
    with pytest.raises(OSError):
        cached_features(paths, _Counting(), to_tensor, tmp_path / "c", "k", progress=False)
    assert not [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
