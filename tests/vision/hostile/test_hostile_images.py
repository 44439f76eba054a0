"""Hostile image files given to `funclora predict` and `funclora train`: every unreadable one ends
the run with one line naming it (exit 1, nothing written, no hang); every odd but valid one works.
"""
import io
import json
import os
import socket
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from hostile import LITE, cli, fails, no_hang, snapshot, tiny_images, train_args


def _png(width, height):
    """A valid 1-bit PNG of any size, written without holding its pixels (zeros compress to ~nothing)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    data = b"".join(rows.compress(row) for _ in range(height)) + rows.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _encoded(image, fmt, **kw):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def _float_tiff(value):
    values = np.full((8, 8), 0.5, dtype=np.float32)
    values[2, 3] = value
    return _encoded(Image.fromarray(values, mode="F"), "TIFF")


PNG = _encoded(Image.new("RGB", (32, 32), (200, 30, 30)), "PNG")
JPG = _encoded(Image.new("RGB", (32, 32), (30, 200, 30)), "JPEG")

# name -> bytes of a file that must be refused, and a word the one line must contain
BROKEN = {
    "empty.png": (b"", "not a readable image"),
    "text.png": (b"this is not a picture\n", "not a readable image"),
    "html.jpg": (b"<html><body>404 Not Found</body></html>", "not a readable image"),
    "truncated.png": (PNG[: len(PNG) // 2], "image"),
    "truncated.jpg": (JPG[: len(JPG) // 3], "image"),
    "header-only.png": (PNG[:16], "image"),
    "bad-crc.png": (PNG[:29] + b"\x00\x00\x00\x00" + PNG[33:], "image"),
    "gif-header.gif": (b"GIF89a", "image"),
    "zero-size.png": (_png(1, 1)[:16] + struct.pack(">II", 0, 0) + _png(1, 1)[24:], "image"),
    "bomb.png": (_png(14000, 14000), "too large"),
    "over-cap.png": (_png(12000, 12000), "megapixels"),
    "nan.tif": (_float_tiff(np.nan), "not finite"),
    "inf.tif": (_float_tiff(np.inf), "not finite"),
    "minus-inf.tif": (_float_tiff(-np.inf), "not finite"),
    "pickle.png": (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00.", "not a readable image"),
    "zip.jpg": (b"PK\x03\x04" + b"\x00" * 40, "not a readable image"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_predict_refuses_a_broken_image_naming_it(name, tmp_path):
    data, word = BROKEN[name]
    (tmp_path / name).write_bytes(data)
    before = snapshot(tmp_path)
    line = fails(cli("predict", tmp_path / name, *LITE), name)
    assert word in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", BROKEN)
def test_train_refuses_a_folder_with_a_broken_image_and_writes_nothing(name, tmp_path):
    folder = tiny_images(tmp_path / "images")
    (folder / name).write_bytes(BROKEN[name][0])
    before = snapshot(tmp_path)
    fails(cli(*train_args(folder, tmp_path / "out" / "a.safetensors")), name)
    assert snapshot(tmp_path) == before


def _special(kind, path):
    """Make a path that is no regular file: a FIFO, a socket, a link loop, a broken link..."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        return server
    elif kind == "loop":
        os.symlink(path.name, path)
    elif kind == "loop-pair":
        os.symlink(path.name + ".other", path)
        os.symlink(path.name, str(path) + ".other")
    elif kind == "dangling":
        os.symlink("nowhere.png", path)
    elif kind == "device":
        os.symlink("/dev/zero", path)
    elif kind == "folder":
        path.mkdir()
        Image.new("RGB", (4, 4)).save(path / "inner.png")
    return None


SPECIAL = {"fifo": "FIFO", "socket": "socket", "loop": "symbolic link loop", "loop-pair": "symbolic link loop",
           "dangling": "broken symbolic link", "device": "device"}


@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_file_given_by_name_is_refused_without_hanging(kind, tmp_path):
    path = tmp_path / "x.png"
    keep = _special(kind, path)
    line = fails(cli("predict", path, *LITE), "x.png")
    assert SPECIAL[kind] in line
    if keep:
        keep.close()


@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_file_inside_a_folder_is_named_not_skipped_or_waited_on(kind, tmp_path):
    folder = tiny_images(tmp_path / "images")
    keep = _special(kind, folder / "x.png")
    before = snapshot(tmp_path)
    line = fails(cli(*train_args(folder, tmp_path / "a.safetensors")), "x.png")
    assert SPECIAL[kind] in line and snapshot(tmp_path) == before
    if keep:
        keep.close()


