"""Hostile PEFT adapter folders, both ways: from_peft refuses badly typed or non-finite adapters and
invalid patterns, naming the file; to_peft writes the folder atomically and never writes NaN.
"""
import json

import pytest
import torch
from safetensors.torch import save_file

import funclora as fl
from funclora import peft
from hostile import snapshot

MODEL = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
CFG = fl.LoraConfig(rank=2)


def _folder(tmp_path, change=None, drop=(), tensors=None, raw_config=None):
    directory = tmp_path / "peft"
    lora = fl.init_lora(MODEL, CFG)
    fl.to_peft(lora, CFG, directory, model=MODEL)
    config = json.loads((directory / peft.CONFIG_NAME).read_text())
    config.update(change or {})
    for key in drop:
        del config[key]
    (directory / peft.CONFIG_NAME).write_text(raw_config if raw_config is not None else json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(directory / peft.WEIGHTS_NAME))
    return directory


def _weights(**change):
    base = {f"base_model.model.{n}.lora_{p}.weight": t for n, ab in fl.init_lora(MODEL, CFG).items()
            for p, t in ab.items()}
    base.update(change)
    return base


A0 = "base_model.model.0.lora_A.weight"
B2 = "base_model.model.2.lora_B.weight"
BAD = {
    "use_rslora-string-false": ({"use_rslora": "false"}, None, None, "use_rslora must be true or false"),
    "use_rslora-string-no": ({"use_rslora": "no"}, None, None, "use_rslora must be true or false"),
    "use_rslora-1": ({"use_rslora": 1}, None, None, "use_rslora must be true or false"),
    "r-string": ({"r": "2"}, None, None, "r must be an integer"),
    "r-float": ({"r": 2.0}, None, None, "r must be an integer"),
    "lora_alpha-string": ({"lora_alpha": "16"}, None, None, "lora_alpha must be a number"),
    "lora_alpha-bool": ({"lora_alpha": True}, None, None, "lora_alpha must be a number"),
    "lora_dropout-string": ({"lora_dropout": "0"}, None, None, "lora_dropout must be a number"),
    "rank_pattern-list": ({"rank_pattern": [1, 2]}, None, None, "rank_pattern must be an object"),
    "alpha_pattern-string": ({"alpha_pattern": "x"}, None, None, "alpha_pattern must be an object"),
    "rank_pattern-bad-regex": ({"rank_pattern": {"(": 2}}, None, None, "not a valid regular expression"),
    "alpha_pattern-bad-regex": ({"alpha_pattern": {"[0": 1}}, None, None, "not a valid regular expression"),
    "rank_pattern-bad-regex-star": ({"rank_pattern": {"*": 2}}, None, None, "not a valid regular expression"),
    "peft_type-missing": (None, ("peft_type",), None, "peft_type is None"),
    "peft_type-prefix": ({"peft_type": "PREFIX_TUNING"}, None, None, "peft_type is 'PREFIX_TUNING'"),
    "dora": ({"use_dora": True}, None, None, "DoRA"),
    "nan-weights": (None, (), _weights(**{A0: torch.full((2, 4), float("nan"))}), "non-finite"),
    "inf-weights": (None, (), _weights(**{B2: torch.full((2, 2), float("inf"))}), "non-finite"),
    "int64-weights": (None, (), _weights(**{A0: torch.zeros(2, 4, dtype=torch.int64)}), "not a float"),
    "bool-weights": (None, (), _weights(**{B2: torch.zeros(2, 2, dtype=torch.bool)}), "not a float"),
    "no-weights": (None, (), {}, "holds no LoRA weights|no LoRA"),
}


@pytest.mark.parametrize("case", BAD)
def test_from_peft_refuses_a_hostile_adapter_folder(case, tmp_path):
    change, drop, tensors, message = BAD[case]
    directory = _folder(tmp_path, change, drop or (), tensors)
    with pytest.raises(ValueError, match=message) as error:
        fl.from_peft(directory, model=MODEL)
    assert str(directory) in str(error.value)


@pytest.mark.parametrize("raw", ["null", "[]", "not json", "", "5"])
def test_from_peft_refuses_a_config_that_is_no_json_object(raw, tmp_path):
    with pytest.raises(ValueError, match="adapter_config.json"):
        fl.from_peft(_folder(tmp_path, raw_config=raw), model=MODEL)


@pytest.mark.parametrize("missing", [peft.CONFIG_NAME, peft.WEIGHTS_NAME])
def test_from_peft_refuses_a_folder_missing_a_file(missing, tmp_path):
    directory = _folder(tmp_path)
    (directory / missing).unlink()
    with pytest.raises(ValueError, match=f"no {missing}"):
        fl.from_peft(directory)


@pytest.mark.parametrize("case", ["nan", "inf", "int64"])
def test_to_peft_refuses_non_finite_or_non_float_adapters_and_writes_nothing(case, tmp_path):
    lora = fl.init_lora(MODEL, CFG)
    lora["2"]["B"] = {"nan": torch.full((2, 2), float("nan")), "inf": torch.full((2, 2), float("inf")),
                      "int64": torch.zeros(2, 2, dtype=torch.int64)}[case]
    with pytest.raises(ValueError, match="layer '2':? B"):
        fl.to_peft(lora, CFG, tmp_path / "peft", model=MODEL)
    assert snapshot(tmp_path) == {}


def test_a_failure_between_the_two_files_leaves_the_previous_folder_whole(tmp_path, monkeypatch):
    directory = _folder(tmp_path)
    before = snapshot(tmp_path)
    calls = []

    def write_file(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        (path).write_bytes(data)

    monkeypatch.setattr(peft, "write_file", write_file)
    with pytest.raises(OSError, match="peft: cannot write it"):
        fl.to_peft(fl.init_lora(MODEL, CFG, seed=1), CFG, directory, model=MODEL)
    assert snapshot(tmp_path) == before  # old adapter intact, no temporary folder left


def test_an_existing_peft_folder_is_replaced_whole(tmp_path):
    directory = _folder(tmp_path, change={"r": 2, "lora_alpha": 99})
    fl.to_peft(fl.init_lora(MODEL, CFG, seed=1), CFG, directory, model=MODEL)
    assert json.loads((directory / peft.CONFIG_NAME).read_text())["lora_alpha"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peft"]


def test_a_folder_holding_other_files_is_refused_and_kept(tmp_path):
    directory = tmp_path / "photos"
    directory.mkdir()
    (directory / "holiday.jpg").write_bytes(b"jpeg")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"holds other files \['holiday.jpg'\]"):
        fl.to_peft(fl.init_lora(MODEL, CFG), CFG, directory, model=MODEL)
    assert snapshot(tmp_path) == before


def test_a_temporary_folder_left_by_a_killed_export_is_removed(tmp_path):
    stale = tmp_path / f".peft.{2**22 + 7}{peft.TMP_SUFFIX}"
    stale.mkdir()
    (stale / peft.WEIGHTS_NAME).write_bytes(b"half")
    fl.to_peft(fl.init_lora(MODEL, CFG), CFG, tmp_path / "peft", model=MODEL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peft"]


def test_export_gives_the_same_bytes_twice(tmp_path):
    lora = fl.init_lora(MODEL, CFG)
    fl.to_peft(lora, CFG, tmp_path / "a", model=MODEL)
    fl.to_peft(lora, CFG, tmp_path / "b", model=MODEL)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
