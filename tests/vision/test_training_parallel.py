"""Specification of `torchrun --nproc-per-node N -m funclora train CLASS_DIR`: data-parallel minibatches.

Every rank draws the same global batches (--seed, epoch) and loads only its contiguous share of
each; the ragged last batch of 1 example leaves rank 1 a spare example weighted 0. The adapters
and the new head start as rank 0's, gradients and loss are summed in one bucket, every rank
evaluates its share of the validation set (hits summed), rank 0 alone prints and writes. So 2 processes end equal (1e-5 relative) to 1 process, checkpoints hold global state only
and resume on another number of processes, and a bad image on one rank's share stops both, each
with one line. EfficientNet-Lite0 with random weights on a tiny drawn dataset, gloo on localhost.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import funclora as fl
from funclora.vision.data import EpochBatches, class_folders
from helpers import LITE0, REPO, free_port, run_cli
from test_train_dataset import _dataset

# 12 images, 3 held out: 9 to train in global batches of 4, 4 and 1 (rank 1's share of the last is a spare).
COMMON = [*LITE0, "--head", "new", "--targets", "_conv_head", "--rank", "2", "--epochs", "2", "--batch-size", "4",
          "--lr", "0.05", "--val-split", "0.25", "--checkpoint-every", "2", "--json", "--quiet"]
TOL = dict(rtol=1e-5, atol=1e-7)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", **extra}


def _torchrun(*argv, program=("-m", "funclora")) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *program, *map(str, argv)], env=_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two processes (computing the features into a fresh cache; rank 1 drawing other starting
    adapters and head, which rank 0's must replace), then one process on the same cache; both
    write checkpoints at steps 2, 4 and 6 (the two newest are kept)."""
    root = tmp_path_factory.mktemp("parallel")
    data = _dataset(root / "shapes")
    two = _torchrun("train", data, *COMMON, "--cache", root / "cache", "--checkpoint", root / "two",
                    "--out", root / "two.safetensors", program=[str(Path(__file__).with_name("other_init_worker.py"))])
    assert two.returncode == 0, two.stderr[-3000:]
    code, one, err = run_cli("train", data, *COMMON, "--cache", root / "cache", "--checkpoint", root / "one",
                             "--out", root / "one.safetensors")
    assert code == 0, err
    return root, data, two.stdout, one


def _same_run(root: Path, a: str, b: str) -> None:
    """Adapter files (A, B and the new head) and the checkpointed loss of every step, 1e-5 relative."""
    x, y = load_file(root / f"{a}.safetensors"), load_file(root / f"{b}.safetensors")
    assert x.keys() == y.keys() and len(x) == 4  # A, B, the head's weight and bias
    torch.testing.assert_close(x, y, **TOL)
    end_x, _ = fl.load_checkpoint(fl.latest_checkpoint(root / a))
    end_y, _ = fl.load_checkpoint(fl.latest_checkpoint(root / b))
    assert len(end_x["losses"]) == len(end_y["losses"]) == 6
    torch.testing.assert_close(end_x["losses"], end_y["losses"], **TOL)


def test_two_processes_on_class_folders_end_equal_to_one(runs):
    root, data, two, one = runs
    assert len(two.strip().splitlines()) == 1  # rank 0 alone prints
    two, one = json.loads(two), json.loads(one)
    assert two["steps"] == one["steps"] == 6
    assert two["cached"]["computed"] == 12 and one["cached"]["reused"] == 12  # the ranks' files, read whole
    _same_run(root, "two", "one")
    for a, b in zip(two["history"], one["history"]):  # per-epoch loss and val (every rank its share of val)
        assert a["val"] == b["val"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert sorted(p.name for p in root.iterdir() if p.suffix == ".safetensors") == ["one.safetensors",
                                                                                     "two.safetensors"]


def _resume_from(root: Path, run: str, step: int, into: str) -> Path:
    """A checkpoint folder holding only `run`'s checkpoint at `step` (as if it had been killed there)."""
    (root / into).mkdir()
    shutil.copy(root / run / f"step-{step:09d}.safetensors", root / into)
    return root / into


def test_a_checkpoint_of_two_processes_resumes_in_one_and_ends_equal_to_the_uninterrupted_run(runs):
    root, data, *_ = runs
    folder = _resume_from(root, "two", 4, "two_then_one")  # mid-epoch 2
    code, _, err = run_cli("train", data, *COMMON, "--cache", root / "cache", "--checkpoint", folder,
                           "--out", root / "two_then_one.safetensors", "--resume")
    assert code == 0 and "(step 4 of 6)" in err, err
    _same_run(root, "two_then_one", "one")


def test_a_checkpoint_of_one_process_resumes_in_two_and_ends_equal_to_the_uninterrupted_run(runs):
    root, data, *_ = runs
    folder = _resume_from(root, "one", 4, "one_then_two")
    run = _torchrun("train", data, *COMMON, "--cache", root / "cache", "--checkpoint", folder,
                    "--out", root / "one_then_two.safetensors", "--resume")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("resuming from") == 1  # rank 0 alone says it
    _same_run(root, "one_then_two", "one")


def test_a_bad_image_on_one_ranks_share_stops_both_ranks_with_one_line_each(tmp_path):
    data = _dataset(tmp_path / "shapes")
    paths, _, _ = class_folders(data)
    bad = paths[next(iter(EpochBatches(len(paths), 4, 0, 0, rank=1, world=2)))[0]]  # rank 1 reads it first
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    env = _env(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), FUNCLORA_DIST_TIMEOUT="60")
    argv = ["train", data, *LITE0, "--head", "new", "--batch-size", "4", "--cache", "none", "--quiet",
            "--out", tmp_path / "a.safetensors"]
    ranks = [subprocess.Popen([sys.executable, "-m", "funclora", *map(str, argv)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    try:
        errors = [p.communicate(timeout=120)[1] for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    assert [p.returncode for p in ranks] == [1, 1], errors
    lines = [e.strip().splitlines() for e in errors]
    assert all(len(e) == 1 for e in lines), errors
    assert lines[1][0].startswith(f"funclora: error: rank 1 of 2: {bad}:"), lines
    assert lines[0][0].startswith("funclora: error: rank 0 of 2: stopped: another rank failed or gave no answer")
    assert not (tmp_path / "a.safetensors").exists()
