"""fl.split on a real backbone's module tree (the split itself: tests/core/test_cache.py)."""
import warnings

import torch

import funclora as fl
from funclora.vision.backbones import load_backbone
from helpers import check_split


def test_efficientnet_lite0_head_caches_its_pooled_features():
    torch.manual_seed(0)
    backbone = load_backbone("efficientnet_lite0", weights=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fl.NoCacheWarning)  # it traces
        feats = check_split(backbone.model, fl.LoraConfig(rank=4, targets=backbone.targets),
                             torch.randn(2, 3, 224, 224))
    assert [tuple(t.shape) for t in feats] == [(2, 1280), (2, 1000)]  # pooled features, _fc's W x + b
