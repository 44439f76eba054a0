"""freeze: the base model as a read-only pytree that shares the model's storage."""
import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

import funclora as fl


def test_freeze_holds_every_parameter_and_buffer_detached_without_copying():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    base = fl.freeze(model)
    assert set(base) == set(model.state_dict())
    assert not any(t.requires_grad for t in base.values())
    assert base["0.weight"].data_ptr() == model[0].weight.data_ptr()


def test_freeze_is_read_only():
    base = fl.freeze(nn.Linear(2, 2))
    with pytest.raises(TypeError):
        base["weight"] = torch.zeros(2, 2)
    with pytest.raises(TypeError):
        del base["weight"]
    with pytest.raises(TypeError):
        base._tensors = {}


def test_frozen_params_is_a_pytree_node():
    base = fl.freeze(nn.Linear(3, 2))
    leaves, _ = tree_flatten(base)
    assert len(leaves) == 2
    doubled = tree_map(lambda t: 2 * t, base)
    assert isinstance(doubled, fl.FrozenParams) and torch.equal(doubled["bias"], 2 * base["bias"])


def test_summary_counts_the_adapter_against_the_model():
    model = nn.Sequential(nn.Linear(100, 50))
    lora = fl.init_lora(model, fl.LoraConfig(rank=2))
    assert fl.count(lora) == 2 * 100 + 50 * 2
    assert fl.summary(model, lora) == "trainable 300 of 5,050 (5.94%)"


def test_the_core_imports_neither_torchvision_nor_pil_nor_the_application():
    import subprocess
    import sys

    code = ("import sys, funclora; bad = [m for m in ('torchvision', 'PIL', 'funclora.vision') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_training_is_part_of_the_public_api():
    import funclora.train

    assert (fl.fit, fl.make_step, fl.make_loss) == (funclora.train.fit, funclora.train.make_step, funclora.train.make_loss)
    assert fl.keep_term is __import__("funclora.keep").keep.keep_term
