"""`funclora train DIR` on class folders, end to end: a new head, minibatches, validation, features on
disk, checkpoints and bitwise resume after SIGKILL, devices. EfficientNet-Lite0 with random weights
(seeded) on tiny drawn datasets: the behaviour, not the accuracy (test_fashion_mnist.py has that)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import funclora as fl
from funclora.vision.cli import main

ROOT = Path(__file__).resolve().parents[2]
LITE0 = ["--backbone", "efficientnet_lite0", "--weights", "none"]


def _run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _dataset(root: Path, classes=("circle", "square", "stripes"), per_class: int = 4) -> Path:
    """Drawn pictures, one sub-folder per class: a disc, a box, or bars, in varying colours."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.new("RGB", (40, 40), (250, 250, 250))
            pixels = image.load()
            colour = (40 * i, 200 - 40 * i, 90)
            for x in range(40):
                for y in range(40):
                    inside = ((x - 20) ** 2 + (y - 20) ** 2 < 150, 8 < x < 32 and 8 < y < 32, (x // 5) % 2 == 0)[c % 3]
                    if inside:
                        pixels[x, y] = colour
            image.save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("shapes") / "train")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def trained(shapes, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "shapes.safetensors"
    code, stdout, err = _run("train", shapes, *LITE0, "--head", "new", "--epochs", "3", "--batch-size", "4",
                             "--val-split", "0.25", "--lr", "0.05", "--cache", cache, "--out", out, "--json")
    assert code == 0, err
    return json.loads(stdout), out


def test_a_new_head_trains_on_class_folders_with_val_top1_per_epoch_and_the_best_adapter_kept(trained):
    result, out = trained
    assert result["classes"] == ["circle", "square", "stripes"] and result["head"] == "new"
    assert result["images"] == 9 and result["steps"] == 3 * 3  # 3 per class left after the split, batches of 4
    assert [e["epoch"] for e in result["history"]] == [1, 2, 3]
    assert all(set(e["val"]) == {"top1", "top5"} and e["loss"] > 0 for e in result["history"])
    best = max(result["history"], key=lambda e: e["val"]["top1"])  # the first of the best
    assert result["val"] == best["val"] and result["best_epoch"] == best["epoch"]
    assert result["trainable"] == 1280 * 3 + 3  # the head alone
    meta = fl.read_metadata(out)
    assert json.loads(meta["classes"]) == result["classes"] and meta["head"] == "new" and meta["head_module"] == "_fc"
    tensors = load_file(out)
    assert tensors["modules_to_save._fc.weight"].shape == (3, 1280)


def test_predict_and_eval_answer_with_the_new_heads_class_names(trained, shapes):
    _, out = trained
    code, stdout, err = _run("predict", shapes / "square" / "0.png", "--adapter", out, "--top", "3", "--json")
    assert code == 0, err
    top = json.loads(stdout)["images"][0]["top"]
    assert sorted(t["label"] for t in top) == ["circle", "square", "stripes"]
    code, stdout, err = _run("predict", shapes / "square" / "0.png", "--adapter", out, "--top", "1")
    assert code == 0 and "new head: 3 classes" in stdout
    code, stdout, err = _run("eval", shapes, "--adapter", out, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert set(result) == {"n", "base", "adapted"} and result["n"] == 12 and result["base"] is None
    assert set(result["adapted"]) == {"top1", "top5"} and result["adapted"]["top5"] == 1.0
    code, stdout, err = _run("eval", shapes, "--adapter", out)
    assert code == 0 and "adapted" in stdout and "base" not in stdout.split("\n", 2)[1]


def test_eval_refuses_folders_that_are_not_the_adapters_classes(trained, tmp_path):
    _, out = trained
    other = _dataset(tmp_path / "other", classes=("circle", "zebra"), per_class=1)
    code, _, err = _run("eval", other, "--adapter", out)
    assert code == 1 and "zebra" in err and len(err.strip().splitlines()) == 1


def test_features_are_read_back_on_a_second_run_and_a_changed_image_is_recomputed_alone(shapes, cache, tmp_path):
    data = tmp_path / "copy"
    _dataset(data)
    argv = ["train", data, *LITE0, "--head", "new", "--epochs", "1", "--cache", cache, "--out", tmp_path / "a.safetensors",
            "--json"]
    code, stdout, err = _run(*argv)
    assert code == 0, err
    first = json.loads(stdout)["cached"]
    assert first["computed"] == 0 and first["reused"] == 12  # the same pictures as `shapes`: same content hashes
    Image.new("RGB", (40, 40), (1, 2, 3)).save(data / "square" / "2.png")
    code, stdout, err = _run(*argv)
    assert json.loads(stdout)["cached"] == {**first, "computed": 1, "reused": 11, "seconds": json.loads(stdout)["cached"]["seconds"]}
    code, stdout, err = _run(*argv[:-1], "--targets", "_conv_head", "--json")  # another cut: other features
    assert code == 0 and json.loads(stdout)["cached"]["computed"] == 12


def test_augment_caches_nothing_and_says_so_in_one_line(shapes, cache, tmp_path):
    code, stdout, err = _run("train", shapes, *LITE0, "--head", "new", "--augment", "--epochs", "1", "--batch-size",
                             "6", "--cache", cache, "--out", tmp_path / "a.safetensors", "--json")
    assert code == 0, err
    assert json.loads(stdout)["cached"] is None
    notes = [line for line in err.splitlines() if "--augment" in line]
    assert len(notes) == 1 and "no features are cached" in notes[0]


def test_steps_still_counts_optimizer_steps_across_epochs(shapes, cache, tmp_path):
    code, stdout, err = _run("train", shapes, *LITE0, "--head", "new", "--steps", "5", "--batch-size", "4",
                             "--cache", cache, "--out", tmp_path / "a.safetensors", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["steps"] == 5 and [e["epoch"] for e in result["history"]] == [1, 2]


def _cli(*argv) -> list[str]:
    """A python command running the CLI with this process's thread count (bitwise results need it)."""
    code = (f"import sys, torch; torch.set_num_threads({torch.get_num_threads()}); "
            f"from funclora.vision.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, *[str(a) for a in argv]]


def test_a_run_killed_with_sigkill_and_resumed_ends_bitwise_equal_to_an_uninterrupted_run(shapes, cache, tmp_path):
    common = ["train", shapes, *LITE0, "--head", "new", "--targets", "_conv_head", "--rank", "2", "--epochs", "12",
              "--batch-size", "2", "--lr", "0.01", "--cache", cache, "--checkpoint-every", "4", "--json", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole = subprocess.run(_cli(*common, "--checkpoint", tmp_path / "a", "--out", tmp_path / "a.safetensors"),
                           capture_output=True, text=True, env=env, timeout=900)
    assert whole.returncode == 0, whole.stderr
    total = json.loads(whole.stdout)["steps"]
    assert total == 12 * 6

    killed = subprocess.Popen(_cli(*common, "--checkpoint", tmp_path / "b", "--out", tmp_path / "b.safetensors"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    while fl.latest_checkpoint(tmp_path / "b") is None and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "b.safetensors").exists()
    interrupted_at = load_ckpt_step(tmp_path / "b")
    assert 0 < interrupted_at < total

    resumed = subprocess.run(_cli(*common, "--checkpoint", tmp_path / "b", "--out", tmp_path / "b.safetensors",
                                  "--resume"), capture_output=True, text=True, env=env, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and f"(step {interrupted_at} of {total})" in resumed.stderr
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    end_a, _ = fl.load_checkpoint(fl.latest_checkpoint(tmp_path / "a"))
    end_b, _ = fl.load_checkpoint(fl.latest_checkpoint(tmp_path / "b"))
    assert end_a["losses"] == end_b["losses"] and len(end_a["losses"]) == total
    assert json.loads(resumed.stdout)["history"] == [
        {**e, "seconds": r["seconds"]} for e, r in zip(json.loads(whole.stdout)["history"],
                                                       json.loads(resumed.stdout)["history"])]


def load_ckpt_step(folder: Path) -> int:
    return fl.load_checkpoint(fl.latest_checkpoint(folder))[1]["step"]


def test_resuming_with_other_data_or_settings_is_refused_naming_what_differs(shapes, cache, tmp_path):
    common = ["train", shapes, *LITE0, "--head", "new", "--epochs", "1", "--batch-size", "4", "--cache", cache,
              "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "a.safetensors", "--quiet"]
    assert _run(*common)[0] == 0
    code, _, err = _run(*common, "--resume", "--lr", "0.5", "--seed", "3")
    assert code == 1 and "cannot resume with different settings" in err
    assert "lr was 0.001, now 0.5" in err and "seed was 0, now 3" in err and len(err.strip().splitlines()) == 1
    more = _dataset(tmp_path / "more", per_class=5)
    code, _, err = _run(*[more if a == shapes else a for a in common], "--resume")
    assert code == 1 and "data was 12 images" in err and "now 15 images" in err
    code, _, err = _run(*common[:-5], "--checkpoint", tmp_path / "empty", "--resume")
    assert code == 1 and "no checkpoint in" in err


def test_imagenet_class_folders_teach_imagenet_labels_through_the_imagenet_head(tmp_path, cache):
    data = _dataset(tmp_path / "fish", classes=("tench", "goldfish", "2"), per_class=2)
    code, stdout, err = _run("train", data, *LITE0, "--epochs", "1", "--batch-size", "3", "--cache", cache,
                             "--out", tmp_path / "a.safetensors", "--json")
    assert code == 0, err
    meta = fl.read_metadata(tmp_path / "a.safetensors")
    assert json.loads(meta["labels"]) == [2, 1, 0] and meta["head"] == "imagenet"  # folders sorted: 2, goldfish, tench
    lora, cfg = fl.load(tmp_path / "a.safetensors")
    assert set(lora) == {"_fc"} and fl.load_modules(tmp_path / "a.safetensors") == {}


@pytest.mark.parametrize("make, flags, message", [
    (lambda root: _dataset(root, classes=("circle", "zebra_crossing_x")), [],
     "is not an ImageNet class"),
    (lambda root: (_dataset(root, classes=("a",)), (root / "b").mkdir()), ["--head", "new"],
     "class folder 'b' has no images"),
    (lambda root: _dataset(root / "x", classes=("a",)) and (root / "x" / "a"), ["--head", "new"],
     "for class-folder datasets"),
    (lambda root: _dataset(root), ["--head", "new", "--checkpoint-every", "2"], "need --checkpoint DIR"),
    (lambda root: _dataset(root), ["--head", "new", "--val", "missing"], "missing: no such folder"),
])
def test_bad_datasets_and_settings_fail_in_one_line_and_save_nothing(tmp_path, make, flags, message):
    made = make(tmp_path / "data")
    data = made if isinstance(made, Path) else tmp_path / "data"
    code, _, err = _run("train", data, *LITE0, *flags, "--out", tmp_path / "a.safetensors", "--cache", tmp_path / "c")
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a.safetensors").exists()


def test_export_refuses_an_adapter_with_a_new_head_saying_why(trained, tmp_path):
    _, out = trained
    code, _, err = _run("export", out, "--peft", tmp_path / "peft")
    assert code == 1 and "new head" in err and "cannot load it" in err and not (tmp_path / "peft").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when there is no CUDA device")
def test_device_cuda_without_cuda_fails_in_one_line(shapes, tmp_path):
    for command in (["train", shapes, *LITE0, "--head", "new"], ["predict", shapes / "circle" / "0.png", *LITE0],
                    ["eval", shapes, *LITE0]):
        code, _, err = _run(*command, "--device", "cuda", "--out" if command[0] == "train" else "--json",
                            *([tmp_path / "a.safetensors"] if command[0] == "train" else []))
        assert code == 1 and "no CUDA device" in err, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_predicts_and_evaluates_on_cuda_in_bfloat16(shapes, tmp_path, trained):
    code, stdout, err = _run("train", shapes, *LITE0, "--head", "new", "--targets", "_conv_head", "--epochs", "2",
                             "--device", "cuda", "--dtype", "bfloat16", "--cache", tmp_path / "c",
                             "--out", tmp_path / "a.safetensors", "--json")
    assert code == 0, err
    assert fl.load_modules(tmp_path / "a.safetensors")["_fc"]["weight"].dtype == torch.float32
    for command in (["predict", shapes / "circle" / "0.png"], ["eval", shapes]):
        code, stdout, err = _run(*command, "--adapter", tmp_path / "a.safetensors", "--device", "cuda",
                                 "--dtype", "bfloat16", "--json")
        assert code == 0, err