@pytest.mark.parametrize("case, word", [
    ("missing-file", "no such file"), ("missing-folder", "no such file"), ("empty-folder", "no images"),
    ("only-hidden", "no images"), ("only-text", "no images"), ("folder-loop", "symbolic link loop"),
])
def test_folders_without_usable_images_are_named(case, word, tmp_path):
    target = tmp_path / "in"
    if case == "missing-folder":
        target = tmp_path / "no" / "such"
    elif case == "missing-file":
        target = tmp_path / "nope.png"
    elif case == "folder-loop":
        os.symlink("in", target)
    else:
        target.mkdir()
        if case == "only-hidden":
            Image.new("RGB", (4, 4)).save(target / ".hidden.png")
        if case == "only-text":
            (target / "notes.txt").write_text("x")
    line = fails(cli("predict", target, *LITE), target.name)
    assert word in line


VALID = {
    "one-pixel.png": lambda: _encoded(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"),
    "strip.png": lambda: _encoded(Image.new("RGB", (4000, 1), (9, 9, 9)), "PNG"),
    "grey16.png": lambda: _encoded(Image.new("I;16", (16, 16), 40000), "PNG"),
    "cmyk.jpg": lambda: _encoded(Image.new("CMYK", (16, 16), (0, 50, 100, 0)), "JPEG"),
    "palette-alpha.png": lambda: _encoded(Image.new("P", (16, 16), 0), "PNG", transparency=0),
    "rgba.png": lambda: _encoded(Image.new("RGBA", (16, 16), (255, 0, 0, 0)), "PNG"),
    "la.png": lambda: _encoded(Image.new("LA", (16, 16), (10, 100)), "PNG"),
    "float.tif": lambda: _float_tiff(0.25),
    "float-negative.tif": lambda: _float_tiff(-3.0),
    "animated.gif": lambda: _encoded(Image.new("P", (16, 16)), "GIF", save_all=True,
                                     append_images=[Image.new("P", (16, 16), 3)]),
    "UPPER.PNG": lambda: PNG,
    "jpeg-named.png": lambda: JPG,
    "photo.webp": lambda: _encoded(Image.new("RGB", (16, 16), (5, 6, 7)), "WEBP"),
    "bitmap.bmp": lambda: _encoded(Image.new("1", (16, 16), 1), "BMP"),
    "bilevel.tif": lambda: _encoded(Image.new("1", (16, 16), 1), "TIFF"),
    "big-but-fine.png": lambda: _png(7000, 7000),
    "space name.png": lambda: PNG,
    "ünïcödé-名前.png": lambda: PNG,
    "-dash.png": lambda: PNG,
}


@pytest.mark.parametrize("name", VALID)
def test_odd_but_valid_images_are_predicted(name, tmp_path):
    (tmp_path / name).write_bytes(VALID[name]())
    code, out, err = cli("predict", tmp_path, *LITE, "--top", 2, "--json")
    assert code == 0 and err == "", err
    assert [image["path"] for image in json.loads(out)["images"]] == [str(tmp_path / name)]


@pytest.mark.parametrize("name", ["new\nline.png", "tab\there.png", "bell\a.png", "cr\rreturn.png",
                                  "esc\x1b[31mred.png"])
def test_control_characters_in_file_names_do_not_break_the_tables(name, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / name).write_bytes(PNG)
    code, out, err = cli("predict", folder, *LITE, "--top", 2)
    assert code == 0 and err == ""
    assert len(out.splitlines()) == 1 + 1 + 2  # header, the image's path, its 2 classes
    assert all(ch.isprintable() for line in out.splitlines() for ch in line)
    code, out, err = cli(*train_args(folder, tmp_path / "a.safetensors"))
    assert code == 0 and err == ""
    table = out.splitlines()[1:3]  # the table's header and its one row
    assert "goldfish: " in out.splitlines()[3] and all(ch.isprintable() for line in table for ch in line)


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_load_image_itself_never_opens_a_special_file(kind, tmp_path):
    from funclora.vision.images import load_image

    keep = _special(kind, tmp_path / "x.png")
    with no_hang(), pytest.raises(ValueError, match=f"x.png: .*{SPECIAL[kind]}"):
        load_image(tmp_path / "x.png")
    if keep:
        keep.close()
