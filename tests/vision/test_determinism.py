"""Same inputs, same seed -> bitwise the same adapter, on the real EfficientNet-Lite0 ImageNet weights
(the README's promise; tests/core/test_train.py checks it for the core's `fit` on a small model)."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from helpers import GOLDFISH, needs_lite0
from helpers import run_cli as _run


@needs_lite0
def test_training_twice_on_the_real_weights_gives_bitwise_the_same_adapter(tmp_path):
    adapters = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        code, _, err = _run("train", GOLDFISH, "--backbone", "efficientnet_lite0", "--steps", 3, "--out", out,
                            "--quiet")
        assert code == 0, err
        adapters.append(load_file(out))
    a, b = adapters
    assert a.keys() == b.keys() and a.keys()  # the default keep set and targets, both runs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith(".B") and a[k].abs().sum() > 0 for k in a)  # it trained: B left zero
