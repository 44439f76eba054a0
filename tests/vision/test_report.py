"""Specification of funclora.vision.report and `funclora train --report DIR`: two pictures and a JSON record,
with matplotlib loaded only when a report is asked for."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from funclora.vision.cli import DEFAULT_KEEP
from funclora.vision.report import TOP, image_row, write_report
from helpers import GOLDFISH as GOLDFISH_FOLDER
from helpers import run_cli as _run

GOLDFISH = sorted(GOLDFISH_FOLDER.glob("*.png"))
KEEP = sorted(DEFAULT_KEEP.glob("*.png"))
CLASSES = tuple(f"class {i}" for i in range(10))

pytest.importorskip("matplotlib", reason="reports need matplotlib (funclora[plot])")


def _rows() -> list[dict]:
    probs = lambda i: torch.nn.functional.one_hot(torch.tensor(i), 10).float() * 0.6 + 0.04  # noqa: E731
    return [image_row(GOLDFISH[0], probs(4), probs(1)), image_row(GOLDFISH[1], probs(5), probs(1)),
            image_row(KEEP[0], probs(7), probs(7), group="keep")]


def test_write_report_writes_two_pictures_and_a_json_record(tmp_path):
    history = {"loss": [2.0, 1.0, 0.5], "train": [2.0, 0.9, 0.3], "keep": [0.0, 0.1, 0.2]}
    files = write_report(tmp_path / "report", history=history, rows=_rows(), target=1, classes=CLASSES,
                         summary={"backbone": "toy", "steps": 3})
    assert {k: p.name for k, p in files.items()} == {
        "loss": "loss.png", "before_after": "before_after.png", "json": "report.json"}
    for name in ("loss", "before_after"):
        with Image.open(files[name]) as image:
            assert image.format == "PNG" and min(image.size) > 300
    one = write_report(tmp_path / "one", history=history, rows=_rows()[:1], target=1, classes=CLASSES)
    with Image.open(files["before_after"]) as three_rows, Image.open(one["before_after"]) as one_row:
        assert three_rows.height > 2 * one_row.height  # a row per image
    record = json.loads(files["json"].read_text())
    assert record["backbone"] == "toy" and record["target"] == {"index": 1, "label": "class 1"}
    assert record["history"] == history
    first = record["images"][0]
    assert first["path"] == str(GOLDFISH[0]) and first["group"] == "train"
    assert len(first["before"]) == len(first["after"]) == TOP
    assert first["before"][0]["index"] == 4 and first["after"][0] == {"index": 1, "label": "class 1", "p": 0.64}
    assert [r["group"] for r in record["images"]] == ["train", "train", "keep"]


def test_a_report_of_zero_steps_still_draws(tmp_path):
    files = write_report(tmp_path, history={"train": []}, rows=_rows()[:1], target=1, classes=CLASSES)
    assert all(p.stat().st_size > 0 for p in files.values())


def test_the_report_folder_must_not_be_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        write_report(tmp_path / "file", history={}, rows=_rows(), target=1, classes=CLASSES)


def test_train_report_writes_the_files_with_both_loss_terms_and_the_keep_images(tmp_path):
    fish = tmp_path / "fish"
    fish.mkdir()
    for path in GOLDFISH[:2]:
        shutil.copy(path, fish)
    code, out, err = _run("train", fish, "--backbone", "efficientnet_lite0", "--weights", "none", "--steps", 3,
                          "--out", tmp_path / "a.safetensors", "--report", tmp_path / "report", "--json")
    assert code == 0, err
    json.loads(out)  # stdout is still exactly one JSON object
    files = {p.name: p for p in (tmp_path / "report").iterdir()}
    assert sorted(files) == ["before_after.png", "loss.png", "report.json"]
    assert all(p.stat().st_size > 0 for p in files.values())
    record = json.loads(files["report.json"].read_text())
    assert set(record["history"]) == {"loss", "train", "keep"}
    assert all(len(v) == 3 for v in record["history"].values())
    assert record["history"]["keep"][0] == 0.0  # B = 0 at the first step: nothing has moved yet
    assert [r["group"] for r in record["images"]] == ["train"] * 2 + ["keep"] * len(KEEP)
    assert record["target"]["label"] == "goldfish" and record["keep"]["weight"] == 3.0  # --mode layers default λ


def test_matplotlib_is_only_imported_for_a_report(tmp_path):
    shutil.copy(GOLDFISH[0], tmp_path)
    script = (
        "import sys; from funclora.vision.cli import main\n"
        f"code = main(['train', {str(tmp_path)!r}, '--backbone', 'efficientnet_lite0', '--weights', 'none',"
        f" '--steps', '1', '--keep', 'none', '--out', {str(tmp_path / 'a.safetensors')!r}, '--quiet'])\n"
        "assert code == 0 and 'matplotlib' not in sys.modules, sorted(m for m in sys.modules if 'matplotlib' in m)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_report_path_that_is_a_file_fails_before_training(tmp_path):
    shutil.copy(GOLDFISH[0], tmp_path)
    (tmp_path / "taken").write_text("")
    code, out, err = _run("train", tmp_path, "--backbone", "efficientnet_lite0", "--weights", "none",
                          "--report", tmp_path / "taken", "--out", tmp_path / "a.safetensors")
    assert code == 1 and out == "" and f"--report {tmp_path / 'taken'}: is a file" in err
    assert not (tmp_path / "a.safetensors").exists()
