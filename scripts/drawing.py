"""Shared drawing helpers for the showcase illustrations.

Everything here is plain PIL plus ``random.Random(seed)``, so the pictures are
fully deterministic: same code, same Pillow, same bytes.  Drawings are made on
a canvas ``SS`` times larger than the output and shrunk at the end, which is a
cheap way to get smooth, anti-aliased edges from PIL's aliased primitives.

Shapes are described in a small local frame (x to the right, y up, about one
unit across) and placed on the canvas with :class:`Placement`, so one shape
definition serves every pose: facing left or right, tilted, big or small.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

SIZE = 256  # output side in pixels (the classifier resizes to 224 anyway)
SS = 4  # supersampling factor used while drawing

Point = tuple[float, float]
RGB = tuple[int, int, int]


# ----------------------------------------------------------------- canvas ---


def new_canvas(color: RGB = (255, 255, 255)) -> Image.Image:
    """A blank RGB canvas at supersampled resolution."""
    return Image.new("RGB", (SIZE * SS, SIZE * SS), color)


def finish(img: Image.Image) -> Image.Image:
    """Shrink a supersampled canvas to the output size (this anti-aliases)."""
    return img.resize((SIZE, SIZE), Image.LANCZOS)


def save_png(img: Image.Image, path: Path) -> None:
    """Save as RGB PNG with no metadata chunks, so reruns are byte-identical.

    Pillow writes no tIME/text chunks unless asked; fixing the compression
    level makes the zlib stream independent of Pillow's defaults.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(path, format="PNG", optimize=False, compress_level=9)


def px(v: float) -> int:
    """A length given in output pixels, converted to canvas pixels."""
    return max(1, round(v * SS))


# --------------------------------------------------------------- geometry ---


@dataclass(frozen=True)
class Placement:
    """Maps the local shape frame (y up) onto the canvas (y down).

    ``cx, cy`` and ``scale`` are in output pixels; ``tilt`` is in degrees
    (counter-clockwise); ``flip`` mirrors the shape so it faces left.
    """

    cx: float
    cy: float
    scale: float
    tilt: float = 0.0
    flip: bool = False

    def __call__(self, pts: list[Point]) -> list[Point]:
        c, s = math.cos(math.radians(self.tilt)), math.sin(math.radians(self.tilt))
        out = []
        for x, y in pts:
            if self.flip:
                x = -x
            rx, ry = x * c - y * s, x * s + y * c
            out.append(((self.cx + self.scale * rx) * SS, (self.cy - self.scale * ry) * SS))
        return out

    def pt(self, p: Point) -> Point:
        return self([p])[0]

    def length(self, v: float) -> float:
        """A local length in canvas pixels."""
        return v * self.scale * SS


def catmull_rom(pts: list[Point], closed: bool = True, steps: int = 12) -> list[Point]:
    """A smooth curve through the control points (used for every organic outline)."""
    n = len(pts)
    out: list[Point] = []
    segs = n if closed else n - 1
    for i in range(segs):
        p0 = pts[(i - 1) % n] if closed or i > 0 else pts[0]
        p1, p2 = pts[i], pts[(i + 1) % n]
        p3 = pts[(i + 2) % n] if closed or i + 2 < n else pts[-1]
        for k in range(steps):
            t = k / steps
            out.append(tuple(
                0.5 * (2 * p1[j] + (p2[j] - p0[j]) * t
                       + (2 * p0[j] - 5 * p1[j] + 4 * p2[j] - p3[j]) * t ** 2
                       + (3 * p1[j] - p0[j] - 3 * p2[j] + p3[j]) * t ** 3)
                for j in range(2)))
    if not closed:
        out.append(pts[-1])
    return out


def circle(c: Point, r: float, n: int = 32) -> list[Point]:
    return [(c[0] + r * math.cos(2 * math.pi * k / n), c[1] + r * math.sin(2 * math.pi * k / n)) for k in range(n)]


def jitter(pts: list[Point], rng: random.Random, amount: float) -> list[Point]:
    """Wobble points a little: makes ruled lines look hand drawn."""
    return [(x + rng.uniform(-amount, amount), y + rng.uniform(-amount, amount)) for x, y in pts]


