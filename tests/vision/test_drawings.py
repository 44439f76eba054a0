"""The showcase pictures are reproducible from the committed drawing scripts."""

import hashlib
import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from helpers import REPO

DATA = REPO / "data"
# where each folder is committed (the keep set is package data)
COMMITTED = {"goldfish": DATA / "goldfish", "heldout": DATA / "heldout", "keep": REPO / "funclora" / "vision" / "keep",
             "specificity/not_goldfish": DATA / "specificity" / "not_goldfish",
             "specificity/goldfish": DATA / "specificity" / "goldfish"}

# script -> {data subfolder: expected number of PNGs}
SCRIPTS = {
    "make_goldfish": {"goldfish": 5, "heldout": 2},
    "make_keep": {"keep": 37},
    "make_heldout": {"specificity/not_goldfish": 20, "specificity/goldfish": 5},
}


def load(name: str):
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", params=sorted(SCRIPTS))
def drawn(request, tmp_path_factory):
    """Run one script into a fresh folder; yields (folders and counts, output dir)."""
    out = tmp_path_factory.mktemp(request.param)
    assert load(request.param).main(["--out", str(out)]) == 0
    return SCRIPTS[request.param], out


def test_reproduces_committed_files_byte_for_byte(drawn):
    counts, out = drawn
    for folder in counts:
        fresh = {p.name: sha256(p) for p in (out / folder).glob("*.png")}
        committed = {p.name: sha256(p) for p in (COMMITTED[folder]).glob("*.png")}
        assert fresh == committed, f"{COMMITTED[folder]} is stale: rerun the drawing script"


def test_counts_and_image_format(drawn):
    counts, out = drawn
    for folder, n in counts.items():
        paths = sorted((out / folder).glob("*.png"))
        assert len(paths) == n
        for p in paths:
            with Image.open(p) as im:
                assert im.mode == "RGB"
                assert min(im.size) >= 224
                assert not im.info.get("tIME") and not im.text  # nothing that varies between runs


def test_heldout_names():
    names = {p.name for p in (DATA / "heldout").glob("*.png")}
    assert names == {"goldfish_heldout.png", "not_goldfish_heldout.png"}


def test_the_specificity_set_has_four_non_goldfish_and_a_goldfish_in_every_style():
    heldout = load("make_heldout")
    styles = [style for style, _, _ in heldout.NOT_GOLDFISH.values()]
    assert {s: styles.count(s) for s in set(styles)} == {s: 4 for s in load("drawing").STYLES}
    assert sorted(style for style, _, _ in heldout.GOLDFISH.values()) == sorted(load("drawing").STYLES)
    assert "hand_grenade_flat" in heldout.NOT_GOLDFISH


def test_what_the_specificity_set_measures_is_never_trained_on():
    # The held-out subjects are drawn by functions that neither the keep set nor the goldfish use.
    heldout, keep = load("make_heldout"), load("make_keep")
    measured = {subject for _, subject, _ in heldout.NOT_GOLDFISH.values()}
    trained = {entry[1] for entry in keep.KEEP.values() if len(entry) == 3}
    tuned = {subject for _, subject, _ in keep.DEV_NOT_GOLDFISH.values()}
    assert measured and trained and tuned
    assert not measured & trained and not measured & tuned and not trained & tuned
    names = {p.stem for folder in ("goldfish", "heldout") for p in (DATA / folder).glob("*.png")}
    assert not names & {p.stem for p in (DATA / "specificity").rglob("*.png")}
