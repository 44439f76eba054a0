"""Specification of funclora.vision.evaluate and `funclora eval`: accuracy on a labelled folder, base and
adapted, and the forgetting between them; and of scripts/make_photos.py, which writes such a folder.

The command runs efficientnet_lite0 with random weights (fast, offline); the adapter that makes a
difference is written by hand, so what "adapted" must score is known exactly.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import VGG19_Weights

import funclora as fl
from funclora.vision.backbones import load_backbone
from funclora.vision.cli import main
from funclora.vision.evaluate import accuracy, evaluate, forgetting, format_eval, labelled_images
from helpers import LITE0, REPO
from helpers import run_cli as _run

IMAGENET = tuple(VGG19_Weights.IMAGENET1K_V1.meta["categories"])  # the class order of both backbones
CLASSES = ("tench", "goldfish", "great white shark", "tiger shark")


def _image(path: Path, seed: int = 0) -> Path:
    """A small noise picture (texture gives the random-weight backbone non-zero features)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Three images in both layouts: a class id ("1/") and class names ("tench/", "tiger shark/")."""
    root = tmp_path / "labelled"
    _image(root / "1" / "a.png")
    _image(root / "1" / "b.png", seed=1)
    _image(root / "tench" / "c.png", seed=2)
    _image(root / "tiger shark" / "d.png", seed=3)
    return root


# --- the library -------------------------------------------------------------------------------

def test_sub_folders_name_their_class_by_id_or_by_name(folder):
    paths, labels = labelled_images(folder, CLASSES)
    assert [p.relative_to(folder).as_posix() for p in paths] == ["1/a.png", "1/b.png", "tench/c.png",
                                                                  "tiger shark/d.png"]
    assert labels.tolist() == [1, 1, 0, 3]


@pytest.mark.parametrize("make, problem", [
    (lambda root: _image(root / "loose.png"), "lie directly in the folder"),
    (lambda root: _image(root / "goldfsh" / "a.png"), "sub-folder name is not a class"),
    (lambda root: root.mkdir(), "no class sub-folders"),
    (lambda root: (root / "1").mkdir(parents=True), "no images"),
], ids=["loose-image", "unknown-class", "no-sub-folders", "empty-class"])
def test_a_folder_without_the_layout_fails_naming_it_and_the_layout(tmp_path, make, problem):
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(ValueError, match=problem) as error:
        labelled_images(root, CLASSES)
    assert str(root) in str(error.value)


def test_top_k_accuracy_counts_the_label_among_the_k_highest_logits():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0],    # label 1: top-1
                           [3.0, 0.0, 2.0, 1.0],    # label 2: second
                           [3.0, 2.0, 1.0, 0.0]])   # label 3: last
    labels = torch.tensor([1, 2, 3])
    assert accuracy(logits, labels, ks=(1, 2, 5)) == {"top1": 1 / 3, "top2": 2 / 3, "top5": 1.0}


def test_forgetting_is_the_drop_from_base_to_adapted():
    assert forgetting({"top1": 0.5, "top5": 0.75}, {"top1": 0.25, "top5": 1.0}) == {"top1": 0.25, "top5": -0.25}


def test_evaluate_reads_each_image_once_for_all_classifiers(folder):
    paths, labels = labelled_images(folder, CLASSES)
    reads = []

    def preprocess(image):
        reads.append(image.size)
        return torch.zeros(3, 2, 2)

    always = lambda k: lambda x: torch.nn.functional.one_hot(torch.full((x.shape[0],), k), 4).float()  # noqa: E731
    result = evaluate({"base": always(0), "adapted": always(1)}, paths, labels, preprocess, progress=False)
    assert len(reads) == 4
    assert result == {"n": 4, "base": {"top1": 0.25, "top5": 1.0}, "adapted": {"top1": 0.5, "top5": 1.0}}


def test_the_summary_states_the_forgetting_in_points_and_images():
    text = format_eval({"n": 4, "base": {"top1": 0.75, "top5": 1.0}, "adapted": {"top1": 0.25, "top5": 1.0}}, "p")
    assert text.splitlines()[-1] == "forgetting: top-1 drops 50.0 points (2 images), top-5 unchanged"


# --- the command -------------------------------------------------------------------------------

def _sure_adapter(path: Path, label: int) -> Path:
    """An efficientnet_lite0 head adapter that adds +1000 to class `label` for any input:
    B @ A has one non-zero row, (scale * B @ A) x = 1000 on that logit for any pooled feature x
    whose entries sum to > 0 (after ReLU6 every feature is >= 0)."""
    cfg = fl.LoraConfig(rank=1, targets=("_fc",))
    a = torch.full((1, 1280), 1.0)
    b = torch.zeros(1000, 1)
    b[label] = 1e4
    fl.save(path, {"_fc": {"A": a, "B": b}}, cfg,
            metadata={"backbone": "efficientnet_lite0", "mode": "layers", "weights": "none", "seed": "0",
                      "label": str(label)})
    return path


def test_eval_json_is_one_object_with_base_and_adapted_accuracy(folder, tmp_path):
    adapter = _sure_adapter(tmp_path / "tench.safetensors", label=0)
    code, out, err = _run("eval", folder, *LITE0, "--adapter", adapter, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"n", "base", "adapted"} and result["n"] == 4
    assert set(result["base"]) == set(result["adapted"]) == {"top1", "top5"}
    assert all(0.0 <= v <= 1.0 for r in ("base", "adapted") for v in result[r].values())
    # Everything is a tench now: exactly the one tench image is right, at top-1 and top-5.
    assert result["adapted"] == {"top1": 0.25, "top5": 0.25}
    assert err == ""  # --json: no progress bar


def test_eval_adapted_is_the_merged_model(folder, tmp_path):
    adapter = _sure_adapter(tmp_path / "tench.safetensors", label=0)
    lora, cfg = fl.load(adapter)
    torch.manual_seed(0)
    backbone = load_backbone("efficientnet_lite0", weights=None)
    paths, labels = labelled_images(folder, backbone.classes)
    f = fl.functional(backbone.model, cfg)
    merged = fl.merge(fl.freeze(backbone.model), lora, cfg)
    expected = evaluate({"base": backbone.model, "adapted": lambda x: f(merged, None, x)}, paths, labels,
                        backbone.preprocess, progress=False)
    code, out, err = _run("eval", folder, *LITE0, "--adapter", adapter, "--json")
    assert code == 0, err
    assert json.loads(out) == expected


def test_eval_without_an_adapter_reports_the_base_only(folder):
    code, out, err = _run("eval", folder, *LITE0, "--json")
    assert code == 0, err
    assert set(json.loads(out)) == {"n", "base"}


def test_eval_prints_the_forgetting_and_what_the_adapter_now_calls_everything(folder, tmp_path):
    adapter = _sure_adapter(tmp_path / "shark.safetensors", label=3)
    code, out, err = _run("eval", folder, *LITE0, "--adapter", adapter, "--quiet")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"4 images in {folder} (efficientnet_lite0, random weights + adapter")
    assert lines[1].split() == ["model", "top-1", "top-5"]
    assert lines[3].split()[:3] == ["adapted", "25.0%", "(1/4)"]
    assert lines[4].startswith("forgetting: top-1 ")
    assert lines[5] == "classified as 'tiger shark': 0 before, 4 after (1 of the 4 images are labelled so)"
    assert err == ""


def test_eval_shows_a_progress_bar_on_stderr_unless_quiet(folder):
    code, out, err = _run("eval", folder, *LITE0)
    assert code == 0 and "evaluating" in err and "evaluating" not in out


def test_eval_help_documents_the_layout(capsys):
    assert main(["eval", "--help"]) == 0
    assert "DIR/1/fish.png" in capsys.readouterr().out


def test_eval_of_a_folder_without_the_layout_fails_in_one_line(tmp_path):
    _image(tmp_path / "photos" / "cat.png")
    code, out, err = _run("eval", tmp_path / "photos", *LITE0)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "lie directly in the folder" in err and "sub-folder per class" in err


# --- scripts/make_photos.py ---------------------------------------------------------------------

def _make_photos():
    pytest.importorskip("skimage", reason="the photos come from scikit-image (funclora[test])")
    spec = importlib.util.spec_from_file_location("make_photos", REPO / "scripts" / "make_photos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_photos_writes_the_csv_rows_in_the_eval_layout_deterministically(tmp_path):
    make_photos = _make_photos()
    digests = []
    for run in ("a", "b"):
        assert make_photos.main(["--out", str(tmp_path / run)]) == 0
        digests.append({p.relative_to(tmp_path / run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted((tmp_path / run).rglob("*.png"))})
    assert digests[0] == digests[1]
    with open(REPO / "data" / "photos.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(digests[0]) == sorted(f"{r['label']}/{r['name']}.png" for r in rows)
    paths, labels = labelled_images(tmp_path / "a", IMAGENET)
    assert len(paths) == len(rows) >= 7
    for path in paths:
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) >= 100


def test_the_photo_csv_names_each_class_by_id_and_by_its_imagenet_name():
    classes = IMAGENET
    with open(REPO / "data" / "photos.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        assert classes[int(row["label"])] == row["class"], row["name"]
        assert row["note"], f"{row['name']}: say why this label"
        if row["crop"]:
            assert "CROP" in row["note"]  # a crop is said to be one
