"""Hostile adapter files given to `predict`, `eval` and `export`: a bad config, metadata or tensor
ends the run with one line naming the file (exit 1), before any result is printed; nothing written.
"""
import json
import math
import os

import pytest
import torch

from hostile import assert_finite_files, cli, fails, one_line, read_adapter, snapshot, tiny_images, train_args, write_adapter


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(a trained lite0 adapter, a folder of images, a labelled folder for eval)."""
    root = tmp_path_factory.mktemp("adapters")
    images = tiny_images(root / "images")
    labelled = tiny_images(root / "labelled" / "goldfish")
    adapter = root / "good.safetensors"
    code, _, err = cli(*train_args(images, adapter))
    assert code == 0, err
    seed = root / "seed.safetensors"
    code, _, err = cli(*train_args(images, seed, "--mode", "seed"))
    assert code == 0, err
    return adapter, images, labelled.parent, seed


def _config(change=None, drop=None):
    def edit(tensors, meta):
        fields = json.loads(meta["config"])
        fields.update(change or {})
        if drop:
            del fields[drop]
        meta["config"] = json.dumps(fields)
    return edit


def _meta(**change):
    def edit(tensors, meta):
        for k, v in change.items():
            if v is None:
                meta.pop(k, None)
            else:
                meta[k] = v
    return edit


def _tensor(key, make):
    def edit(tensors, meta):
        if make is None:
            del tensors[key]
        else:
            tensors[key] = make(tensors.get(key))
    return edit


def _raw_config(text):
    def edit(tensors, meta):
        meta["config"] = text
    return edit


nan = lambda t: torch.full_like(t, math.nan)  # noqa: E731
VARIANTS = {
    # config in the header
    "config-null": (_raw_config("null"), "config"),
    "config-5": (_raw_config("5"), "config"),
    "config-list": (_raw_config("[]"), "config"),
    "config-not-json": (_raw_config("{rank: 8"), "not valid JSON"),
    "no-config-key": (_meta(config=None), "no 'config'"),
    "targets-5": (_config({"targets": 5}), "targets"),
    "targets-other-layer": (_config({"targets": ["_conv_stem"]}), "does not fit|do not match"),
    "targets-no-such": (_config({"targets": ["nope"]}), "nope"),
    "rank_pattern-list": (_config({"rank_pattern": [1, 2]}), "rank_pattern"),
    "rank_pattern-string-value": (_config({"rank_pattern": {"_fc": "8"}}), "rank_pattern"),
    "use_rslora-false-string": (_config({"use_rslora": "false"}), "use_rslora"),
    "use_rslora-no": (_config({"use_rslora": "no"}), "use_rslora"),
    "rank-string": (_config({"rank": "8"}), "rank"),
    "rank-wrong": (_config({"rank": 4}), "shapes"),
    "alpha-string": (_config({"alpha": "8"}), "alpha"),
    "alpha-nan": (_config({"alpha": math.nan}), "alpha"),
    "alpha-missing": (_config(drop="alpha"), "lacks fields"),
    "rank-missing": (_config(drop="rank"), "lacks fields"),
    "use_rslora-missing": (_config(drop="use_rslora"), "lacks fields"),
    "targets-missing": (_config(drop="targets"), "lacks fields"),
    "unknown-field": (_config({"fancy": True}), "unknown LoraConfig"),
    "init-3": (_config({"init": 3}), "init"),
    # metadata
    "mode-seed-on-layers": (_meta(mode="seed"), "mode 'seed'"),
    "mode-unknown": (_meta(mode="turbo"), "mode 'turbo'"),
    "backbone-unknown": (_meta(backbone="resnet9000"), "resnet9000"),
    "format-missing": (_meta(format=None), "not a funclora adapter"),
    "format-other": (_meta(format="pt"), "not a funclora adapter"),
    "seed-not-a-number": (_meta(seed="abc"), "seed"),
    "seed-huge": (_meta(seed=str(2**70)), "seed"),
    # tensors
    "nan-A": (_tensor("_fc.A", nan), "non-finite"),
    "inf-B": (_tensor("_fc.B", lambda t: torch.full_like(t, math.inf)), "non-finite"),
    "one-nan-B": (_tensor("_fc.B", lambda t: torch.where(torch.arange(t.numel()).view(t.shape) == 5, math.nan, t)), "non-finite"),
    "int64-A": (_tensor("_fc.A", lambda t: t.long()), "not a float"),
    "bool-B": (_tensor("_fc.B", lambda t: t.bool()), "not a float"),
    "missing-B": (_tensor("_fc.B", None), "needs both A and B"),
    "extra-tensor": (_tensor("_fc.bias", lambda t: torch.zeros(3)), "unexpected tensor"),
    "A-wrong-shape": (_tensor("_fc.A", lambda t: torch.zeros(8, 1000)), "shapes"),
    "A-1d": (_tensor("_fc.A", lambda t: torch.zeros(8)), "shapes|shape"),
    "overflowing-values": (_tensor("_fc.B", lambda t: torch.full_like(t, 3e38)), "not finite"),
}


def _variant(good, tmp_path, name):
    tensors, meta = read_adapter(good[0])
    edit, _ = VARIANTS[name]
    edit(tensors, meta)
    if name == "overflowing-values":  # finite numbers whose product B @ A overflows float32
        tensors["_fc.A"] = torch.full_like(tensors["_fc.A"], 3e38)
    return write_adapter(tmp_path / f"{name}.safetensors", tensors, meta)


@pytest.mark.parametrize("name", VARIANTS)
def test_predict_refuses_a_hostile_adapter_before_printing_anything(name, good, tmp_path):
    adapter = _variant(good, tmp_path, name)
    code, out, err = cli("predict", good[1], "--adapter", adapter, "--weights", "none")
    assert code == 1 and out == "", err
    line = one_line(err, adapter)
    assert any(word in line for word in VARIANTS[name][1].split("|")), line


@pytest.mark.parametrize("name", VARIANTS)
def test_eval_refuses_a_hostile_adapter_before_any_result(name, good, tmp_path):
    adapter = _variant(good, tmp_path, name)
    code, out, err = cli("eval", good[2], "--adapter", adapter, "--weights", "none", "--quiet")
    assert code == 1 and out == "", err
    one_line(err, adapter)


EXPORTABLE = [n for n in VARIANTS if n not in ("overflowing-values", "backbone-unknown", "mode-seed-on-layers",
                                               "mode-unknown", "seed-not-a-number", "seed-huge")]


@pytest.mark.parametrize("name", EXPORTABLE)
def test_export_refuses_a_hostile_adapter_and_writes_no_folder(name, good, tmp_path):
    adapter = _variant(good, tmp_path, name)
    before = snapshot(tmp_path)
    fails(cli("export", adapter, "--peft", tmp_path / "peft", "--backbone", "efficientnet_lite0"), adapter)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("label", ["1000", "5000", "-1", "abc", "1e3"])
def test_eval_with_a_label_outside_the_classes_fails_clearly_before_results(label, good, tmp_path):
    tensors, meta = read_adapter(good[0])
    adapter = write_adapter(tmp_path / "a.safetensors", tensors, {**meta, "label": label})
    code, out, err = cli("eval", good[2], "--adapter", adapter, "--weights", "none", "--quiet")
    assert code == 1 and out == ""
    assert "label" in one_line(err, adapter)


SEED_VARIANTS = {
    "nan": lambda t: {**t, "input.B": torch.full_like(t["input.B"], math.nan)},
    "inf": lambda t: {**t, "input.A": torch.full_like(t["input.A"], math.inf)},
    "int64": lambda t: {**t, "input.B": t["input.B"].long()},
    "wrong-name": lambda t: {"x.A": t["input.A"], "x.B": t["input.B"]},
    "B-transposed": lambda t: {**t, "input.B": t["input.B"].T.contiguous()},
    "A-4d": lambda t: {**t, "input.A": t["input.A"].view(-1, 8, 1, 1)},
    "too-few-pixels": lambda t: {**t, "input.A": t["input.A"][:100]},
}


@pytest.mark.parametrize("name", SEED_VARIANTS)
def test_a_hostile_seed_adapter_is_refused_not_printed_as_nan(name, good, tmp_path):
    tensors, meta = read_adapter(good[3])
    adapter = write_adapter(tmp_path / f"seed-{name}.safetensors", SEED_VARIANTS[name](tensors), meta)
    code, out, err = cli("predict", good[1], "--adapter", adapter, "--weights", "none")
    assert code == 1 and out == "", err
    one_line(err, adapter)
    code, out, err = cli("eval", good[2], "--adapter", adapter, "--weights", "none", "--quiet")
    assert code == 1 and out == "", err
    one_line(err, adapter)


@pytest.mark.parametrize("case", ["empty", "text", "truncated", "folder", "fifo", "loop", "missing",
                                  "peft-folder", "png"])
def test_what_is_no_adapter_file_is_named(case, good, tmp_path):
    path = tmp_path / "a.safetensors"
    data = good[0].read_bytes()
    if case == "folder":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "loop":
        os.symlink(path.name, path)
    elif case == "peft-folder":
        assert cli("export", good[0], "--peft", path)[0] == 0
    elif case != "missing":
        path.write_bytes({"empty": b"", "text": b"hello", "truncated": data[: len(data) // 2],
                          "png": b"\x89PNG\r\n\x1a\n"}[case])
    before = snapshot(tmp_path)
    for command in (["predict", good[1]], ["eval", good[2], "--quiet"], ["export"]):
        argv = [*command, "--adapter", path] if command[0] != "export" else ["export", path, "--peft", tmp_path / "out"]
        fails(cli(*argv, *(["--weights", "none"] if command[0] != "export" else [])), path)
    assert snapshot(tmp_path) == before


def test_a_float16_adapter_is_fine(good, tmp_path):
    tensors, meta = read_adapter(good[0])
    adapter = write_adapter(tmp_path / "half.safetensors", {k: v.half() for k, v in tensors.items()}, meta)
    code, out, err = cli("predict", good[1], "--adapter", adapter, "--weights", "none", "--json")
    assert code == 0 and err == "", err
    assert assert_finite_files(tmp_path) == 1


def test_an_adapter_for_another_backbone_is_named(good, tmp_path):
    fails(cli("predict", good[1], "--adapter", good[0], "--backbone", "vgg19", "--weights", "none"),
          good[0], "efficientnet_lite0")
