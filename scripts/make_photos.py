"""Write the real photos that Python packages ship, labelled by hand, as an evaluation folder.

The photos come from scikit-image's sample images and matplotlib's sample data (both installed
with the test extras, no download). ``data/photos.csv`` lists the ones whose content has a clear
ImageNet class, with the class id chosen by hand (not by a model) and a note on any ambiguity:

    source               "skimage:<function>" (skimage.data.<function>()) or
                         "matplotlib:<file>" (mpl-data/sample_data/<file>)
    name                 the output file's stem
    label, class         ImageNet class id and its name (the two must agree)
    crop                 empty for the whole photo, or "left,top,right,bottom" in pixels: a
                         distinct object cut out of a photo (said so in the note)
    note                 why this label, and what else would be right

Left out on purpose: the astronaut as a whole, the stereo motorcycle (no ImageNet class for a
motorcycle; its left and right views are one photo twice), coins, bricks, text pages, the
binary horse silhouette and microscopy images.

The output is the layout `funclora eval` reads, one sub-folder per class id:

    python scripts/make_photos.py --out runs/photos      # runs/photos/281/chelsea.png ...
    funclora eval runs/photos --adapter runs/efficientnet_lite0-goldfish.safetensors

Greyscale photos are written as RGB. PNGs carry no metadata, so two runs give identical bytes.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CSV = REPO / "data" / "photos.csv"
COLUMNS = ("source", "name", "label", "class", "crop", "note")


def read_rows(path: Path = CSV) -> list[dict[str, str]]:
    """The CSV's rows, checked: every column present, labels are integers, names unique."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns are {reader.fieldnames}, expected {list(COLUMNS)}")
        rows = list(reader)
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate names in {names}")
    for row in rows:
        if not row["label"].isdigit():
            raise ValueError(f"{path}: {row['name']}: label {row['label']!r} is not an ImageNet class id")
    return rows


def load_source(source: str) -> Image.Image:
    """The photo a "package:item" source names, as an RGB image."""
    package, _, item = source.partition(":")
    if package == "skimage":
        import skimage.data

        pixels = np.asarray(getattr(skimage.data, item)())
        return Image.fromarray(pixels).convert("RGB")
    if package == "matplotlib":
        import matplotlib

        with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / item) as image:
            return image.convert("RGB")
    raise ValueError(f"unknown source {source!r} (expected 'skimage:<name>' or 'matplotlib:<file>')")


def make_photo(row: dict[str, str]) -> Image.Image:
    image = load_source(row["source"])
    if row["crop"]:
        box = tuple(int(v) for v in row["crop"].split(","))
        image = image.crop(box)
    return image


def write_photos(out: Path, rows: Sequence[dict[str, str]]) -> list[Path]:
    """Write each row to out/<label>/<name>.png; return the paths written."""
    written = []
    for row in rows:
        path = out / row["label"] / f"{row['name']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_photo(row).save(path, optimize=False)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="the photos and their labels: data/photos.csv")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "photos",
                        help="folder to write into, as OUT/<class id>/<name>.png (default: runs/photos)")
    parser.add_argument("--csv", type=Path, default=CSV, help="the labelled list (default: data/photos.csv)")
    args = parser.parse_args(argv)
    paths = write_photos(args.out, read_rows(args.csv))
    print(f"wrote {len(paths)} photos to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
