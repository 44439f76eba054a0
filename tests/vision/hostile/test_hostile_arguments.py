"""Hostile command lines: every bad argument ends the run with one line naming it (exit 2 for a
malformed command line, 1 for a well-formed but impossible one), before any work, writing nothing.
"""
import pytest

from hostile import LITE, cli, fails, snapshot, tiny_images


@pytest.fixture
def folder(tmp_path):
    images = tiny_images(tmp_path / "images")
    labelled = tiny_images(tmp_path / "labelled" / "goldfish")
    return tmp_path, images, labelled.parent


TRAIN = [  # (extra arguments of `train IMAGES`, exit status, what the line must name)
    (["--rank", "0"], 2, "--rank"), (["--rank", "-1"], 2, "--rank"), (["--rank", "abc"], 2, "--rank"),
    (["--rank", "1.5"], 2, "--rank"), (["--rank", "1001"], 1, "--rank 1001"),
    (["--rank", "1000000000"], 1, "--rank 1000000000"), (["--rank", "9" * 30], 1, "--rank"),
    (["--rank", "200000", "--mode", "seed"], 1, "--rank 200000"),
    (["--seed", "-1"], 2, "--seed"), (["--seed", str(2**64)], 2, "--seed"), (["--seed", str(2**63)], 2, "--seed"),
    (["--seed", "abc"], 2, "--seed"), (["--seed", "1.5"], 2, "--seed"), (["--seed", "9" * 40], 2, "--seed"),
    (["--lr", "nan"], 2, "--lr"), (["--lr", "inf"], 2, "--lr"), (["--lr", "0"], 2, "--lr"),
    (["--lr", "-1"], 2, "--lr"), (["--lr", "abc"], 2, "--lr"), (["--lr", "1e400"], 2, "--lr"),
    (["--steps", "-1"], 2, "--steps"), (["--steps", "abc"], 2, "--steps"), (["--steps", "1.5"], 2, "--steps"),
    (["--alpha", "0"], 2, "--alpha"), (["--alpha", "nan"], 2, "--alpha"), (["--alpha", "-2"], 2, "--alpha"),
    (["--alpha", "inf"], 2, "--alpha"),
    (["--keep-weight", "nan"], 2, "--keep-weight"), (["--keep-weight", "-1"], 2, "--keep-weight"),
    (["--keep-weight", "inf"], 2, "--keep-weight"),
    (["--label", "no such class"], 1, "no such class"), (["--label", "5000"], 1, "5000"),
    (["--label", "-1"], 1, "-1"),
    (["--mode", "turbo"], 2, "--mode"), (["--backbone", "resnet9000"], 2, "--backbone"),
    (["--targets", "nope"], 1, "nope"), (["--targets", "_bn1"], 1, "_bn1"),
    (["--weights", "/no/such/weights.pt"], 1, "/no/such/weights.pt"),
    (["--keep", "/no/such/keep"], 1, "--keep"),
    (["--mode", "seed", "--targets", "_fc"], 1, "--targets"), (["--mode", "seed", "--augment"], 1, "--augment"),
    (["--mode", "seed", "--keep", "x"], 1, "--keep"), (["--mode", "seed", "--alpha", "2"], 1, "--alpha"),
    (["--frobnicate"], 2, "--frobnicate"), (["--out"], 2, "--out"),
]


@pytest.mark.parametrize("extra, status, name", TRAIN, ids=[" ".join(e) for e, _, _ in TRAIN])
def test_train_refuses_a_bad_argument_naming_it_and_writes_nothing(extra, status, name, folder):
    root, images, _ = folder
    before = snapshot(root)
    fails(cli("train", images, *LITE, "--steps", 1, "--keep", "none", "--quiet",
              "--out", root / "a.safetensors", *extra), name, code=status)
    assert snapshot(root) == before


def test_weights_that_are_not_a_state_dict_are_named(folder):
    root, images, _ = folder
    (root / "weights.pt").write_text("not a state dict")
    fails(cli("train", images, "--backbone", "efficientnet_lite0", "--weights", root / "weights.pt",
              "--out", root / "a.safetensors", "--quiet"), "weights.pt")
    assert not (root / "a.safetensors").exists()


