"""Specification of funclora.vision.images: finding image files and reading them as RGB."""

from __future__ import annotations

from pathlib import Path

import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision.transforms.functional import to_tensor

from funclora.vision.images import IMAGE_SUFFIXES, list_images, load_batch, load_image

WHITE, BLACK, RED, GREEN = (255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 255, 0)


def _save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


def _row(mode: str, values: list) -> Image.Image:
    """A 1-pixel-high image whose pixels are ``values``, left to right."""
    image = Image.new(mode, (len(values), 1))
    image.putdata(values)
    return image


def _pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    return [image.getpixel((x, 0)) for x in range(image.width)]


def _touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- list_images -----------------------------------------------------------


def test_a_folder_expands_to_its_image_files_sorted_by_name(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.webp", "notes.txt", "model.pth", ".hidden.png", "sub/d.png"]:
        _touch(tmp_path / name)
    (tmp_path / "folder.jpg").mkdir()  # a directory is not an image, whatever its name

    assert list_images([tmp_path]) == [tmp_path / "a.jpg", tmp_path / "b.PNG", tmp_path / "c.webp"]


def test_every_listed_suffix_counts_as_an_image_in_any_case(tmp_path):
    for suffix in IMAGE_SUFFIXES:
        _touch(tmp_path / f"x{suffix.upper()}")
    assert len(list_images([tmp_path])) == len(IMAGE_SUFFIXES)


def test_files_are_kept_as_given_in_order_between_expanded_folders(tmp_path):
    folder = tmp_path / "folder"
    inside = _touch(folder / "in.png")
    last, first = _touch(tmp_path / "z.jpg"), _touch(tmp_path / "odd-name.dat")

    assert list_images([last, folder, first]) == [last, inside, first]
    assert list_images([str(last)]) == [last]
    assert list_images(str(folder)) == [inside]  # a single path, not a list of characters
    assert list_images([]) == []


def test_a_missing_path_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.jpg: no such file or directory"):
        list_images([tmp_path / "nope.jpg"])


def test_a_folder_without_images_is_an_error_naming_it_and_the_suffixes(tmp_path):
    _touch(tmp_path / "readme.txt")
    with pytest.raises(ValueError, match=rf"{re.escape(tmp_path.name)}: no images \(expected .*\.png/\.jpg"):
        list_images([tmp_path])


# --- load_image: every mode becomes RGB with the right pixels ---------------


def _red_green_palette() -> Image.Image:
    image = _row("P", [0, 1])
    image.putpalette([*RED, *GREEN])
    return image


MODES = {
    # id: (image, format, options, pixels after load_image)
    "RGB": (_row("RGB", [RED, GREEN]), "PNG", {}, [RED, GREEN]),
    "L": (_row("L", [0, 100]), "PNG", {}, [BLACK, (100, 100, 100)]),
    "1": (_row("1", [0, 255]), "PNG", {}, [BLACK, WHITE]),
    "P": (_red_green_palette(), "GIF", {}, [RED, GREEN]),
    "P+transparency": (_red_green_palette(), "PNG", {"transparency": 0}, [WHITE, GREEN]),
    "LA": (_row("LA", [(100, 0), (100, 255)]), "PNG", {}, [WHITE, (100, 100, 100)]),
    "RGBA": (_row("RGBA", [(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 51)]), "PNG", {}, [WHITE, RED, (204, 204, 204)]),
    "I;16": (_row("I;16", [0, 257, 65535]), "PNG", {}, [BLACK, (1, 1, 1), WHITE]),
    "I (16-bit data)": (_row("I", [0, 257, 65535]), "TIFF", {}, [BLACK, (1, 1, 1), WHITE]),
    "I (signed, stretched)": (_row("I", [-1000, 0, 1000]), "TIFF", {}, [BLACK, (128, 128, 128), WHITE]),
    "F (0..1)": (_row("F", [0.0, 0.5, 1.0]), "TIFF", {}, [BLACK, (128, 128, 128), WHITE]),
    "F (0..255)": (_row("F", [0.0, 200.0, 255.0]), "TIFF", {}, [BLACK, (200, 200, 200), WHITE]),
    "CMYK": (_row("CMYK", [(0, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 255)]), "TIFF", {}, [WHITE, RED, BLACK]),
    "YCbCr": (_row("YCbCr", [(255, 128, 128), (76, 85, 255)]), "TIFF", {}, [WHITE, RED]),
}


@pytest.mark.parametrize("case", list(MODES), ids=list(MODES))
def test_every_mode_loads_as_rgb_with_the_right_pixels(tmp_path, case):
    image, fmt, options, expected = MODES[case]
    path = _save(tmp_path / f"image.{fmt.lower()}", image, format=fmt, **options)
    assert Image.open(path).mode == image.mode  # the file really stores that mode

    loaded = load_image(path)

    assert loaded.mode == "RGB" and loaded.size == image.size
    got = np.array(_pixels(loaded), dtype=int)
    assert np.abs(got - np.array(expected)).max() <= 1, f"{case}: {got.tolist()} != {expected}"


def test_jpeg_cmyk_loads_as_rgb(tmp_path):
    path = _save(tmp_path / "print.jpg", Image.new("CMYK", (8, 8), (0, 0, 0, 0)), quality=100)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and min(loaded.getpixel((4, 4))) >= 250  # no ink is white paper


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(tmp_path / "phone.jpg", Image.new("RGB", (40, 20)), exif=exif)
    assert load_image(path).size == (20, 40)


def test_a_path_may_be_a_str(tmp_path):
    path = _save(tmp_path / "x.bmp", Image.new("RGB", (3, 2), RED))
    assert load_image(str(path)).getpixel((0, 0)) == RED


# --- load_image: bad files are one-line errors naming the file --------------


def _noise_png(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return _save(path, Image.fromarray(noise))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_truncated_file_is_an_error_naming_it(tmp_path, suffix):
    full = _noise_png(tmp_path / "full.png")
    if suffix == ".jpg":
        full = _save(tmp_path / "full.jpg", Image.open(full).convert("RGB"))
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    with pytest.raises(ValueError, match=rf"^{re.escape(str(cut))}: truncated image file$"):
        load_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # no global switch was flipped


def test_a_text_file_named_png_is_an_error_naming_it(tmp_path):
    path = _touch(tmp_path / "fake.png", b"hello, I am not a picture\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: not a readable image \(.*\)$"):
        load_image(path)


@pytest.mark.parametrize("name", ["missing.png", "a-folder.png"])
def test_a_missing_file_or_a_folder_is_an_error_naming_it(tmp_path, name):
    (tmp_path / "a-folder.png").mkdir()
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / name))}: "):
        load_image(tmp_path / name)


# --- load_batch --------------------------------------------------------------


def test_load_batch_stacks_preprocessed_images(tmp_path):
    red = _save(tmp_path / "red.png", Image.new("RGBA", (5, 4), (255, 0, 0, 255)))
    grey = _save(tmp_path / "grey.tif", Image.new("I;16", (5, 4), 257 * 100))

    batch = load_batch([red, grey], to_tensor)

    assert batch.shape == (2, 3, 4, 5) and batch.dtype == torch.float32
    assert batch[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(batch[1, :, 0, 0], torch.full((3,), 100 / 255))


def test_load_batch_rejects_an_empty_list_and_names_bad_files(tmp_path):
    good = _save(tmp_path / "good.png", Image.new("RGB", (5, 4)))
    bigger = _save(tmp_path / "bigger.png", Image.new("RGB", (6, 4)))
    broken = _touch(tmp_path / "broken.jpg", b"\xff\xd8 nope")

    with pytest.raises(ValueError, match="paths is empty"):
        load_batch([], to_tensor)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(broken))}: not a readable image"):
        load_batch([good, broken], to_tensor)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bigger))}: preprocess gave shape \(3, 4, 6\) but .*good.png gave \(3, 4, 5\)"):
        load_batch([good, bigger], to_tensor)
