"""PEFT interop, checked against the real peft package: what to_peft writes, PeftModel loads without a
warning and computes exactly as funclora does (unmerged and merged); what PEFT saves, from_peft reads
into an adapter that computes exactly as the PeftModel; what either side cannot represent is refused."""
import copy
import json
import logging
import re
import subprocess
import sys
import warnings
from collections import OrderedDict

import peft  # a test dependency: without it these tests fail rather than skip
import pytest
import torch
import torchvision
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

import funclora as fl
from funclora.peft import CONFIG_NAME, WEIGHTS_NAME, export_file, import_dir
from helpers import with_random_b
from layers import StaticSamePadConv2d


def close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * max(1.0, want.abs().max().item()))


def peft_load(model, directory, caplog):
    """PeftModel.from_pretrained, asserting that it warns and logs nothing (no missing/unexpected keys)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(model, directory)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records] == []
    file = load_file(directory / WEIGHTS_NAME)
    state = get_peft_model_state_dict(pm, save_embedding_layers=False)  # no Hub lookup
    assert state.keys() == file.keys()
    assert all(torch.equal(state[k], file[k]) for k in file)
    return pm.eval()


def peft_save(model, directory, **options):
    """What PEFT itself writes for `model` under LoraConfig(**options); B random, as if trained."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(model, peft.LoraConfig(init_lora_weights=False, **options))
    pm.save_pretrained(directory)
    return pm.eval()


def vgg_slice():
    """The first five layers of VGG19's features (conv 3->64, conv 64->64, pool) and a Linear head."""
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])[:5]
    return nn.Sequential(OrderedDict(features=features, pool=nn.AdaptiveAvgPool2d(2), flatten=nn.Flatten(),
                                     classifier=nn.Linear(64 * 4, 10))).eval()


def test_vgg19_adapter_loads_into_peft_and_computes_the_same_unmerged_and_merged(tmp_path, caplog):
    model = torchvision.models.vgg19().eval()
    cfg = fl.LoraConfig(rank=4, alpha=8, targets=("features.0", "features.2", "features.5", "classifier.*"),
                        rank_pattern={"classifier.6": 2}, alpha_pattern={"features.*": 2})
    lora = with_random_b(fl.init_lora(model, cfg, seed=0), seed=1, scale=0.25)
    x = torch.randn(2, 3, 32, 32)
    want = fl.functional(model, cfg)(fl.freeze(model), lora, x)
    fl.to_peft(lora, cfg, tmp_path, model=model, base_model_name_or_path="vgg19")

    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["target_modules"] == ["features.0", "features.2", "features.5",
                                        "classifier.0", "classifier.3", "classifier.6"]
    assert config["rank_pattern"] == {"classifier.6": 2}
    assert config["alpha_pattern"] == {"features.0": 2, "features.2": 2, "features.5": 2}
    back, cfg2 = fl.from_peft(tmp_path, model=model)  # before PEFT wraps the model's layers
    assert all(torch.equal(back[n][p], lora[n][p]) for n in lora for p in "AB")
    assert {n: (cfg2.rank_for(n), cfg2.scale_for(n)) for n in lora} == \
           {n: (cfg.rank_for(n), cfg.scale_for(n)) for n in lora}

    pm = peft_load(model, tmp_path, caplog)
    with torch.no_grad():
        close(pm(x), want)
        close(pm.merge_and_unload()(x), want)


def test_peft_trained_vgg_adapter_imports_and_computes_the_same(tmp_path):
    model = vgg_slice()
    fresh = copy.deepcopy(model)
    pm = peft_save(model, tmp_path, r=4, lora_alpha=8, target_modules=["features.0", "features.2", "classifier"],
                   rank_pattern={r"features\.2": 6}, alpha_pattern={"classifier": 3})
    pm.train()
    opt = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(3, 3, 16, 16)
    for _ in range(3):  # trained by PEFT itself
        opt.zero_grad()
        pm(x).square().mean().backward()
        opt.step()
    pm.eval().save_pretrained(tmp_path)

    lora, cfg = fl.from_peft(tmp_path, model=fresh)
    assert {n: ab["A"].shape[0] for n, ab in lora.items()} == {"features.0": 4, "features.2": 6, "classifier": 4}
    assert cfg.scale_for("classifier") == 3 / 4 and cfg.scale_for("features.2") == 8 / 6
    with torch.no_grad():
        close(fl.functional(fresh, cfg)(fl.freeze(fresh), lora, x), pm(x))