# ---------------------------------------------------------------- drawing ---


def fill(img: Image.Image, pts: list[Point], color: RGB, outline: RGB | None = None, width: float = 0) -> None:
    """Filled polygon with an optional outline of ``width`` output pixels."""
    d = ImageDraw.Draw(img)
    d.polygon(pts, fill=color)
    if outline is not None and width > 0:
        line(img, pts + pts[:1], outline, width)


def line(img: Image.Image, pts: list[Point], color: RGB, width: float) -> None:
    """Polyline with round joints and caps (PIL's own joints leave notches)."""
    d = ImageDraw.Draw(img)
    w = px(width)
    d.line(pts, fill=color, width=w, joint="curve")
    r = w / 2
    for x, y in (pts[0], pts[-1]):
        d.ellipse([x - r, y - r, x + r, y + r], fill=color)


def dot(img: Image.Image, c: Point, r: float, color: RGB, outline: RGB | None = None, width: float = 0) -> None:
    """A disc of radius ``r`` canvas pixels."""
    d = ImageDraw.Draw(img)
    d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=color, outline=outline, width=px(width) if outline else 0)


def mask_of(pts_list: list[list[Point]], size: tuple[int, int] | None = None) -> Image.Image:
    """An 'L' mask that is white inside any of the polygons."""
    m = Image.new("L", size or (SIZE * SS, SIZE * SS), 0)
    d = ImageDraw.Draw(m)
    for pts in pts_list:
        d.polygon(pts, fill=255)
    return m


# ------------------------------------------------------------ backgrounds ---


