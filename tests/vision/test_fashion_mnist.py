"""A real dataset, a small slice: Fashion-MNIST (Debian's dataset-fashion-mnist) through `funclora train`
with a new head on EfficientNet-Lite0's real ImageNet weights. CI installs the package (.ci/run);
elsewhere the test is skipped when the files are missing."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
from pathlib import Path

import pytest

from funclora.vision.cli import main

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_data", ROOT / "scripts" / "bench_data.py")
bench_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_data)

if not (bench_data.SOURCE / "train-images-idx3-ubyte.gz").exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{bench_data.SOURCE}: Fashion-MNIST missing in CI (.ci/run installs dataset-fashion-mnist)")
    pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)", allow_module_level=True)


def test_a_new_head_on_lite0_features_learns_fashion_mnist_from_a_small_slice(tmp_path):
    train = bench_data.export("train", 200, tmp_path / "train")
    test = bench_data.export("t10k", 100, tmp_path / "test")
    assert sorted(p.name for p in train.iterdir() if p.is_dir()) == sorted(bench_data.CLASSES)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", str(train), "--backbone", "efficientnet_lite0", "--head", "new", "--epochs", "8",
                     "--batch-size", "16", "--lr", "3e-3", "--val", str(test), "--cache", str(tmp_path / "cache"),
                     "--out", str(tmp_path / "fmnist.safetensors"), "--json"])
    assert code == 0, err.getvalue()
    result = json.loads(out.getvalue())
    assert result["classes"] == sorted(bench_data.CLASSES) and result["images"] == 200
    last = result["history"][-1]["val"]["top1"]
    assert last >= 0.6, result["history"]  # chance is 0.1; a linear probe on 200 images reaches ~0.7