CONVS = {
    "3x3": lambda: nn.Conv2d(4, 6, 3),
    "stride-and-padding-tuples": lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0)),
    "int-padding-no-bias": lambda: nn.Conv2d(4, 6, 3, stride=3, padding=2, bias=False),
    "same": lambda: nn.Conv2d(4, 6, (3, 2), padding="same"),
    "valid": lambda: nn.Conv2d(4, 6, 3, padding="valid"),
    "1x1": lambda: nn.Conv2d(4, 6, 1, stride=2),
    "1x1-dilated": lambda: nn.Conv2d(4, 6, 1, dilation=2),  # a 1x1 kernel has nothing to dilate
    "reflect-unpadded": lambda: nn.Conv2d(4, 6, 3, padding_mode="reflect"),  # the mode never applies
    "pads-in-forward": lambda: StaticSamePadConv2d(4, 6, 3, stride=2),  # the EfficientNet port's conv
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("make", CONVS.values(), ids=CONVS.keys())
def test_conv2d_kinds_peft_supports_translate_both_ways(make, tmp_path, caplog):
    torch.manual_seed(0)
    model = nn.Sequential(make()).eval()
    x = torch.randn(2, 4, 9, 10)
    base = fl.freeze(model)

    cfg = fl.LoraConfig(rank=3, alpha=5)
    lora = with_random_b(fl.init_lora(model, cfg, seed=0), seed=1, scale=0.25)
    want = fl.functional(model, cfg)(base, lora, x)
    fl.to_peft(lora, cfg, tmp_path / "out", model=model)
    pm = peft_load(copy.deepcopy(model), tmp_path / "out", caplog)
    with torch.no_grad():
        close(pm(x), want)
        close(pm.merge_and_unload()(x), want)

    pm = peft_save(copy.deepcopy(model), tmp_path / "in", r=2, lora_alpha=3, target_modules=["0"])
    lora, cfg = fl.from_peft(tmp_path / "in", model=model)
    with torch.no_grad():
        close(fl.functional(model, cfg)(base, lora, x), pm(x))


def test_rank_alpha_patterns_rslora_dropout_and_init_survive_a_round_trip(tmp_path, caplog):
    model = vgg_slice()
    cfg = fl.LoraConfig(rank=4, alpha=6, rank_pattern={"features.*": 2, "classifier": 5},
                        alpha_pattern={"features.2": 1.5}, use_rslora=True, dropout=0.1, init="kaiming")
    lora = fl.init_lora(model, cfg, seed=3)
    x = torch.randn(2, 3, 16, 16)
    f = fl.functional(model, cfg)
    loss = lambda l: f(fl.freeze(model), l, x).square().mean()  # noqa: E731
    opt = fl.adam(lr=1e-2)
    state = opt.init(lora)
    for _ in range(3):  # trained by funclora
        lora, state = opt.update(torch.func.grad(loss)(lora), state, lora)
    assert all(ab["B"].abs().sum() > 0 for ab in lora.values())
    want = f(fl.freeze(model), lora, x)
    fl.to_peft(lora, cfg, tmp_path, model=model)

    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"], config["lora_dropout"]) == (4, 6, True, 0.1)
    assert config["rank_pattern"] == {"features.0": 2, "features.2": 2, "classifier": 5}
    assert config["alpha_pattern"] == {"features.2": 1.5}
    lora2, cfg2 = fl.from_peft(tmp_path, model=model)
    assert all(torch.equal(lora2[n][p], lora[n][p]) for n in lora for p in "AB")
    assert {n: (cfg2.rank_for(n), cfg2.scale_for(n)) for n in lora} == \
           {n: (cfg.rank_for(n), cfg.scale_for(n)) for n in lora}
    assert (cfg2.dropout, cfg2.use_rslora, cfg2.init) == (0.1, True, "kaiming")

    pm = peft_load(copy.deepcopy(model), tmp_path, caplog)
    with torch.no_grad():
        close(pm(x), want)
        close(pm.merge_and_unload()(x), want)


def test_peft_regex_patterns_and_rslora_import_per_layer(tmp_path):
    model = vgg_slice()
    x = torch.randn(2, 3, 16, 16)
    pm = peft_save(copy.deepcopy(model), tmp_path, r=4, lora_alpha=4, use_rslora=True,
                   target_modules=r"features\.[02]|classifier", rank_pattern={r"features\.\d": 8},
                   alpha_pattern={"classifier": 2, r"features\.2": 16})
    lora, cfg = fl.from_peft(tmp_path, model=model)
    assert sorted(cfg.targets) == ["classifier", "features.0", "features.2"]
    assert dict(cfg.rank_pattern) == {"features.0": 8, "features.2": 8}
    assert dict(cfg.alpha_pattern) == {"classifier": 2.0, "features.2": 16.0}
    assert cfg.scale_for("features.0") == 4 / 8 ** 0.5
    with torch.no_grad():
        close(fl.functional(model, cfg)(fl.freeze(model), lora, x), pm(x))