def vertical_gradient(top: RGB, bottom: RGB) -> Image.Image:
    """Canvas filled with a top-to-bottom colour gradient."""
    h = SIZE * SS
    col = Image.new("RGB", (1, h))
    for y in range(h):
        t = y / (h - 1)
        col.putpixel((0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    return col.resize((h, h), Image.NEAREST)


def radial_gradient(inner: RGB, outer: RGB) -> Image.Image:
    """Canvas with a soft centre glow (a classic sticker/poster backdrop)."""
    g = Image.radial_gradient("L").resize((SIZE * SS, SIZE * SS), Image.BILINEAR)
    return Image.composite(Image.new("RGB", g.size, outer), Image.new("RGB", g.size, inner), g)


def noise(seed: int, size: int = SIZE, sigma: float = 0.0) -> Image.Image:
    """Deterministic grey noise (``random.Random``, not PIL's effect_noise)."""
    rng = random.Random(seed)
    n = Image.frombytes("L", (size, size), rng.randbytes(size * size))
    if sigma:
        n = n.filter(ImageFilter.GaussianBlur(sigma))
    return n


def paper(seed: int, tint: RGB = (246, 240, 226)) -> Image.Image:
    """Off-white paper with a faint fibrous grain and a darker vignette."""
    grain = noise(seed, SIZE, 0.6).resize((SIZE * SS, SIZE * SS), Image.BICUBIC)
    base = Image.new("RGB", grain.size, tint)
    dark = Image.new("RGB", grain.size, tuple(max(0, c - 28) for c in tint))
    # Squash the noise into a narrow band so the grain stays subtle.
    img = Image.composite(dark, base, grain.point(lambda v: max(0, v - 110) // 3))
    vign = Image.radial_gradient("L").resize(grain.size, Image.BILINEAR).point(lambda v: max(0, v - 150))
    return Image.composite(Image.new("RGB", grain.size, tuple(max(0, c - 40) for c in tint)), img, vign)


def bubbles(img: Image.Image, rng: random.Random, n: int, color: RGB, area: tuple[float, float, float, float]) -> None:
    """Scatter hollow bubbles with a highlight inside ``area`` (output pixels)."""
    x0, y0, x1, y1 = area
    for _ in range(n):
        r = rng.uniform(3, 9) * SS
        c = (rng.uniform(x0, x1) * SS, rng.uniform(y0, y1) * SS)
        ImageDraw.Draw(img).ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], outline=color, width=px(1.5))
        dot(img, (c[0] - r * 0.35, c[1] - r * 0.35), r * 0.22, color)


def soft_shadow(img: Image.Image, mask: Image.Image, offset: tuple[float, float], blur: float, strength: int) -> None:
    """Darken ``img`` under a blurred, shifted copy of ``mask``."""
    sh = ImageChops.offset(mask, px(offset[0]), px(offset[1])).filter(ImageFilter.GaussianBlur(px(blur)))
    sh = sh.point(lambda v: v * strength // 255)
    img.paste(Image.new("RGB", img.size, (0, 0, 0)), (0, 0), sh)


# ------------------------------------------------------------------ styles ---
# Building blocks of the illustration styles, shared by goldfish and keep set.


def sketchy(img: Image.Image, pts: list[Point], rng: random.Random, color: RGB, width: float, passes: int = 2) -> None:
    """Ink a path twice with a little wobble, like a quick pen drawing."""
    for _ in range(passes):
        line(img, jitter(pts, rng, 0.6 * SS), color, width)


def facets(base: RGB, seed: int, cell: float = 20) -> Image.Image:
    """A canvas of jittered triangles, lit from the top-left: the low-poly look."""
    rng = random.Random(seed)
    img = new_canvas()
    d = ImageDraw.Draw(img)
    n = int(SIZE / cell) + 2
    grid = [[((i + rng.uniform(-0.3, 0.3)) * cell * SS, (j + rng.uniform(-0.3, 0.3)) * cell * SS)
             for j in range(-1, n)] for i in range(-1, n)]
    for i in range(n):
        for j in range(n):
            a, b, c, e = grid[i][j], grid[i + 1][j], grid[i][j + 1], grid[i + 1][j + 1]
            for tri in ((a, b, e), (a, e, c)):
                cx = sum(t[0] for t in tri) / 3 / (SIZE * SS)
                cy = sum(t[1] for t in tri) / 3 / (SIZE * SS)
                light = 1.22 - 0.55 * (0.35 * cx + 0.65 * cy) + rng.uniform(-0.09, 0.09)
                d.polygon(tri, fill=tuple(min(255, round(v * light)) for v in base))
    return img


def facet_fill(img: Image.Image, pts: list[Point], base: RGB, seed: int, cell: float = 20) -> None:
    """Fill a polygon with low-poly facets."""
    img.paste(facets(base, seed, cell), (0, 0), mask_of([pts]))


def wash(img: Image.Image, mask: Image.Image, color: RGB, seed: int, strength: float = 1.0) -> Image.Image:
    """Watercolour glaze: soft edges, pigment pooling at the rim, paper granulation."""
    soft = mask.filter(ImageFilter.GaussianBlur(px(1.5)))
    rim = Image.eval(ImageChops.subtract(mask, mask.filter(ImageFilter.GaussianBlur(px(4)))), lambda v: v * 2)
    grain = noise(seed, SIZE, 1.2).resize(mask.size, Image.BICUBIC)
    alpha = ImageChops.add(soft.point(lambda v: round(v * 0.7 * strength)),
                           rim.point(lambda v: round(v * 0.3 * strength)))
    alpha = ImageChops.multiply(alpha, grain.point(lambda v: 150 + v * 105 // 255))
    layer = Image.composite(Image.new("RGB", img.size, color), Image.new("RGB", img.size, (255, 255, 255)), alpha)
    return ImageChops.multiply(img, layer)  # glazes darken what is under them, like real paint


def blob(c: Point, r: float, rng: random.Random, n: int = 8, wobble: float = 0.3) -> list[Point]:
    """An irregular round patch: colour blotches (few points) or loose washes (many)."""
    return catmull_rom([(c[0] + r * rng.uniform(1 - wobble, 1 + wobble) * math.cos(a),
                         c[1] + r * rng.uniform(1 - wobble, 1 + wobble) * math.sin(a))
                        for a in [k * 2 * math.pi / n for k in range(n)]])


def pixel_sticker(paint, silhouette: list[list[Point]], background: Image.Image, grid: int = 64) -> Image.Image:
    """Pixel art on a die-cut sticker: ``paint(art, small)`` draws on a tiny canvas.

    ``small`` maps canvas points to the ``grid``-sized art; ``silhouette``
    (canvas polygons) clips the art and gets a dark 1-cell pixel outline, a
    white 3-cell sticker border and a soft drop shadow on ``background``.
    """
    k = grid / (SIZE * SS)

    def small(pts: list[Point]) -> list[Point]:
        return [(x * k, y * k) for x, y in pts]

    sil = Image.new("L", (grid, grid), 0)
    for pts in silhouette:
        ImageDraw.Draw(sil).polygon(small(pts), fill=255)
    art = Image.new("RGB", (grid, grid), (255, 255, 255))
    paint(art, small)
    edge = ImageChops.subtract(sil, sil.filter(ImageFilter.MinFilter(3)))  # cells touching the outside
    art.paste((40, 30, 60), (0, 0), edge)
    border = sil.filter(ImageFilter.MaxFilter(7))

    def big(im: Image.Image) -> Image.Image:  # NEAREST keeps the cells crisp
        return im.resize((SIZE * SS, SIZE * SS), Image.NEAREST)

    img = background.copy()
    soft_shadow(img, big(border), (3, 4), 3, 90)
    img.paste((255, 255, 255), (0, 0), big(border))
    img.paste(big(art), (0, 0), big(sil))
    return img


# ---------------------------------------------------------- any subject ---
# A subject is plain data in output pixels (256 x 256, y down): filled shapes drawn in order,
# open strokes, and dots. One renderer per goldfish style draws any subject in that style, so
# held-out pictures and keep pictures come in exactly the styles the goldfish do.


@dataclass(frozen=True)
class Subject:
    shapes: tuple  # ((points, RGB), ...): closed outlines, filled back to front
    strokes: tuple = ()  # ((points, RGB, width), ...): open lines (whiskers, strings, handles)
    dots: tuple = ()  # ((centre, radius, RGB), ...): eyes, spots

    def canvas(self, pts: list[Point]) -> list[Point]:
        return [(x * SS, y * SS) for x, y in pts]


INK = (52, 28, 20)
STYLES = ("flat", "lineart", "lowpoly", "watercolour", "pixel")


def darker(color: RGB, k: float = 0.7) -> RGB:
    return tuple(round(c * k) for c in color)


def render(style: str, subject: Subject, seed: int, background: RGB | None = None) -> Image.Image:
    """``subject`` drawn in one of :data:`STYLES` (deterministic in ``seed``)."""
    return {"flat": render_flat, "lineart": render_lineart, "lowpoly": render_lowpoly,
            "watercolour": render_watercolour, "pixel": render_pixel}[style](subject, seed, background)


def render_flat(subject: Subject, seed: int, background: RGB | None = None) -> Image.Image:
    """Flat colours, a bold dark outline, a plain pastel backdrop (like goldfish #1)."""
    rng = random.Random(seed)
    img = new_canvas(background or rng.choice([(190, 228, 236), (252, 224, 226), (226, 240, 204), (240, 232, 250)]))
    for pts, color in subject.shapes:
        fill(img, subject.canvas(pts), color, INK, 4.5)
    for pts, color, width in subject.strokes:
        line(img, subject.canvas(pts), INK, width + 1.5)
        line(img, subject.canvas(pts), color, width)
    for c, r, color in subject.dots:
        dot(img, (c[0] * SS, c[1] * SS), r * SS, color, INK, 2.0 if r > 3 else 0)
    return finish(img)


def render_lineart(subject: Subject, seed: int, background: RGB | None = None) -> Image.Image:
    """Outlines only, pen on cream paper, drawn twice with a wobble (like goldfish #2)."""
    rng = random.Random(seed)
    img = paper(seed)
    ink = (48, 40, 52)
    for pts, _ in subject.shapes:
        canvas = subject.canvas(pts)
        sketchy(img, canvas + canvas[:1], rng, ink, 1.6)
    for pts, _, width in subject.strokes:
        sketchy(img, subject.canvas(pts), rng, ink, min(1.6, width), 1)
    for c, r, _ in subject.dots:
        dot(img, (c[0] * SS, c[1] * SS), r * SS, ink if r <= 3 else (246, 240, 226), ink, 1.4)
    for y in (232, 242):  # the pen's ground line, as under the line-art goldfish
        xs = [30 + 10 * k for k in range(20)]
        sketchy(img, [(x * SS, (y + 3 * math.sin(x / 9)) * SS) for x in xs], rng, ink, 1.0, 1)
    return finish(img)


def render_lowpoly(subject: Subject, seed: int, background: RGB | None = None) -> Image.Image:
    """Faceted shapes with straight edges on a dusk gradient (like goldfish #3)."""
    rng = random.Random(seed)
    top, bottom = rng.choice([((64, 44, 110), (236, 120, 120)), ((60, 150, 150), (20, 80, 96)),
                              ((150, 200, 240), (236, 240, 250))])
    img = Image.blend(vertical_gradient(top, bottom), facets(darker(bottom, 0.8), seed + 1, cell=32), 0.25)
    for k, (pts, color) in enumerate(subject.shapes):
        coarse = subject.canvas(pts)[::6] if len(pts) > 12 else subject.canvas(pts)
        facet_fill(img, coarse, color, seed + 2 + k, cell=18)
    for pts, color, width in subject.strokes:
        line(img, subject.canvas(pts)[::4] + subject.canvas(pts)[-1:], darker(color), width)
    for c, r, color in subject.dots:
        fill(img, [((c[0] + r * math.cos(a)) * SS, (c[1] + r * math.sin(a)) * SS)
                   for a in [k * math.pi / 3 for k in range(6)]], color)
    return finish(img)


def render_watercolour(subject: Subject, seed: int, background: RGB | None = None) -> Image.Image:
    """Soft glazes with pigment at the rims and a pencil outline on white paper (like goldfish #4)."""
    rng = random.Random(seed)
    img = paper(seed, tint=(250, 248, 242))
    splash = [(x * SS, y * SS) for x, y in blob((128, 132), 108, rng, n=14, wobble=0.12)]
    img = wash(img, mask_of([splash]), background or rng.choice([(160, 205, 232), (236, 214, 190), (200, 230, 200)]),
               seed + 1, 0.7)
    for k, (pts, color) in enumerate(subject.shapes):
        img = wash(img, mask_of([subject.canvas(pts)]), color, seed + 2 + k)
    pencil = (110, 80, 80)
    for pts, _ in subject.shapes:
        canvas = subject.canvas(pts)
        line(img, jitter(canvas + canvas[:1], rng, 0.4 * SS), pencil, 1.1)
    for pts, color, width in subject.strokes:
        line(img, subject.canvas(pts), darker(color), min(width, 2.5))
    for c, r, color in subject.dots:
        dot(img, (c[0] * SS, c[1] * SS), r * SS, color)
    return finish(img)


def render_pixel(subject: Subject, seed: int, background: RGB | None = None) -> Image.Image:
    """Chunky pixel art on a white die-cut sticker over a soft glow (like goldfish #5)."""
    rng = random.Random(seed)

    def paint(art, small):
        d = ImageDraw.Draw(art)
        for pts, color in subject.shapes:
            d.polygon(small(subject.canvas(pts)), fill=color)
        for pts, color, width in subject.strokes:
            d.line(small(subject.canvas(pts)), fill=color, width=max(1, round(width / 4)))
        for c, r, color in subject.dots:
            (x, y), = small([(c[0] * SS, c[1] * SS)])
            k = max(0, round(r / 4) - 1)
            d.rectangle([round(x) - k - 1, round(y) - k - 1, round(x) + k, round(y) + k], fill=color)

    silhouette = [subject.canvas(pts) for pts, _ in subject.shapes]
    inner, outer = rng.choice([((255, 236, 150), (250, 190, 90)), ((210, 245, 220), (130, 200, 170)),
                               ((220, 230, 255), (150, 170, 230))])
    return finish(pixel_sticker(paint, silhouette, radial_gradient(inner, outer)))
