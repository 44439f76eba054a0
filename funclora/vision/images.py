"""Finding and reading image files for the application layer.

Every reader here turns a bad file into a one-line ``ValueError`` that names
the file, so a typo or a broken download stops the run where it enters.

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from funclora.vision.images import list_images, load_batch
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(folder / "b.png")
    >>> Image.new("L", (8, 8), 128).save(folder / "a.jpg")
    >>> [p.name for p in list_images([folder])]
    ['a.jpg', 'b.png']
    >>> batch = load_batch(list_images([folder]), lambda im: torch.tensor(list(im.getpixel((0, 0)))))
    >>> batch.tolist()  # grey stays grey, fully transparent red becomes white
    [[128, 128, 128], [255, 255, 255]]
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..messages import one_line as _one_line

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "list_images", "load_image", "load_batch"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_WHITE = (255, 255, 255, 255)

MAX_PIXELS = 50_000_000
"""Images above this are refused before decoding: a 48 MP phone photo passes; a 12000x12000 image
(144 MP) took 20 s and 2.4 GB to read, only to be shrunk to 224x224."""


def list_images(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Expand folders into their image files; keep files as given, in order.

    A folder contributes its files whose suffix is in ``IMAGE_SUFFIXES``
    (case-insensitive), sorted by name, not recursing and skipping hidden
    files such as macOS ``._photo.jpg`` side files. A single path is accepted
    as well as a list of them.

    >>> list_images([])
    []

    Raises ``ValueError`` for a path that does not exist, or a folder with no
    images in it.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]  # a bare string would otherwise be iterated letter by letter
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        kind = _kind(path)
        if kind == "folder":
            images = sorted((child for child in path.iterdir() if _is_image_file(child)),
                            key=lambda child: child.name)
            if not images:
                raise ValueError(f"{path}: no images (expected files ending in {'/'.join(IMAGE_SUFFIXES)})")
            found.extend(images)
        elif kind == "file":
            found.append(path)
        else:
            raise ValueError(f"{path}: {kind}")
    return found


def _kind(path: Path) -> str:
    """'file', 'folder', or why `path` is neither (missing, a link loop, a FIFO...), in words."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return (f"broken symbolic link (to {os.readlink(path)})" if os.path.islink(path)
                else "no such file or directory")
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself)"
        return f"cannot read it ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    what = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device",
            stat.S_ISBLK: "a device"}
    return f"not a regular file but {next((w for f, w in what.items() if f(mode)), 'something else')}"


def _is_image_file(path: Path) -> bool:
    """An image-named entry of a folder; one that cannot be read as a file (a link loop, a broken
    link, a FIFO) is an error naming it rather than silently skipped."""
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
        return False
    kind = _kind(path)
    if kind in ("file", "folder"):
        return kind == "file"
    raise ValueError(f"{path}: {kind}")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file fully and return it as an 8-bit RGB image.

    Transparency is composited onto white (a transparent PNG icon looks like it
    does in a browser, not like a black box); 16-bit and float greyscale are
    scaled by their range rather than clipped; EXIF orientation is applied so
    phone photos come out upright; multi-frame files give their first frame.

    >>> import tempfile
    >>> from pathlib import Path
    >>> file = Path(tempfile.mkdtemp()) / "deep.png"
    >>> Image.new("I;16", (2, 2), 65535).save(file)
    >>> image = load_image(file)
    >>> image.mode, image.getpixel((0, 0))
    ('RGB', (255, 255, 255))

    Raises ``ValueError`` naming the file when it is missing, not an image,
    truncated, or otherwise unreadable.
    """
    path = Path(path)
    kind = _kind(path)
    if kind != "file":  # opening a FIFO would wait forever for a writer
        raise ValueError(f"{path}: {'not a file but a folder' if kind == 'folder' else kind}")
    try:
        with warnings.catch_warnings():  # PIL warns above 89 MP; MAX_PIXELS below refuses those
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path}: too large to read safely ({_one_line(error)}); resize it first") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a readable image (unrecognized format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{path}: not a readable image ({_one_line(error)})") from error
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{path}: {width}x{height} is {width * height / 1e6:.0f} megapixels, above "
                             f"funclora's limit of {MAX_PIXELS / 1e6:.0f} (it would take minutes and "
                             f"gigabytes to read); resize it first")
        try:
            # Decode now, so a truncated file fails here, naming itself, and not
            # somewhere later in a batch.
            image.load()
            image = ImageOps.exif_transpose(image)
        except Exception as error:  # decoders raise OSError, SyntaxError, struct.error, ...
            if "truncated" in str(error).lower():
                raise ValueError(f"{path}: truncated image file") from error
            raise ValueError(f"{path}: not a readable image ({_one_line(error)})") from error
        return _to_rgb(image, path)


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Convert any Pillow mode to RGB, returning a new image."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info):
        return _onto_white(image.convert("RGBA"))
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image)
        if mode == "F" and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise ValueError(f"{path}: {bad} pixels are not finite numbers (nan or inf in a float image)")
        return Image.fromarray(_scale_to_uint8(values, mode)).convert("RGB")
    try:
        return image.convert("RGB")  # "1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"
    except ValueError as error:
        raise ValueError(f"{path}: unsupported image mode {mode} ({_one_line(error)})") from error


def _onto_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map deep greyscale pixels onto 0..255 by the range they are stored in."""
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        # 16-bit data: Pillow also reads 16-bit PNG/TIFF as mode "I".
        scaled = values / 257.0
    elif mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif mode == "F" and low >= 0 and high <= 255:
        scaled = values
    else:
        # No known range (negative or huge values): stretch what is there.
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def load_batch(
    paths: Sequence[str | os.PathLike],
    preprocess: Callable[[Image.Image], torch.Tensor],
) -> torch.Tensor:
    """Load image files as RGB, preprocess each, and stack them into ``(N, C, H, W)``.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from torchvision.transforms.functional import to_tensor
    >>> file = Path(tempfile.mkdtemp()) / "x.bmp"
    >>> Image.new("RGB", (5, 4)).save(file)
    >>> tuple(load_batch([file, file], to_tensor).shape)
    (2, 3, 4, 5)

    Raises ``ValueError`` for an empty list, an unreadable file, or a file
    whose preprocessed shape differs from the first one's.
    """
    if not paths:
        raise ValueError("load_batch: paths is empty (expected at least one image file)")
    tensors: list[torch.Tensor] = []
    for path in paths:
        tensor = preprocess(load_image(path))
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: preprocess returned {type(tensor).__name__} (expected a torch.Tensor)")
        if tensors and tensor.shape != tensors[0].shape:
            raise ValueError(
                f"{path}: preprocess gave shape {tuple(tensor.shape)} but {paths[0]} gave "
                f"{tuple(tensors[0].shape)} (preprocess must resize to one fixed size)"
            )
        tensors.append(tensor)
    return torch.stack(tensors)
