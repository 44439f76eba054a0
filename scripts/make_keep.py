"""Draw the "keep set" for the showcase experiment: illustrated non-goldfish.

Training LoRA adapters on five drawn goldfish alone could teach the model a
shortcut: "anything drawn is a goldfish".  The keep set guards against it:
during training a KL penalty holds the model's predictions on these pictures
at what the frozen model said.  So they share the goldfish pictures' styles
(flat cartoon, pen on paper, low-poly, watercolour, pixel sticker) but show
other things, including other fish, into ``funclora/vision/keep/`` (package data: the default keep set):

1. blue tang, flat cartoon      5. house, pixel-art sticker
2. shark, pen on paper          6. car, flat cartoon
3. sailboat, low-poly           7. butterfly, watercolour
4. cat, watercolour             8. apple, low-poly

All drawing is deterministic (fixed seeds, no PNG metadata): running the
script twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as scripts/make_keep.py
import drawing as dr  # noqa: E402
import subjects as sj  # noqa: E402
from drawing import SS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
INK = (52, 28, 20)


# Shapes here are laid out directly in output pixels (256 x 256, y down).
def S(pts: list[dr.Point]) -> list[dr.Point]:
    """Output-pixel points to canvas points."""
    return [(x * SS, y * SS) for x, y in pts]


def smooth(pts: list[dr.Point], closed: bool = True) -> list[dr.Point]:
    """A smooth canvas outline through output-pixel control points."""
    return dr.catmull_rom(S(pts), closed=closed)


def closed(pts: list[dr.Point]) -> list[dr.Point]:
    return pts + pts[:1]


def blue_tang(seed: int) -> Image.Image:
    """Flat cartoon blue tang (royal blue, black 'palette' mark, yellow tail) facing left."""
    rng = random.Random(seed)
    img = dr.new_canvas((252, 224, 226))
    dr.bubbles(img, rng, 5, (255, 255, 255), (14, 20, 60, 90))
    navy, blue, yellow = (24, 40, 120), (40, 96, 210), (252, 212, 40)
    dr.fill(img, smooth([(78, 96), (110, 62), (160, 60), (204, 92), (206, 112), (120, 100)]), navy, INK, 4)  # dorsal
    dr.fill(img, smooth([(96, 160), (140, 196), (194, 178), (208, 142), (160, 160)]), navy, INK, 4)  # anal fin
    dr.fill(img, [(S([p])[0]) for p in ((204, 116), (242, 82), (232, 128), (242, 174), (204, 140))], yellow, INK, 4)
    body = smooth([(44, 128), (66, 100), (110, 80), (160, 80), (200, 104), (212, 128), (200, 148), (160, 170),
                   (110, 170), (66, 156)])
    dr.fill(img, body, blue, INK, 4.5)
    # The black band that loops back along the body is what marks a blue tang.
    dr.fill(img, smooth([(74, 108), (120, 90), (176, 94), (206, 118), (176, 116), (150, 108), (160, 136),
                         (134, 146), (126, 114), (90, 118)]), (20, 20, 34))
    dr.fill(img, [S([p])[0] for p in ((198, 124), (212, 120), (214, 136), (200, 134))], yellow)  # tail spine
    dr.line(img, closed(body), INK, 4.5)
    dr.fill(img, smooth([(100, 134), (128, 140), (140, 156), (112, 150)]), yellow, INK, 3)  # pectoral fin
    dr.dot(img, (70 * SS, 118 * SS), 8 * SS, (255, 255, 255), INK, 2.5)
    dr.dot(img, (68 * SS, 118 * SS), 4 * SS, INK)
    dr.line(img, S([(46, 130), (54, 132)]), INK, 2.5)
    return dr.finish(img)


def shark(seed: int) -> Image.Image:
    """Pen-on-paper shark facing right: torpedo body, tall dorsal fin, crescent tail, gill slits."""
    rng = random.Random(seed)
    img = dr.paper(seed)
    ink = (48, 40, 52)
    body = smooth([(234, 124), (210, 104), (160, 92), (104, 96), (62, 110), (38, 122), (62, 136), (110, 150),
                   (170, 150), (214, 140)])
    parts = [
        closed(body),
        smooth([(122, 96), (136, 50), (142, 52), (164, 93)], closed=False),  # dorsal fin
        smooth([(44, 120), (26, 92), (12, 66), (34, 104), (34, 124), (22, 150), (12, 170), (40, 140), (50, 128)],
               closed=False),  # crescent tail
        smooth([(172, 146), (152, 178), (144, 182), (150, 160), (156, 148)], closed=False),  # pectoral fin
        smooth([(78, 140), (70, 156), (88, 144)], closed=False),
        smooth([(234, 126), (214, 134), (196, 134)], closed=False),  # mouth
    ]
    for pts in parts:
        dr.sketchy(img, pts, rng, ink, 1.6)
    for k in range(4):  # gill slits
        x = 186 - 7 * k
        dr.sketchy(img, smooth([(x, 110), (x - 3, 120), (x, 132)], closed=False), rng, ink, 1.2, 1)
    belly = smooth([(200, 128), (150, 136), (90, 132), (56, 124)], closed=False)
    dr.sketchy(img, belly, rng, ink, 1.0, 1)
    dr.dot(img, (210 * SS, 112 * SS), 3 * SS, ink)
    for y in (214, 226):
        xs = [20 + 10 * k for k in range(22)]
        dr.sketchy(img, [(x * SS, (y + 3 * math.sin(x / 9)) * SS) for x in xs], rng, ink, 1.0, 1)
    return dr.finish(img)


def sailboat(seed: int) -> Image.Image:
    """Low-poly sailboat on a faceted sea under a pale sky, with a low-poly sun."""
    img = Image.blend(dr.vertical_gradient((150, 200, 240), (236, 240, 250)), dr.facets((200, 220, 245), seed, 34), 0.3)
    sun = [(200 + 22 * math.cos(a), 56 + 22 * math.sin(a)) for a in [k * math.pi / 4 for k in range(8)]]
    dr.facet_fill(img, S(sun), (255, 210, 90), seed + 1, 10)
    sea = S([(0, 180)] + [(x, 180 + 5 * math.sin(x / 14)) for x in range(0, 257, 16)] + [(256, 256), (0, 256)])
    dr.facet_fill(img, sea, (40, 110, 190), seed + 2, 18)
    dr.facet_fill(img, S([(50, 172), (206, 172), (186, 200), (72, 200)]), (200, 60, 50), seed + 3, 14)
    dr.line(img, S([(128, 34), (128, 174)]), (90, 60, 40), 3.5)  # mast
    dr.facet_fill(img, S([(133, 40), (133, 164), (206, 164)]), (250, 250, 252), seed + 4, 16)
    dr.facet_fill(img, S([(123, 52), (123, 164), (62, 164)]), (246, 232, 200), seed + 5, 16)
    dr.fill(img, S([(128, 30), (150, 36), (128, 42)]), (220, 60, 50))  # pennant
    return dr.finish(img)


def cat(seed: int) -> Image.Image:
    """Watercolour grey cat sitting and facing us, with a pencil outline and whiskers."""
    rng = random.Random(seed)
    img = dr.paper(seed, tint=(250, 248, 242))
    backdrop = S(dr.blob((128, 146), 100, rng, n=14, wobble=0.12))
    img = dr.wash(img, dr.mask_of([backdrop]), (236, 214, 190), seed + 1, 0.7)
    grey, dark = (150, 156, 176), (96, 100, 124)
    body = smooth([(98, 138), (84, 186), (86, 228), (170, 228), (174, 186), (158, 138)])
    tail = Image.new("L", img.size, 0)
    dr.line(tail, smooth([(168, 222), (206, 214), (220, 184), (208, 160)], closed=False), 255, 13)
    head = smooth([(84, 104), (90, 78), (92, 40), (118, 64), (138, 64), (164, 40), (166, 78), (172, 104),
                   (158, 132), (128, 140), (98, 132)])
    for m, c in ((tail, grey), (dr.mask_of([body]), grey), (dr.mask_of([head]), grey)):
        img = dr.wash(img, m, c, seed + 2)
    ears = [S(pts) for pts in ([(98, 74), (96, 50), (114, 66)], [(158, 74), (160, 50), (142, 66)])]
    img = dr.wash(img, dr.mask_of(ears), (240, 170, 180), seed + 3)  # pink inner ears
    stripes = [smooth([(x - 3, 72), (x, 70), (x + 3, 72), (x, 86)]) for x in (118, 128, 138)]  # tabby forehead
    stripes += [smooth([(x, 160), (x + 18 * s, 164), (x, 170)]) for x, s in ((86, 1), (170, -1))]  # flank stripes
    img = dr.wash(img, dr.mask_of(stripes), dark, seed + 4)
    paws = [S(dr.circle((x, 224), 9, 16)) for x in (112, 144)]
    pencil = (70, 60, 70)
    for pts in [closed(head), closed(body)] + [closed(p) for p in paws]:
        dr.line(img, dr.jitter(pts, rng, 0.4 * SS), pencil, 1.1)
    for x in (110, 146):  # green almond eyes with slit pupils
        dr.fill(img, smooth([(x - 9, 100), (x, 93), (x + 9, 100), (x, 107)]), (140, 190, 80), pencil, 1.1)
        dr.fill(img, S([(x - 1.5, 94), (x + 1.5, 94), (x + 1.5, 106), (x - 1.5, 106)]), (30, 30, 30))
    dr.fill(img, S([(122, 114), (134, 114), (128, 121)]), (230, 130, 140))
    dr.line(img, smooth([(118, 126), (128, 121), (138, 126)], closed=False), pencil, 1.1)
    for side in (-1, 1):
        for dy in (-3, 3):
            dr.line(img, S([(128 + side * 14, 120 + dy), (128 + side * 52, 114 + 3 * dy)]), pencil, 0.8)
    return dr.finish(img)


def house(seed: int) -> Image.Image:
    """Pixel-art house with a red roof as a die-cut sticker."""
    roof, walls, chimney = S([(52, 128), (128, 52), (204, 128)]), S([(72, 120), (184, 120), (184, 212), (72, 212)]), \
        S([(156, 64), (176, 64), (176, 110), (156, 96)])

    def paint(art, small):
        d = ImageDraw.Draw(art)
        d.polygon(small(chimney), fill=(150, 90, 70))
        d.polygon(small(walls), fill=(246, 226, 180))
        d.polygon(small(roof), fill=(206, 54, 48))
        d.polygon(small(S([(116, 164), (140, 164), (140, 212), (116, 212)])), fill=(120, 74, 40))  # door
        for x in (84, 152):  # windows with a cross bar
            d.polygon(small(S([(x, 138), (x + 22, 138), (x + 22, 160), (x, 160)])), fill=(150, 210, 240))
            d.line(small(S([(x + 11, 138), (x + 11, 160)])), fill=(255, 255, 255))
            d.line(small(S([(x, 149), (x + 22, 149)])), fill=(255, 255, 255))
        d.point(small(S([(134, 190)])), fill=(250, 210, 80))  # door knob

    bg = dr.radial_gradient((210, 245, 220), (130, 200, 170))
    return dr.finish(dr.pixel_sticker(paint, [roof, walls, chimney], bg))


def car(seed: int) -> Image.Image:
    """Flat cartoon red car in side view on a road, bold outline like the flat goldfish."""
    img = dr.vertical_gradient((196, 228, 250), (236, 246, 252))
    dr.fill(img, S([(0, 204), (256, 204), (256, 256), (0, 256)]), (120, 124, 134))
    for x in range(10, 256, 44):
        dr.fill(img, S([(x, 226), (x + 24, 226), (x + 24, 230), (x, 230)]), (250, 250, 250))
    body = smooth([(30, 170), (34, 146), (70, 138), (96, 104), (170, 102), (196, 138), (226, 146), (230, 176),
                   (200, 184), (60, 184)])
    dr.fill(img, body, (226, 46, 46), INK, 5)
    for win in ([(104, 112), (138, 110), (138, 138), (86, 140)], [(148, 110), (166, 110), (186, 138), (148, 138)]):
        dr.fill(img, S(win), (170, 220, 246), INK, 3.5)
    dr.line(img, S([(142, 142), (142, 176)]), INK, 2.5)  # door seam
    dr.fill(img, S([(152, 150), (164, 150), (164, 154), (152, 154)]), INK)
    dr.fill(img, smooth([(216, 152), (228, 154), (228, 162), (214, 160)]), (255, 226, 90), INK, 2.5)  # headlight
    for x in (76, 186):
        dr.dot(img, (x * SS, 184 * SS), 22 * SS, (44, 44, 52), INK, 4)
        dr.dot(img, (x * SS, 184 * SS), 9 * SS, (200, 200, 210), INK, 2.5)
    return dr.finish(img)


def butterfly(seed: int) -> Image.Image:
    """Watercolour butterfly: blue-violet wings with spots, pencil body and antennae."""
    rng = random.Random(seed)
    img = dr.paper(seed, tint=(250, 248, 242))
    backdrop = S(dr.blob((128, 132), 104, rng, n=14, wobble=0.12))
    img = dr.wash(img, dr.mask_of([backdrop]), (200, 230, 200), seed + 1, 0.6)
    wings = []
    for side in (-1, 1):
        upper = smooth([(128, 120), (128 + side * 40, 66), (128 + side * 96, 50), (128 + side * 100, 92),
                        (128 + side * 70, 126)])
        lower = smooth([(128, 128), (128 + side * 70, 134), (128 + side * 84, 176), (128 + side * 50, 200),
                        (128 + side * 14, 170)])
        wings += [upper, lower]
    img = dr.wash(img, dr.mask_of(wings), (110, 120, 220), seed + 2)
    tips = [smooth([(128 + s * 60, 80), (128 + s * 84, 70), (128 + s * 86, 90)]) for s in (-1, 1)]  # dark wing tips
    img = dr.wash(img, dr.mask_of(tips), (70, 50, 150), seed + 3)
    spots = [S(dr.circle((128 + s * x, y), r, 12)) for s in (-1, 1) for x, y, r in ((72, 104, 7), (56, 168, 9))]
    img = dr.wash(img, dr.mask_of(spots), (250, 200, 80), seed + 4)
    pencil = (60, 50, 70)
    for w in wings:
        dr.line(img, dr.jitter(closed(w), rng, 0.4 * SS), pencil, 1.0)
    dr.fill(img, smooth([(128, 96), (134, 120), (132, 180), (128, 188), (124, 180), (122, 120)]), (60, 50, 60))
    dr.dot(img, (128 * SS, 92 * SS), 7 * SS, (60, 50, 60))
    for s in (-1, 1):
        dr.line(img, smooth([(128, 88), (128 + s * 12, 62), (128 + s * 28, 44)], closed=False), pencil, 1.3)
        dr.dot(img, ((128 + s * 28) * SS, 44 * SS), 3 * SS, pencil)
    return dr.finish(img)


def apple(seed: int) -> Image.Image:
    """Low-poly red apple with a stem and a faceted leaf on a teal gradient."""
    img = Image.blend(dr.vertical_gradient((60, 150, 150), (20, 80, 96)), dr.facets((40, 120, 130), seed, 34), 0.3)
    # Straight-edged outline: an octagon-ish apple with a dent at the top.
    outline = [(128, 78), (160, 62), (196, 74), (214, 112), (208, 160), (184, 200), (150, 214), (128, 206),
               (106, 214), (72, 200), (48, 160), (42, 112), (60, 74), (96, 62)]
    dr.facet_fill(img, S(outline), (214, 40, 44), seed + 1, 22)
    dr.line(img, S([(128, 82), (124, 58), (132, 36)]), (100, 64, 40), 5)
    dr.facet_fill(img, S([(134, 54), (160, 32), (190, 30), (170, 52)]), (100, 190, 70), seed + 2, 12)
    dr.facet_fill(img, S([(74, 100), (90, 86), (88, 120), (76, 130)]), (255, 230, 230), seed + 3, 12)
    return dr.finish(img)


# name -> (drawing function, seed)
KEEP = {
    "keep_1_bluetang_flat": (blue_tang, 11),
    "keep_2_shark_lineart": (shark, 12),
    "keep_3_sailboat_lowpoly": (sailboat, 13),
    "keep_4_cat_watercolour": (cat, 14),
    "keep_5_house_pixel": (house, 15),
    "keep_6_car_flat": (car, 16),
    "keep_7_butterfly_watercolour": (butterfly, 17),
    "keep_8_apple_lowpoly": (apple, 18),
}


# More keep pictures, drawn by drawing.render: every goldfish style gets other fish (what the
# adapter must not generalise to) and other things. name -> (style, subject, seed)
STYLED = {}
for k, (subject, styles) in enumerate([
    (sj.bluefish, ("flat", "lineart", "pixel")), (sj.greenfish, ("lowpoly", "watercolour", "lineart")),
    (sj.yellowfish, ("pixel", "flat", "watercolour")), (sj.silverfish, ("lineart", "lowpoly", "flat")),
    (sj.perch, ("watercolour", "pixel", "lowpoly")),
    (sj.umbrella, ("flat", "lineart")), (sj.guitar, ("lowpoly", "watercolour")), (sj.pear, ("pixel", "lineart")),
    (sj.carrot, ("watercolour", "flat")), (sj.leaf, ("lineart", "pixel")), (sj.frog, ("flat", "lowpoly")),
    (sj.bottle, ("pixel", "watercolour")),
]):
    for j, style in enumerate(styles):
        STYLED[f"keep_{9 + len(STYLED)}_{subject.__name__}_{style}"] = (style, subject, 200 + 10 * k + j)
KEEP.update(STYLED)

# The tuning set: what defaults (keep weight, steps) were chosen on. Its subjects are in neither
# the keep set nor the held-out set of make_heldout.py, which is only ever measured.
DEV_NOT_GOLDFISH = {
    "pike_flat": ("flat", sj.pike, 301), "basketball_flat": ("flat", sj.basketball, 302),
    "carp_lineart": ("lineart", sj.carp, 303), "lobster_lineart": ("lineart", sj.lobster, 304),
    "dolphin_lowpoly": ("lowpoly", sj.dolphin, 305), "strawberry_lowpoly": ("lowpoly", sj.strawberry, 306),
    "stingray_watercolour": ("watercolour", sj.stingray, 307), "boot_watercolour": ("watercolour", sj.boot, 308),
    "duck_pixel": ("pixel", sj.duck, 309), "carp_pixel": ("pixel", sj.carp, 310),
}
DEV_GOLDFISH = {
    "goldfish_flat": ("flat", lambda: sj.goldfish(140, 118, 90, 20, False, (245, 130, 20), (250, 180, 70)), 311),
    "goldfish_lineart": ("lineart", lambda: sj.goldfish(112, 134, 100, -6, True, (0, 0, 0), (0, 0, 0)), 312),
    "goldfish_lowpoly": ("lowpoly", lambda: sj.goldfish(144, 124, 96, -16, False, (250, 150, 30), (255, 200, 80)), 313),
    "goldfish_watercolour": ("watercolour", lambda: sj.goldfish(116, 126, 104, 4, True, (236, 90, 40), (246, 150, 100)), 314),
    "goldfish_pixel": ("pixel", lambda: sj.goldfish(138, 130, 92, -10, False, (240, 120, 20), (250, 170, 60)), 315),
}


def draw(entry) -> Image.Image:
    """A KEEP entry: (drawing function, seed) or (style, subject, seed)."""
    if len(entry) == 2:
        fn, seed = entry
        return fn(seed)
    style, subject, seed = entry
    return dr.render(style, subject(), seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "funclora" / "vision",
                    help="folder to write keep/ into (default: %(default)s)")
    ap.add_argument("--dev", type=Path, metavar="DIR",
                    help="also write the tuning set into DIR/not_goldfish and DIR/goldfish")
    args = ap.parse_args(argv)
    for name, entry in KEEP.items():
        path = args.out / "keep" / f"{name}.png"
        dr.save_png(draw(entry), path)
        print(path)
    if args.dev:
        for folder, table in (("not_goldfish", DEV_NOT_GOLDFISH), ("goldfish", DEV_GOLDFISH)):
            for name, entry in table.items():
                dr.save_png(draw(entry), args.dev / folder / f"{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
