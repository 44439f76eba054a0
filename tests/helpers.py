"""Helpers shared by test modules (importable: tests/ is on sys.path via conftest.py)."""
import torch

import funclora as fl


def trained(model, cfg, seed=0):
    """An adapter with non-zero B (as after training), so that the adapters change the output."""
    lora = fl.init_lora(model, cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    return {n: {"A": ab["A"], "B": 0.1 * torch.randn(ab["B"].shape, generator=g)} for n, ab in lora.items()}


def check_split(model, cfg, x):
    prefix, suffix = fl.split(model, cfg)
    base, lora, f = fl.freeze(model), trained(model, cfg), fl.functional(model, cfg)
    feats = prefix(base, x)
    assert isinstance(feats, tuple)
    assert not any(isinstance(t, torch.Tensor) and t.requires_grad for t in feats)
    with torch.no_grad():
        torch.testing.assert_close(suffix(base, lora, feats), f(base, lora, x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(suffix(base, None, feats), f(base, None, x), rtol=1e-5, atol=1e-6)
        # Features belong to the base they came from: a merged base has its own.
        merged = fl.merge(base, lora, cfg)
        torch.testing.assert_close(suffix(merged, None, prefix(merged, x)), f(merged, None, x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(suffix(base, lora, feats), f(base, lora, x), rtol=1e-5, atol=1e-6)  # cache intact
    return feats
