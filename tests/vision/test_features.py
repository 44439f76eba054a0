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


def test_two_ranks_share_one_cache_each_computing_its_chunks_and_both_read_every_file_whole(tmp_path):
    # Started without torchrun (the env it would set): rank 0 is slow, rank 1 must wait for its files.
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import REPO, free_port

    paths = _images(tmp_path / "img", 5)  # chunks of 2: [0, 1] [2, 3] [4] -> rank 0 owns 0 and 2, rank 1 owns 1
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    worker = Path(__file__).with_name("features_worker.py")
    ranks = [subprocess.Popen([sys.executable, str(worker), str(tmp_path / "img"), str(tmp_path / "cache"),
                               str(tmp_path)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        errors = [p.communicate(timeout=120)[1] for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    assert [p.returncode for p in ranks] == [0, 0], errors
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert got[0]["seen"] == [2, 1] and got[1]["seen"] == [2]  # each its own chunks, none twice
    assert got[0]["made"] == got[1]["made"] == 5  # the total, on every rank
    expected = [to_tensor(Image.open(p).convert("RGB")).mean(dim=(1, 2)).tolist() for p in paths]
    assert got[0]["means"] == got[1]["means"] == expected