def nested():
    """Two layers named 'head' and 'block.head': PEFT's name rules match the first to both."""
    return nn.Sequential(OrderedDict(head=nn.Linear(4, 4), block=nn.Sequential(OrderedDict(head=nn.Linear(4, 3)))))


def test_names_that_peft_would_match_as_suffixes_are_written_exactly(tmp_path, caplog):
    model, x = nested().eval(), torch.randn(5, 4)
    only_outer = fl.LoraConfig(rank=2, targets=("head",))
    lora = with_random_b(fl.init_lora(model, only_outer), seed=1, scale=0.25)
    fl.to_peft(lora, only_outer, tmp_path / "outer", model=model)
    assert json.loads((tmp_path / "outer" / CONFIG_NAME).read_text())["target_modules"] == "head"  # fullmatch
    pm = peft_load(copy.deepcopy(model), tmp_path / "outer", caplog)
    assert type(pm.base_model.model.block.head) is nn.Linear  # left alone
    close(pm(x), fl.functional(model, only_outer)(fl.freeze(model), lora, x))

    both = fl.LoraConfig(rank=3, rank_pattern={"head": 2})  # 'head' only: 'block.head' keeps rank 3
    lora = with_random_b(fl.init_lora(model, both), seed=1, scale=0.25)
    fl.to_peft(lora, both, tmp_path / "both", model=model)
    assert json.loads((tmp_path / "both" / CONFIG_NAME).read_text())["rank_pattern"] == {"^head": 2}
    pm = peft_load(copy.deepcopy(model), tmp_path / "both", caplog)
    close(pm(x), fl.functional(model, both)(fl.freeze(model), lora, x))
    lora2, cfg2 = fl.from_peft(tmp_path / "both", model=model)
    assert (cfg2.rank_for("head"), cfg2.rank_for("block.head")) == (2, 3)


@pytest.mark.parametrize("layer, message", [
    (nn.Conv2d(4, 6, 3, groups=2), "groups=2"),
    (nn.Conv2d(4, 4, 3, padding=1, groups=4), "groups=4"),
    (nn.Conv2d(4, 6, 3, dilation=2), "dilation=(2, 2)"),
    (nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
    (nn.Conv2d(4, 6, 3, padding="same", padding_mode="circular"), "padding_mode='circular'"),
], ids=["grouped", "depthwise", "dilated", "reflect", "circular-same"])
def test_to_peft_refuses_convs_peft_computes_differently(layer, message, tmp_path):
    model = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 1), odd=layer))
    cfg = fl.LoraConfig(rank=2)
    with pytest.raises(ValueError, match=rf"layer 'odd': PEFT cannot represent .*{re.escape(message)}"):
        fl.to_peft(fl.init_lora(model, cfg), cfg, tmp_path, model=model)
    assert not tmp_path.joinpath(WEIGHTS_NAME).exists()


def test_to_peft_refuses_the_root_module_and_adapters_for_another_model(tmp_path):
    model, cfg = nn.Linear(3, 2), fl.LoraConfig(rank=2)
    with pytest.raises(ValueError, match=r"layer '' \(the root module\)"):
        fl.to_peft(fl.init_lora(model, cfg), cfg, tmp_path, model=model)
    other = nn.Sequential(nn.Linear(5, 2))
    with pytest.raises(ValueError, match="layer '0'"):
        fl.to_peft(fl.init_lora(other, cfg), cfg, tmp_path, model=nn.Sequential(nn.Linear(3, 2)))


def linear():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("model, options, message", [
    (linear, dict(use_dora=True), r"DoRA \(use_dora\)"),
    (linear, dict(bias="all"), "bias='all'"),
    (linear, dict(modules_to_save=["2"]), r"modules_to_save"),
    (linear, dict(lora_bias=True), r"lora_bias"),
    (lambda: nn.Sequential(nn.Embedding(10, 3), nn.Linear(3, 2)), {}, r"layer '0' uses an Embedding"),
    (lambda: nn.Sequential(nn.Conv1d(3, 4, 3)), {}, r"layer '0' is a Conv1d"),
    (lambda: nn.Sequential(nn.Conv3d(3, 4, 3)), {}, r"layer '0' is a Conv3d"),
    (lambda: nn.Sequential(nn.Conv2d(4, 6, 3, groups=2)), dict(r=4), r"layer '0'.*grouped conv \(groups=2\)"),
], ids=["dora", "bias", "modules_to_save", "lora_bias", "embedding", "conv1d", "conv3d", "grouped"])
def test_from_peft_refuses_what_funclora_cannot_represent(model, options, message, tmp_path):
    peft_save(model(), tmp_path, **{"r": 2, "target_modules": ["0"], **options})
    with pytest.raises(ValueError, match=message):
        fl.from_peft(tmp_path)


