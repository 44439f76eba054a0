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


def test_the_benchmark_draws_test_accuracy_per_epoch_and_tabulates_every_row(tmp_path):
    rows = [{"setting": name, "test_top1": acc[-1], "trainable": n, "trainable_pct": 100 * n / bench_data.LITE0_PARAMS,
             "adapter_kb": n / 256, "epochs": len(acc), "s_per_epoch": 1.5, "peak_rss_mb": 900.0, "images": 30,
             "features_s": None, "test_top1_per_epoch": acc}
            for name, n, acc in (("head only", 12810, [0.8, 0.85]), ("LoRA + head", 88346, [0.82, 0.88, 0.9]))]
    results = {"rows": rows, "cache": {"images": 10, "cached_s": 0.5, "recomputed_s": 20.0, "speedup": 40.0},
               "memory": {"images": [3, 30], "peak_rss_mb": [900.0, 930.0], "growth_pct": 3.3}}
    picture = tmp_path / "bench_data.png"
    bench_data.plot(results, picture)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5000
    text = bench_data.table(results)
    assert "| head only | 85.0% | 12,810 (0.28%)" in text and "| LoRA + head | 90.0% | 88,346 (1.90%)" in text
    assert "(40x)" in text and "(+3.3%)" in text
