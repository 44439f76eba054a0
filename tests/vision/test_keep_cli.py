"""`funclora train --keep`: the keep set on the command line (the term itself: tests/core/test_keep.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from funclora.vision.cli import DEFAULT_KEEP
from helpers import LITE0, REPO
from helpers import run_cli as _run



# --- the command -------------------------------------------------------------------------------

@pytest.fixture()
def fish(tmp_path) -> Path:
    folder = tmp_path / "fish"
    folder.mkdir()
    shutil.copy(REPO / "data" / "goldfish" / "goldfish_1_flat.png", folder)
    return folder


def test_train_uses_the_repositorys_keep_set_by_default_and_none_turns_it_off(fish, tmp_path):
    code, out, err = _run("train", fish, *LITE0, "--steps", 1, "--out", tmp_path / "a.safetensors", "--json")
    assert code == 0, err
    kept = json.loads(out)["keep"]
    assert kept["images"] == len(list((DEFAULT_KEEP).glob("*.png"))) and kept["weight"] == 3.0
    code, out, err = _run("train", fish, *LITE0, "--steps", 1, "--keep", "none", "--out", tmp_path / "b.safetensors",
                          "--json")
    assert code == 0, err
    assert json.loads(out)["keep"] is None


def test_train_takes_another_keep_folder_and_weight(fish, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    shutil.copy(DEFAULT_KEEP / "keep_1_bluetang_flat.png", keep)
    code, out, err = _run("train", fish, *LITE0, "--steps", 1, "--keep", keep, "--keep-weight", 2.5,
                          "--out", tmp_path / "a.safetensors", "--quiet")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("keep set: "))
    assert line.endswith(f"(λ = 2.5, {keep})") and "/1 keep their top-1 class" in line


@pytest.mark.parametrize("argv, problem", [
    (["--keep", "{tmp}/nowhere"], "--keep: {tmp}/nowhere: no such file or directory"),
    (["--mode", "seed", "--augment"], "--augment and --compile apply to --mode layers"),
    (["--mode", "seed", "--keep", "{tmp}/nowhere"], "--keep: {tmp}/nowhere: no such file or directory"),
])
def test_bad_keep_options_fail_in_one_line(fish, tmp_path, argv, problem):
    fill = {"tmp": tmp_path, "keep": DEFAULT_KEEP}
    code, out, err = _run("train", fish, *LITE0, "--steps", 1, *[a.format(**fill) for a in argv],
                          "--out", tmp_path / "a.safetensors")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert problem.format(**fill) in err
    assert not (tmp_path / "a.safetensors").exists()


def test_a_negative_keep_weight_is_a_usage_error(fish):
    code, _, err = _run("train", fish, *LITE0, "--keep-weight", "-1")
    assert code == 2 and "--keep-weight" in err


def test_seed_mode_takes_a_keep_set_only_when_asked(fish, tmp_path):
    code, out, err = _run("train", fish, *LITE0, "--mode", "seed", "--steps", 1, "--out", tmp_path / "a.safetensors",
                          "--json")
    assert code == 0, err
    assert json.loads(out)["keep"] is None  # the tutorial's plain loss
    code, out, err = _run("train", fish, *LITE0, "--mode", "seed", "--keep", "--steps", 1,
                          "--out", tmp_path / "b.safetensors", "--json")
    assert code == 0, err
    kept = json.loads(out)["keep"]
    assert kept["images"] == len(list(DEFAULT_KEEP.glob("*.png"))) and kept["weight"] == 10.0