@pytest.mark.parametrize("config, message", [
    (lambda: peft.IA3Config(target_modules=["0"], feedforward_modules=[]), "peft_type is 'IA3'"),
    (lambda: peft.LoHaConfig(target_modules=["0"]), "peft_type is 'LOHA'"),
])
def test_from_peft_refuses_other_peft_methods(config, message, tmp_path):
    peft.get_peft_model(linear(), config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        fl.from_peft(tmp_path)


def test_from_peft_with_the_model_refuses_layers_peft_computes_differently(tmp_path):
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"))
    peft_save(copy.deepcopy(model), tmp_path, r=2, target_modules=["0"])
    fl.from_peft(tmp_path)  # the files alone are a plain conv adapter
    with pytest.raises(ValueError, match="layer '0': funclora cannot reproduce PEFT here: padding_mode='reflect'"):
        fl.from_peft(tmp_path, model=model)
    with pytest.raises(ValueError, match="layer '0'.*another model"):
        fl.from_peft(tmp_path, model=nn.Sequential(nn.Conv2d(5, 6, 3)))


def edit_config(directory, **changes):
    path = directory / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("changes, message", [
    (dict(r=3), r"layer '0' has rank 2 in adapter_model.safetensors but adapter_config.json gives it rank 3"),
    (dict(rank_pattern={"0": 5}), "gives it rank 5"),
    (dict(init_lora_weights="pissa"), "init_lora_weights='pissa' changes the base model's weights"),
    (dict(init_lora_weights="loftq"), "init_lora_weights='loftq'"),
    (dict(use_fancy_variant=True), r"unknown PEFT options \{'use_fancy_variant': True\}"),
    (dict(lora_alpha=-1), "alpha must be a finite number > 0"),
])
def test_from_peft_refuses_inconsistent_or_unknown_configs(changes, message, tmp_path):
    peft_save(linear(), tmp_path, r=2, target_modules=["0"])
    edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        fl.from_peft(tmp_path)


def test_from_peft_names_missing_or_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        fl.from_peft(tmp_path / "nowhere")
    peft_save(linear(), tmp_path / "multi" / "second", r=2, target_modules=["0"])
    with pytest.raises(ValueError, match=r"no adapter_config.json; it holds adapters in subfolders \['second'\]"):
        fl.from_peft(tmp_path / "multi")
    adapter = tmp_path / "multi" / "second"
    (adapter / WEIGHTS_NAME).rename(adapter / "adapter_model.bin")
    with pytest.raises(ValueError, match="only adapter_model.bin \\(a pickle"):
        fl.from_peft(adapter)
    (adapter / "adapter_model.bin").unlink()
    with pytest.raises(ValueError, match="no adapter_model.safetensors: it is missing"):
        fl.from_peft(adapter)
    (adapter / WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        fl.from_peft(adapter)
    (adapter / CONFIG_NAME).write_text("{")
    with pytest.raises(ValueError, match="adapter_config.json: not valid JSON"):
        fl.from_peft(adapter)


def test_cli_helpers_convert_files_both_ways(tmp_path, caplog):
    model, cfg = linear().eval(), fl.LoraConfig(rank=2, targets=("0",))
    lora = with_random_b(fl.init_lora(model, cfg, seed=0), seed=1, scale=0.25)
    fl.save(tmp_path / "a.safetensors", lora, cfg, metadata={"backbone": "toy"})
    export_file(tmp_path / "a.safetensors", tmp_path / "peft", model, base_model_name_or_path="toy")
    peft_load(copy.deepcopy(model), tmp_path / "peft", caplog)
    import_dir(tmp_path / "peft", tmp_path / "b.safetensors", model, metadata={"backbone": "toy"})
    back, cfg2 = fl.load(tmp_path / "b.safetensors")
    assert all(torch.equal(back["0"][p], lora["0"][p]) for p in "AB") and cfg2.rank_for("0") == 2
    meta = fl.read_metadata(tmp_path / "b.safetensors")
    assert (meta["source"], meta["peft_base_model"], meta["backbone"]) == ("peft:peft", "toy", "toy")


def test_funclora_reads_and_writes_peft_files_without_peft_installed(tmp_path):
    script = f"""
import sys; sys.modules["peft"] = None  # any 'import peft' now fails
import torch, funclora as fl
model = torch.nn.Sequential(torch.nn.Linear(3, 2)); cfg = fl.LoraConfig(rank=2)
fl.to_peft(fl.init_lora(model, cfg), cfg, {str(tmp_path)!r}, model=model)
print(sorted(fl.from_peft({str(tmp_path)!r}, model=model)[0]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['0']"
