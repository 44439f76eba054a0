"""`funclora export` / `funclora import` against the real peft package (the interop itself:
tests/core/test_peft.py)."""
import copy

import peft
import torch

import funclora as fl


def test_cli_exports_to_peft_and_imports_back(tmp_path, capsys):
    from funclora.vision.backbones import load_backbone
    from funclora.vision.cli import main

    torch.manual_seed(0)
    model = load_backbone("efficientnet_lite0", weights=None).model
    cfg = fl.LoraConfig(rank=4, targets=("_fc",))  # PEFT cannot rebuild the port's conv class for A
    lora = fl.init_lora(model, cfg, seed=1)
    lora = {n: {"A": ab["A"], "B": torch.randn_like(ab["B"])} for n, ab in lora.items()}
    fl.save(tmp_path / "a.safetensors", lora, cfg, metadata={"backbone": "efficientnet_lite0"})

    assert main(["export", str(tmp_path / "a.safetensors"), "--peft", str(tmp_path / "peft")]) == 0
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "peft"))(x)
        ours = fl.functional(model, cfg)(fl.freeze(model), lora, x)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)

    assert main(["import", str(tmp_path / "peft"), "--out", str(tmp_path / "b.safetensors"),
                 "--backbone", "efficientnet_lite0"]) == 0
    back, back_cfg = fl.load(tmp_path / "b.safetensors")
    assert fl.read_metadata(tmp_path / "b.safetensors")["backbone"] == "efficientnet_lite0"
    assert all(torch.equal(back[n][k], lora[n][k]) for n in lora for k in "AB")
    assert all(back_cfg.scale_for(n) == cfg.scale_for(n) for n in lora)
    capsys.readouterr()


def test_cli_export_refuses_a_seed_adapter_in_one_line(tmp_path, capsys):
    from funclora.vision.cli import main

    cfg = fl.LoraConfig(rank=1)
    fl.save(tmp_path / "s.safetensors", {"input": {"A": torch.zeros(3, 1), "B": torch.zeros(1, 2)}}, cfg,
            metadata={"backbone": "efficientnet_lite0", "mode": "seed"})
    assert main(["export", str(tmp_path / "s.safetensors"), "--peft", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "s.safetensors" in err and "PEFT has no equivalent" in err
