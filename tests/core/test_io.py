"""save/load: safetensors files with the config in the header; bitwise round trips, clear refusals."""
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import funclora as fl
from layers import layers

configs = st.builds(
    fl.LoraConfig,
    rank=st.integers(1, 6),
    alpha=st.one_of(st.none(), st.floats(0.1, 64)),
    init=st.sampled_from(["gaussian", "kaiming"]),
    dropout=st.sampled_from([0.0, 0.1]),
    use_rslora=st.booleans(),
    alpha_pattern=st.dictionaries(st.sampled_from(["0", "x.*"]), st.floats(0.5, 8), max_size=2),
)


@given(layers(), configs, st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
       st.integers(0, 2**16))
def test_save_load_round_trips_bitwise(tmp_path_factory, case, cfg, dtype, seed):
    layer, _ = case
    model = nn.Sequential(layer).to(dtype)
    lora = fl.init_lora(model, cfg, seed=seed)
    lora["0"]["B"] = torch.randn(lora["0"]["B"].shape).to(dtype)
    path = tmp_path_factory.mktemp("io") / "adapter.safetensors"
    fl.save(path, lora, cfg, metadata={"backbone": "toy"})
    loaded, loaded_cfg = fl.load(path)
    assert loaded_cfg == cfg
    assert loaded.keys() == lora.keys()
    for k in "AB":
        assert loaded["0"][k].dtype == dtype and torch.equal(loaded["0"][k], lora["0"][k])
    assert fl.read_metadata(path)["backbone"] == "toy"


def test_the_file_is_plain_safetensors_with_readable_metadata(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    cfg = fl.LoraConfig(rank=1, targets=("0",))
    fl.save(tmp_path / "a.safetensors", fl.init_lora(model, cfg), cfg)
    meta = fl.read_metadata(tmp_path / "a.safetensors")
    assert json.loads(meta["config"])["targets"] == ["0"]
    assert list(tmp_path.iterdir()) == [tmp_path / "a.safetensors"]  # no temporary left behind


def test_a_failed_save_leaves_no_file(tmp_path):
    cfg = fl.LoraConfig(rank=1)
    with pytest.raises(Exception):
        fl.save(tmp_path / "a.safetensors", {"0": {"A": "not a tensor", "B": torch.zeros(1)}}, cfg)
    assert list(tmp_path.iterdir()) == []


def test_loading_something_else_is_refused_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match="no such adapter file"):
        fl.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_text("hello")
    with pytest.raises(ValueError, match="junk.safetensors: not a safetensors file"):
        fl.load(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="plain.safetensors: not a funclora adapter"):
        fl.load(tmp_path / "plain.safetensors")