OTHERS = [  # whole command lines (IMAGES / DIR / ADAPTER stand for the fixtures' paths)
    ([], 2, "COMMAND"), (["frobnicate"], 2, "frobnicate"), (["train"], 2, "IMAGES_DIR"),
    (["predict"], 2, "IMAGES"), (["eval"], 2, "DIR"), (["export", "ADAPTER"], 2, "--peft"),
    (["import", "DIR"], 2, "--out"),
    (["predict", "IMAGES", *LITE, "--top", "0"], 2, "--top"), (["predict", "IMAGES", *LITE, "--top", "-3"], 2, "--top"),
    (["predict", "IMAGES", *LITE, "--top", "x"], 2, "--top"), (["predict", "IMAGES", *LITE, "--seed", "-5"], 2, "--seed"),
    (["predict", "IMAGES", *LITE, "--seed", str(2**64)], 2, "--seed"),
    (["predict", "IMAGES", "--backbone", "alexnet"], 2, "--backbone"),
    (["predict", "IMAGES", *LITE, "--adapter", "MISSING"], 1, "missing.safetensors"),
    (["predict", "MISSING", *LITE], 1, "missing.safetensors"),
    (["eval", "MISSING", *LITE], 1, "missing.safetensors"), (["eval", "IMAGES", *LITE], 1, "images"),
    (["eval", "DIR", *LITE, "--seed", "x"], 2, "--seed"),
    (["export", "MISSING", "--peft", "OUT"], 1, "missing.safetensors"),
    (["export", "IMAGES", "--peft", "OUT"], 1, "images"),
    (["import", "MISSING", "--out", "OUT"], 1, "missing.safetensors"),
    (["import", "IMAGES", "--out", "OUT"], 1, "adapter_config.json"),
    (["import", "DIR", "--out", "OUT", "--backbone", "alexnet"], 2, "--backbone"),
]


@pytest.mark.parametrize("argv, status, name", OTHERS, ids=[" ".join(a) or "(nothing)" for a, _, _ in OTHERS])
def test_other_commands_refuse_bad_arguments_naming_them(argv, status, name, folder):
    root, images, labelled = folder
    where = {"IMAGES": images, "DIR": labelled, "ADAPTER": root / "missing.safetensors",
             "MISSING": root / "missing.safetensors", "OUT": root / "out"}
    before = snapshot(root)
    fails(cli(*[where.get(a, a) for a in argv]), name, code=status)
    assert snapshot(root) == before


@pytest.mark.parametrize("layout, name", [
    ({"notaclass": ["a.png"]}, "notaclass"), ({"99999": ["a.png"]}, "99999"), ({"": ["loose.png"]}, "loose.png"),
    ({"goldfish": []}, "goldfish"), ({}, "no class sub-folders"), ({"goldfish": ["notes.txt"]}, "goldfish"),
])
def test_eval_refuses_a_badly_laid_out_folder_naming_the_culprit(layout, name, tmp_path):
    from PIL import Image

    root = tmp_path / "labelled"
    root.mkdir()
    for sub, files in layout.items():
        (root / sub).mkdir(exist_ok=True)
        for f in files:
            if f.endswith(".png"):
                Image.new("RGB", (8, 8)).save(root / sub / f)
            else:
                (root / sub / f).write_text("x")
    fails(cli("eval", root, *LITE, "--quiet"), name)


@pytest.mark.parametrize("extra", [["--rank", "1000"], ["--seed", str(2**63 - 1)], ["--steps", "0"],
                                   ["--rank", "1", "--alpha", "1e-6"], ["--label", "1"], ["--label", "Goldfish"]],
                         ids=str)
def test_extreme_but_valid_arguments_work(extra, folder):
    root, images, _ = folder
    code, out, err = cli("train", images, *LITE, "--steps", 1, "--keep", "none", "--quiet",
                         "--out", root / "a.safetensors", *extra)
    assert code == 0 and err == "", err
    assert (root / "a.safetensors").is_file()
