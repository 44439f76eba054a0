"""Draw the illustrated goldfish used by the showcase experiment.

The showcase takes a frozen ImageNet classifier, shows it five *drawn*
goldfish that it gets wrong, and trains only LoRA adapters until it calls
them "goldfish" (ImageNet class 1).  This script draws those five pictures,
each in a different illustration style, into ``data/goldfish/``:

1. flat cartoon with a bold outline, plain pastel background
2. ink line drawing on paper, outline only
3. geometric low-poly goldfish on a sunset gradient
4. soft watercolour red-and-white fish in water with bubbles
5. pixel-art calico fish as a die-cut sticker

It also draws ``data/heldout/``: a goldfish in a sixth style (chalk on a
blackboard) that training never sees, and a non-goldfish (a cartoon bird),
to check that what was learned generalises and is not "everything is a fish".

All drawing is deterministic (fixed seeds, no PNG metadata): running the
script twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as scripts/make_goldfish.py
import drawing as dr  # noqa: E402
from drawing import SS, Placement  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------ the goldfish ---
# One goldfish in a local frame: facing right (+x), y up, nose at x ~ 0.56,
# tail tips at x ~ -1.0.  Every style draws these same parts its own way.

BODY = dr.catmull_rom([
    (0.56, 0.00), (0.46, 0.22), (0.22, 0.37), (-0.08, 0.34), (-0.30, 0.20), (-0.44, 0.08),
    (-0.44, -0.08), (-0.30, -0.21), (-0.04, -0.34), (0.26, -0.32), (0.48, -0.18),
])
# A fan tail: two broad lobes with a notch between them.
TAIL = dr.catmull_rom([
    (-0.36, 0.07), (-0.58, 0.30), (-0.84, 0.50), (-1.00, 0.40), (-0.90, 0.18), (-0.78, 0.00),
    (-0.90, -0.18), (-1.00, -0.40), (-0.84, -0.50), (-0.58, -0.30), (-0.36, -0.07),
])
DORSAL = dr.catmull_rom([(-0.30, 0.18), (-0.22, 0.46), (-0.02, 0.62), (0.10, 0.50), (0.16, 0.30)], closed=False)
# Paired fins swept back, so they read as fins and not as legs.
PELVIC = dr.catmull_rom([(0.08, -0.30), (-0.06, -0.42), (-0.28, -0.50), (-0.14, -0.30)], closed=False)
ANAL = dr.catmull_rom([(-0.20, -0.26), (-0.36, -0.36), (-0.54, -0.40), (-0.40, -0.14)], closed=False)
PECTORAL = dr.catmull_rom([(0.20, -0.10), (0.08, -0.18), (-0.04, -0.30), (0.10, -0.27), (0.21, -0.19)])
GILL = dr.catmull_rom([(0.24, 0.28), (0.15, 0.08), (0.15, -0.10), (0.24, -0.28)], closed=False)
MOUTH = [(0.56, 0.00), (0.50, -0.03)]
EYE, EYE_R = (0.36, 0.08), 0.075
TAIL_RAYS = [((-0.42, 0.0), (-0.86 - 0.1 * math.cos(a), 0.48 * math.sin(a))) for a in (-1.1, -0.55, 0.55, 1.1)]


def scale_arcs(rows: int = 3, cols: int = 4) -> list[list[dr.Point]]:
    """Small 'C' arcs (opening towards the tail) that read as scales."""
    arcs = []
    for i in range(cols):
        x = 0.06 - i * 0.11
        for j in range(rows):
            y = (j - (rows - 1) / 2) * 0.16 + (0.04 if i % 2 else -0.04)
            arcs.append([(x - 0.05 * math.cos(t), y + 0.07 * math.sin(t)) for t in
                         [math.pi / 2 - k * math.pi / 8 for k in range(9)]])
    return arcs


def fins(p: Placement) -> dict[str, list[dr.Point]]:
    """All parts of the fish, placed on the canvas."""
    return {
        "tail": p(TAIL), "dorsal": p(DORSAL), "pelvic": p(PELVIC), "anal": p(ANAL),
        "body": p(BODY), "pectoral": p(PECTORAL), "gill": p(GILL), "mouth": p(MOUTH),
    }


# ------------------------------------------------------------------ styles ---

INK = (52, 28, 20)


def eye(img: Image.Image, p: Placement, ink=INK, white=(255, 255, 255), outline: float = 3) -> None:
    """Cartoon eye: white disc, dark pupil looking forward."""
    dr.dot(img, p.pt(EYE), p.length(EYE_R), white, ink, outline)
    dr.dot(img, p.pt((EYE[0] + 0.015, EYE[1])), p.length(EYE_R * 0.5), ink)


def flat_cartoon(seed: int) -> Image.Image:
    """Flat orange fish, thick dark outline, scale marks; plain pastel backdrop."""
    img = dr.new_canvas((190, 228, 236))
    p = Placement(150, 130, 112, tilt=8)
    f = fins(p)
    orange, fin = (247, 132, 30), (252, 176, 64)
    for part in ("tail", "dorsal", "pelvic", "anal"):
        dr.fill(img, f[part], fin, INK, 5)
    for a, b in TAIL_RAYS:  # rays tell a fan tail from a flat paddle
        dr.line(img, p([a, b]), (226, 120, 30), 2.5)
    dr.fill(img, f["body"], orange, INK, 5)
    for arc in scale_arcs():
        dr.line(img, p(arc), (214, 96, 18), 2.5)
    dr.line(img, f["gill"], INK, 3.5)
    dr.fill(img, f["pectoral"], fin, INK, 3.5)
    eye(img, p)
    dr.line(img, f["mouth"], INK, 3)
    return dr.finish(img)


def line_drawing(seed: int) -> Image.Image:
    """Outline-only pen drawing on cream paper, facing left, nose down."""
    rng = random.Random(seed)
    img = dr.paper(seed)
    ink = (48, 40, 52)
    p = Placement(112, 124, 110, tilt=-12, flip=True)
    f = fins(p)
    for part in ("tail", "dorsal", "pelvic", "anal", "body", "pectoral"):
        pts = f[part]
        dr.sketchy(img, pts + pts[:1] if part in ("tail", "body", "pectoral") else pts, rng, ink, 1.6)
    for a, b in TAIL_RAYS + [((-0.42, 0.0), (-0.80, 0.0))]:
        ray = dr.catmull_rom([a, ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 * 0.9), b], closed=False)  # slightly bowed
        dr.sketchy(img, p(ray), rng, ink, 1.0, 1)
    for x in (-0.16, -0.05, 0.06):  # a few strokes for the dorsal fin's rays
        dr.sketchy(img, p([(x - 0.04, 0.34), (x - 0.02, 0.50)]), rng, ink, 1.0, 1)
    for arc in scale_arcs():
        dr.sketchy(img, p(arc), rng, ink, 1.0, 1)
    dr.sketchy(img, f["gill"], rng, ink, 1.4)
    dr.sketchy(img, f["mouth"], rng, ink, 1.4)
    dr.dot(img, p.pt(EYE), p.length(EYE_R), (246, 240, 226), ink, 1.6)
    dr.dot(img, p.pt((EYE[0] + 0.015, EYE[1])), p.length(EYE_R * 0.45), ink)
    # A couple of bubbles and water ripples to set the scene without colour.
    for c, r in (((0.70, 0.26), 0.05), ((0.80, 0.44), 0.035), ((0.76, 0.60), 0.025)):
        dr.line(img, dr.jitter(p(dr.circle(c, r, 16) + dr.circle(c, r, 16)[:1]), rng, 0.3 * SS), ink, 1.2)
    for y in (228, 238):
        xs = [30 + 10 * k for k in range(20)]
        dr.sketchy(img, [(x * SS, (y + 3 * math.sin(x / 9)) * SS) for x in xs], rng, ink, 1.0, 1)
    return dr.finish(img)


def low_poly(seed: int) -> Image.Image:
    """Faceted golden-yellow fish with straight-edged outline on a dusk gradient."""
    img = dr.vertical_gradient((64, 44, 110), (236, 120, 120))
    back = dr.facets((150, 90, 160), seed + 1, cell=32)  # faint facets in the sky too
    img = Image.blend(img, back, 0.25)
    p = Placement(146, 136, 108, tilt=-6)
    # Straight edges between few vertices: resample every outline coarsely.
    coarse = {k: v[::6] for k, v in fins(p).items()}
    for part, color, s in (("tail", (250, 206, 70), 2), ("dorsal", (250, 206, 70), 3), ("pelvic", (250, 206, 70), 4),
                           ("anal", (250, 206, 70), 5), ("body", (236, 160, 24), 6), ("pectoral", (255, 220, 110), 7)):
        dr.facet_fill(img, coarse[part], color, seed + s, cell=18)
    eye_pts = [p.pt((EYE[0] + EYE_R * math.cos(a), EYE[1] + EYE_R * math.sin(a)))
               for a in [k * math.pi / 3 for k in range(6)]]
    dr.fill(img, eye_pts, (30, 20, 40))
    dr.fill(img, [p.pt((EYE[0] + 0.02 + 0.03 * math.cos(a), EYE[1] + 0.03 + 0.03 * math.sin(a)))
                  for a in [k * 2 * math.pi / 3 for k in range(3)]], (255, 250, 230))
    dr.line(img, coarse["gill"], (190, 110, 20), 2.5)
    return dr.finish(img)


def watercolour(seed: int) -> Image.Image:
    """Soft red-and-white fish in a loose blue water wash with bubbles, facing left, nose up."""
    rng = random.Random(seed)
    img = dr.paper(seed, tint=(250, 248, 242))
    # Loose splash of water behind the fish, then a second, smaller glaze for depth.
    for c, r, color, k in (((128, 132), 112, (160, 205, 232), 1.0), ((150, 160), 70, (140, 190, 225), 0.6)):
        splash = [(x * SS, y * SS) for x, y in dr.blob(c, r, rng, n=14, wobble=0.12)]
        img = dr.wash(img, dr.mask_of([splash]), color, seed + k * 10, k)
    for x0, lean in ((54, -4), (68, 3), (198, 5)):  # water weed: soft green strokes
        stem = dr.catmull_rom([(x0 * SS, 236 * SS), ((x0 + lean) * SS, 200 * SS), ((x0 - lean) * SS, 176 * SS),
                               ((x0 + lean) * SS, 150 * SS)], closed=False)
        weed = Image.new("L", img.size, 0)
        dr.line(weed, stem, 255, 7)
        img = dr.wash(img, weed, (120, 180, 110), seed + x0)
    p = Placement(120, 124, 100, tilt=14, flip=True)
    f = fins(p)
    body = dr.mask_of([f["body"]])
    outside = ImageChops.invert(body)  # fins are glazed only where they show
    fin_red = (238, 110, 96)
    for part in ("tail", "dorsal", "pelvic", "anal"):
        img = dr.wash(img, ImageChops.multiply(dr.mask_of([f[part]]), outside), fin_red, seed + 3, 0.85)
    img = dr.wash(img, body, (255, 255, 255), seed + 4)  # knock back the water: the fish is white
    soft_body = body.filter(ImageFilter.GaussianBlur(dr.px(1)))
    img = Image.composite(Image.new("RGB", img.size, (252, 250, 246)), img, soft_body)
    img = dr.wash(img, body, (226, 224, 232), seed + 4, 0.5)  # faint cool shadow on the white
    # Red 'cap' over the head and along the back, the classic red-and-white pattern.
    reds = dr.mask_of([p(dr.blob((0.34, 0.14), 0.22, rng)), p(dr.blob((0.02, 0.26), 0.18, rng)),
                       p(dr.blob((-0.30, 0.06), 0.12, rng))])
    img = dr.wash(img, ImageChops.multiply(reds, body), (226, 56, 40), seed + 5, 1.1)
    img = dr.wash(img, dr.mask_of([f["pectoral"]]), fin_red, seed + 6, 0.7)
    pencil = (130, 76, 66)
    for part in ("tail", "body", "dorsal", "pelvic", "anal", "pectoral"):
        pts = f[part] + (f[part][:1] if part in ("tail", "body", "pectoral") else [])
        dr.line(img, dr.jitter(pts, rng, 0.4 * SS), pencil, 1.1)
    for a, b in TAIL_RAYS:
        dr.line(img, p([a, b]), (200, 90, 80), 1.0)
    dr.line(img, f["gill"], pencil, 1.2)
    dr.line(img, f["mouth"], pencil, 1.2)
    eye(img, p, ink=(40, 30, 40), outline=1.2)
    dr.bubbles(img, rng, 6, (80, 130, 180), (28, 50, 68, 104))  # rising from the mouth
    return dr.finish(img)


def pixel_art(seed: int) -> Image.Image:
    """Calico fish as chunky pixel art on a white die-cut sticker."""
    rng = random.Random(seed)
    p = Placement(142, 126, 108, tilt=-18)
    f = fins(p)
    # Calico: orange, red and black patches over a pale bluish-white base.
    patches = [((244, 130, 40), c, r)
               for c, r in (((-0.02, 0.22), 0.18), ((-0.30, -0.12), 0.13), ((-0.80, 0.30), 0.13))]
    patches += [((214, 44, 40), c, r) for c, r in (((0.38, 0.24), 0.10), ((0.12, -0.16), 0.08), ((-0.85, -0.30), 0.09))]
    patches += [((30, 30, 36), c, 0.05) for c in ((0.18, 0.28), (-0.16, 0.06), (-0.36, 0.22), (-0.62, 0.16),
                                                  (0.04, -0.04), (-0.66, -0.30), (-0.06, 0.48))]

    def paint(art, small):
        d = ImageDraw.Draw(art)
        for part in ("tail", "dorsal", "pelvic", "anal"):
            d.polygon(small(f[part]), fill=(200, 214, 236))
        d.polygon(small(f["body"]), fill=(238, 238, 244))
        for color, c, r in patches:
            d.polygon(small(p(dr.blob(c, r, rng))), fill=color)
        d.line(small(f["gill"]), fill=(150, 150, 190))
        ex, ey = (round(v) for v in small([p.pt(EYE)])[0])
        d.rectangle([ex - 2, ey - 2, ex + 1, ey + 1], fill=(255, 255, 255))  # white ring, 1 cell
        d.rectangle([ex - 1, ey - 1, ex + 1, ey + 1], fill=(20, 20, 30))
        d.point((ex - 1, ey - 1), fill=(255, 255, 255))  # glint

    parts = [f[k] for k in ("tail", "dorsal", "pelvic", "anal", "body")]
    return dr.finish(dr.pixel_sticker(paint, parts, dr.radial_gradient((255, 236, 150), (250, 190, 90))))


def chalkboard(seed: int) -> Image.Image:
    """Held-out style: chalk sketch of a goldfish in a bowl on a green blackboard."""
    rng = random.Random(seed)
    board = (40, 70, 56)
    img = dr.new_canvas(board)
    smudge = dr.noise(seed, dr.SIZE, 6).resize(img.size, Image.BICUBIC).point(lambda v: max(0, v - 120))
    img.paste((70, 100, 86), (0, 0), smudge)  # old chalk dust rubbed into the board

    def chalk(pts, color, width, passes=3):
        layer = Image.new("RGB", img.size, (0, 0, 0))
        for _ in range(passes):
            dr.line(layer, dr.jitter(pts, rng, 0.8 * SS), color, width)
        # Chalk skips over the board's grain: knock holes in the stroke.
        holes = dr.noise(seed + len(pts), dr.SIZE * 2).resize(img.size, Image.NEAREST)
        holes = holes.point(lambda v: 255 if v > 90 else 0)
        m = ImageChops.multiply(layer.convert("L").point(lambda v: 255 if v > 0 else 0), holes)
        img.paste(layer, (0, 0), m)

    p = Placement(136, 128, 78, tilt=6)
    f = fins(p)
    # The bowl: a circle open at the top, with an elliptical rim and a water line.
    white = (236, 240, 236)
    arc = [(128 + 94 * math.sin(t), 142 - 94 * math.cos(t)) for t in [math.radians(a) for a in range(35, 326, 6)]]
    chalk([(x * SS, y * SS) for x, y in arc], white, 2.0)
    rim = [(128 + 54 * math.cos(t), 65 + 8 * math.sin(t)) for t in [k * math.pi / 16 for k in range(33)]]
    chalk([(x * SS, y * SS) for x, y in rim], white, 2.0)
    chalk([((52 + 4 * k) * SS, (88 + 2.5 * math.sin(k / 2)) * SS) for k in range(39)], (170, 210, 230), 1.4)
    orange = (250, 160, 70)
    for part in ("tail", "dorsal", "pelvic", "anal", "body", "pectoral"):
        pts = f[part]
        chalk(pts + (pts[:1] if part in ("tail", "body", "pectoral") else []), orange, 1.8)
    # Side-of-the-chalk shading: diagonal hatching clipped to the body.
    hatch = Image.new("RGB", img.size, (0, 0, 0))
    for x in range(-200, 300, 7):
        dr.line(hatch, dr.jitter([(x * SS, 260 * SS), ((x + 120) * SS, 0)], rng, 0.5 * SS), (230, 140, 60), 1.2)
    img.paste(hatch, (0, 0), ImageChops.multiply(hatch.convert("L").point(lambda v: 255 if v else 0),
                                                 dr.mask_of([f["body"]])))
    for a, b in TAIL_RAYS:
        chalk(p([a, b]), orange, 1.0, 1)
    chalk(f["gill"], orange, 1.4)
    dr.dot(img, p.pt(EYE), p.length(EYE_R), (236, 240, 236))
    dr.dot(img, p.pt((EYE[0] + 0.015, EYE[1])), p.length(EYE_R * 0.5), board)
    for c in ((196, 112), (204, 98), (200, 80)):
        ring = dr.circle((c[0] * SS, c[1] * SS), 5 * SS, 12)
        chalk(ring + ring[:1], white, 1.2, 1)
    # Wooden frame, so it reads as a board rather than a green field.
    d = ImageDraw.Draw(img)
    w = dr.px(9)
    d.rectangle([0, 0, img.width - 1, img.height - 1], outline=(120, 80, 44), width=w)
    d.rectangle([w, w, img.width - 1 - w, img.height - 1 - w], outline=(90, 58, 30), width=dr.px(2))
    return dr.finish(img)


def cartoon_bird(seed: int) -> Image.Image:
    """Held-out non-goldfish: a flat cartoon robin on a branch, same outline style as #1."""
    img = dr.new_canvas((200, 226, 240))
    ink = INK
    dr.line(img, [(10 * SS, 196 * SS), (246 * SS, 176 * SS)], (110, 70, 40), 10)  # branch
    for x, y, a in ((60, 192, 1), (200, 180, -1)):
        dr.fill(img, dr.catmull_rom([(x * SS, y * SS), ((x + 14 * a) * SS, (y - 20) * SS),
                                      ((x + 30 * a) * SS, (y - 16) * SS)]), (110, 180, 80), ink, 2.5)
    dr.fill(img, dr.catmull_rom([(70 * SS, 150 * SS), (40 * SS, 130 * SS), (30 * SS, 110 * SS), (58 * SS, 124 * SS)]),
            (120, 90, 70), ink, 4)  # tail feathers
    body = dr.catmull_rom([(x * SS, y * SS) for x, y in
                           [(70, 140), (90, 100), (130, 70), (170, 78), (186, 110), (170, 160), (120, 180), (84, 166)]])
    dr.fill(img, body, (136, 100, 78), ink, 5)
    breast = [(150, 100), (184, 108), (176, 150), (140, 172), (126, 140)]
    dr.fill(img, dr.catmull_rom([(x * SS, y * SS) for x, y in breast]), (232, 96, 50))  # the robin's red breast
    dr.line(img, body + body[:1], ink, 5)
    dr.fill(img, dr.catmull_rom([(x * SS, y * SS) for x, y in [(90, 120), (130, 110), (124, 150), (96, 150)]]),
            (104, 74, 56), ink, 3.5)  # wing
    dr.fill(img, [(182 * SS, 92 * SS), (210 * SS, 100 * SS), (182 * SS, 106 * SS)], (250, 190, 60), ink, 3.5)  # beak
    dr.dot(img, (164 * SS, 92 * SS), 8 * SS, (255, 255, 255), ink, 2.5)
    dr.dot(img, (166 * SS, 92 * SS), 4 * SS, ink)
    for x in (116, 136):
        dr.line(img, [(x * SS, 176 * SS), (x * SS, 188 * SS)], (200, 130, 60), 3.5)  # legs
    return dr.finish(img)


# name -> (drawing function, seed)
TRAIN = {
    "goldfish_1_flat": (flat_cartoon, 1),
    "goldfish_2_lineart": (line_drawing, 2),
    "goldfish_3_lowpoly": (low_poly, 3),
    "goldfish_4_watercolour": (watercolour, 4),
    "goldfish_5_pixel": (pixel_art, 5),
}
HELDOUT = {
    "goldfish_heldout": (chalkboard, 6),
    "not_goldfish_heldout": (cartoon_bird, 7),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "data", help="data folder (default: %(default)s)")
    args = ap.parse_args(argv)
    for folder, table in (("goldfish", TRAIN), ("heldout", HELDOUT)):
        for name, (fn, seed) in table.items():
            dr.save_png(fn(seed), args.out / folder / f"{name}.png")
            print(args.out / folder / f"{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
