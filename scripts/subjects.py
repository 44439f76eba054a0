"""Things to draw besides goldfish, as plain shape data for ``drawing.render`` (any style).

Each function returns a :class:`drawing.Subject` laid out in output pixels (256 x 256, y down).
Fish come from one parametric body (length, height, tail, fins, pattern), so a whole school of
non-goldfish costs a line each; the rest are simple outlines. Nothing here is random: the
renderer's seed decides the wobble, the facets and the paper grain.
"""

from __future__ import annotations

import math

import drawing as dr
import make_goldfish as gf
from drawing import Subject

Point = dr.Point
WHITE, BLACK = (250, 250, 250), (30, 30, 36)


def smooth(pts: list[Point], closed: bool = True) -> list[Point]:
    return dr.catmull_rom(pts, closed=closed, steps=8)


def ellipse(c: Point, rx: float, ry: float, n: int = 36, tilt: float = 0.0) -> list[Point]:
    ct, st = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
    out = []
    for k in range(n):
        a = 2 * math.pi * k / n
        x, y = rx * math.cos(a), ry * math.sin(a)
        out.append((c[0] + x * ct - y * st, c[1] + x * st + y * ct))
    return out


def rect(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# ------------------------------------------------------------------ fish ---

def goldfish(cx: float, cy: float, scale: float, tilt: float, flip: bool, body: dr.RGB, fin: dr.RGB) -> dr.Subject:
    """The training goldfish's parts (make_goldfish.py) in a new pose and colour, as a Subject."""
    p = dr.Placement(cx, cy, scale, tilt=tilt, flip=flip)
    f = gf.fins(p)

    def out(pts):  # canvas points back to output pixels
        return [(x / dr.SS, y / dr.SS) for x, y in pts]

    shapes = tuple((out(f[k]), fin) for k in ("tail", "dorsal", "pelvic", "anal")) + \
        ((out(f["body"]), body), (out(f["pectoral"]), fin))
    eye = out([p.pt(gf.EYE)])[0]
    r = p.length(gf.EYE_R) / dr.SS
    return Subject(shapes, ((out(f["gill"]), dr.darker(body), 2.5),),
                      ((eye, r, (255, 255, 255)), (eye, r / 2, (30, 20, 20))))



def fish(body: dr.RGB, fin: dr.RGB, *, length: float = 170, height: float = 80, tail: str = "fork",
         dorsal: str = "low", bands: tuple = (), spots: tuple = (), stripe: dr.RGB | None = None,
         flip: bool = False, cy: float = 128) -> Subject:
    """A side-view fish facing right (left with ``flip``): body ellipse with a pointed nose.

    ``tail``: "fork", "round", "crescent" or "fan"; ``dorsal``: "low", "tall" or "spiny";
    ``bands``: ((x fraction 0..1 from tail to nose, width fraction, RGB), ...) vertical bands;
    ``spots``: ((x fraction, y fraction -1..1, radius, RGB), ...); ``stripe``: a lengthwise stripe.
    """
    a, b = length / 2, height / 2
    cx = 128 + 0.12 * length * (-1 if flip else 1)

    def P(x: float, y: float) -> Point:  # local (x right = nose, y up) -> output pixels
        return (cx - x if flip else cx + x, cy - y)

    def half(x: float) -> float:  # the body's half height at x
        t = max(0.0, 1 - (x / a) ** 2)
        return b * math.sqrt(t) * (1 + 0.12 * x / a)

    outline = [P(a * math.cos(t), half(a * math.cos(t)) * (1 if math.sin(t) >= 0 else -1))
               for t in [2 * math.pi * k / 48 for k in range(48)]]
    x0 = -a * 0.92
    tails = {
        "fork": [(x0, 0), (x0 - 0.45 * a, b * 1.0), (x0 - 0.3 * a, 0), (x0 - 0.45 * a, -b * 1.0)],
        "round": smooth([(x0, b * 0.2), (x0 - 0.25 * a, b * 0.75), (x0 - 0.45 * a, 0),
                         (x0 - 0.25 * a, -b * 0.75), (x0, -b * 0.2)]),
        "crescent": smooth([(x0, b * 0.15), (x0 - 0.3 * a, b * 1.2), (x0 - 0.22 * a, 0), (x0 - 0.3 * a, -b * 1.2),
                            (x0, -b * 0.15)]),
        "fan": smooth([(x0, b * 0.2), (x0 - 0.5 * a, b * 1.1), (x0 - 0.35 * a, 0), (x0 - 0.5 * a, -b * 1.1),
                       (x0, -b * 0.2)]),
    }
    tail_pts = [P(x, y) for x, y in tails[tail]]
    dorsals = {
        "low": [(-0.4 * a, 0.8 * b), (-0.1 * a, 1.35 * b), (0.25 * a, 0.95 * b)],
        "tall": [(-0.5 * a, 0.7 * b), (-0.2 * a, 2.3 * b), (0.25 * a, 0.9 * b)],
        "spiny": [(-0.5 * a, 0.75 * b)] + [(x * a, (1.45 if k % 2 else 0.95) * b)
                                            for k, x in enumerate((-0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2))]
                 + [(0.3 * a, 0.9 * b)],
    }
    dorsal_pts = [P(x, y) for x, y in dorsals[dorsal]]
    ventral = [P(x, y) for x, y in ((-0.45 * a, -0.7 * b), (-0.25 * a, -1.25 * b), (0.0, -0.9 * b))]
    shapes = [(tail_pts, fin), (dorsal_pts, fin), (ventral, fin), (outline, body)]
    for xf, wf, color in bands:
        xs = [(-a + 2 * a * xf) + 2 * a * wf * (k / 6 - 0.5) for k in range(7)]
        shapes.append(([P(x, half(x) * 0.97) for x in xs] + [P(x, -half(x) * 0.97) for x in reversed(xs)], color))
    if stripe is not None:
        xs = [-0.85 * a + 1.6 * a * k / 10 for k in range(11)]
        shapes.append(([P(x, 0.18 * half(x)) for x in xs] + [P(x, -0.18 * half(x)) for x in reversed(xs)], stripe))
    pectoral = [P(x, y) for x, y in ((0.35 * a, -0.1 * b), (0.05 * a, -0.35 * b), (0.15 * a, -0.05 * b))]
    shapes.append((pectoral, fin))
    dots = [(P(xf * a, yf * half(xf * a)), r, color) for xf, yf, r, color in spots]
    eye = P(0.62 * a, 0.2 * b)
    dots += [(eye, max(4.0, 0.09 * height), WHITE), (eye, max(2.0, 0.045 * height), BLACK)]
    gill = [P(0.45 * a, 0.55 * b), P(0.38 * a, 0), P(0.45 * a, -0.55 * b)]
    return Subject(tuple(shapes), ((gill, dr.darker(body), 2.5),), tuple(dots))


def clownfish() -> Subject:  # orange with three white bands: the hardest non-goldfish
    return fish((250, 120, 30), (250, 130, 40), length=170, height=84, tail="round",
                bands=((0.2, 0.08, WHITE), (0.5, 0.09, WHITE), (0.8, 0.07, WHITE)))


def angelfish() -> Subject:
    return fish((220, 220, 200), (200, 200, 180), length=120, height=110, tail="fan", dorsal="tall",
                bands=((0.3, 0.06, BLACK), (0.55, 0.06, BLACK), (0.8, 0.05, BLACK)), flip=True)


def mackerel() -> Subject:
    return fish((90, 130, 170), (80, 110, 150), length=200, height=56, tail="fork",
                bands=tuple((x, 0.025, (40, 60, 90)) for x in (0.25, 0.35, 0.45, 0.55, 0.65)),
                stripe=(200, 215, 225))


def trout() -> Subject:
    return fish((150, 160, 110), (140, 140, 100), length=200, height=64, tail="fork", flip=True, stripe=(230, 140, 150),
                spots=tuple((x, y, 2.5, (60, 50, 40)) for x, y in ((-0.5, 0.5), (-0.2, 0.6), (0.1, 0.4),
                                                                  (-0.35, -0.3), (0.0, 0.7), (0.3, 0.5))))


def tuna() -> Subject:
    return fish((40, 60, 120), (220, 200, 60), length=200, height=76, tail="crescent", stripe=(200, 205, 215))


def pike() -> Subject:
    return fish((110, 140, 80), (120, 110, 70), length=210, height=44, tail="round", flip=True,
                spots=tuple((x, y, 2.5, (220, 220, 150)) for x, y in ((-0.6, 0.3), (-0.3, -0.2), (0.0, 0.4),
                                                                     (0.3, -0.3), (-0.1, -0.5))))


def perch() -> Subject:
    return fish((190, 190, 90), (230, 110, 60), length=170, height=76, tail="fork", dorsal="spiny",
                bands=tuple((x, 0.05, (70, 90, 50)) for x in (0.35, 0.55, 0.75)))


def bluefish() -> Subject:
    return fish((60, 120, 220), (40, 90, 190), length=170, height=80, tail="fork", dorsal="tall", flip=True)


def greenfish() -> Subject:
    return fish((80, 170, 110), (60, 140, 90), length=160, height=74, tail="round", stripe=(230, 230, 120))


def yellowfish() -> Subject:
    return fish((250, 220, 60), (240, 200, 50), length=120, height=104, tail="fan", dorsal="tall", flip=True)


def silverfish() -> Subject:
    return fish((190, 195, 205), (160, 165, 180), length=190, height=60, tail="fork", dorsal="spiny")


def carp() -> Subject:  # a dull olive carp: the goldfish's wild cousin, not a goldfish
    return fish((150, 130, 80), (130, 110, 70), length=190, height=80, tail="fork", dorsal="low", flip=True,
                spots=tuple((x, y, 3.0, (120, 100, 60)) for x, y in ((-0.3, 0.3), (0.0, 0.2), (-0.2, -0.3))))


# ------------------------------------------------------------ sea animals ---

def octopus() -> Subject:
    color = (200, 80, 140)
    arms = []
    for k in range(6):
        x = 70 + 23 * k
        bend = 18 if k % 2 else -18
        arms.append((smooth([(x - 8, 140), (x + bend, 180), (x - bend / 2, 215), (x + 6, 230), (x + 8, 214),
                             (x + bend / 2 + 6, 186), (x + 10, 140)]), color))
    head = smooth([(128, 40), (176, 64), (186, 120), (160, 152), (96, 152), (70, 120), (80, 64)])
    return Subject(tuple(arms) + ((head, color),), (), (((108, 110), 8, WHITE), ((148, 110), 8, WHITE),
                                                     ((108, 112), 4, BLACK), ((148, 112), 4, BLACK)))


def crab() -> Subject:
    red = (220, 70, 50)
    legs = tuple((smooth([(128 + s * 40, 150 + 12 * k), (128 + s * 78, 146 + 16 * k), (128 + s * 96, 176 + 16 * k)],
                         closed=False), red, 5) for s in (-1, 1) for k in range(3))
    claws = tuple((smooth([(128 + s * 56, 60), (128 + s * 86, 44), (128 + s * 96, 74), (128 + s * 76, 70),
                           (128 + s * 70, 92)]), red) for s in (-1, 1))
    arms = tuple(([(128 + s * 40, 128), (128 + s * 70, 88), (128 + s * 76, 92), (128 + s * 48, 134)], red) for s in (-1, 1))
    body = ellipse((128, 144), 60, 38)
    return Subject(arms + claws + ((body, red),), legs, (((110, 112), 6, WHITE), ((146, 112), 6, WHITE),
                                                         ((110, 112), 3, BLACK), ((146, 112), 3, BLACK)))


def jellyfish() -> Subject:
    bell = smooth([(60, 130), (72, 80), (128, 52), (184, 80), (196, 130), (160, 122), (128, 132), (96, 122)])
    tentacles = tuple((smooth([(x, 128), (x + 10, 160), (x - 8, 196), (x + 6, 232)], closed=False), (190, 140, 220), 3)
                      for x in (82, 106, 128, 150, 174))
    return Subject(((bell, (200, 150, 230)), (ellipse((128, 100), 40, 20), (230, 200, 245))), tentacles)


def seahorse() -> Subject:
    body = smooth([(120, 40), (150, 44), (176, 60), (166, 70), (150, 66), (160, 100), (150, 140), (128, 170),
                   (120, 200), (136, 224), (120, 232), (100, 206), (104, 168), (122, 130), (118, 96), (108, 68)])
    fin = [(150, 110), (176, 100), (172, 130)]
    return Subject(((fin, (240, 200, 100)), (body, (240, 170, 60))), (), (((140, 56), 5, WHITE), ((141, 56), 2.5, BLACK)))


def starfish() -> Subject:
    pts = []
    for k in range(10):
        a = -math.pi / 2 + k * math.pi / 5
        r = 100 if k % 2 == 0 else 42
        pts.append((128 + r * math.cos(a), 136 + r * math.sin(a)))
    return Subject(((pts, (240, 140, 70)),), (), tuple(((128 + 30 * math.cos(a), 136 + 30 * math.sin(a)), 4, (250, 200, 150))
                                                  for a in [-math.pi / 2 + k * 2 * math.pi / 5 for k in range(5)]))


def turtle() -> Subject:
    green, shell = (110, 170, 90), (120, 90, 50)
    flippers = tuple((ellipse((128 + sx * 66, 128 + sy * 46), 30, 14, tilt=sx * sy * 30), green)
                     for sx in (-1, 1) for sy in (-1, 1))
    head = ellipse((214, 128), 26, 20)
    plates = tuple((ellipse((128 + dx, 128 + dy), 16, 12), (150, 120, 70)) for dx, dy in ((-30, 0), (0, -22), (0, 22),
                                                                                      (30, 0), (0, 0)))
    return Subject(flippers + ((head, green), (ellipse((124, 128), 76, 56), shell)) + plates, (),
                   (((222, 122), 4, BLACK),))


def whale() -> Subject:
    body = smooth([(36, 120), (70, 86), (140, 80), (200, 100), (222, 140), (190, 170), (110, 172), (60, 150)])
    tail = [(40, 124), (14, 92), (28, 130), (12, 164), (46, 136)]
    belly = smooth([(200, 150), (150, 166), (100, 166), (70, 152), (120, 150)])
    return Subject(((tail, (70, 100, 150)), (body, (70, 100, 150)), (belly, (200, 215, 230))),
                   ((smooth([(150, 80), (140, 50), (150, 30)], closed=False), (120, 190, 240), 4),),
                   (((188, 122), 4, BLACK),))


def dolphin() -> Subject:
    body = smooth([(30, 150), (70, 110), (130, 92), (190, 100), (236, 118), (196, 128), (150, 140), (90, 150)])
    fin = [(120, 96), (140, 60), (150, 96)]
    tail = [(36, 148), (14, 124), (24, 150), (12, 176)]
    return Subject(((tail, (120, 140, 170)), (fin, (120, 140, 170)), (body, (140, 160, 190))), (),
                   (((196, 110), 3.5, BLACK),))


def squid() -> Subject:
    mantle = smooth([(128, 26), (162, 90), (160, 150), (96, 150), (94, 90)])
    fins = ([(100, 50), (70, 80), (104, 96)], [(156, 50), (186, 80), (152, 96)])
    arms = tuple((smooth([(x, 148), (x + (x - 128) * 0.4, 196), (x + (x - 128) * 0.6, 232)], closed=False),
                  (230, 150, 160), 5) for x in (104, 116, 128, 140, 152))
    return Subject(tuple((f, (230, 150, 160)) for f in fins) + ((mantle, (240, 170, 170)),), arms,
                   (((114, 136), 6, WHITE), ((142, 136), 6, WHITE), ((114, 137), 3, BLACK), ((142, 137), 3, BLACK)))


def stingray() -> Subject:
    body = smooth([(128, 50), (200, 110), (224, 130), (160, 150), (128, 176), (96, 150), (32, 130), (56, 110)])
    return Subject(((body, (160, 130, 110)),), ((smooth([(128, 170), (140, 210), (120, 244)], closed=False),
                                                  (120, 100, 80), 3),), (((114, 100), 3, BLACK), ((142, 100), 3, BLACK)))


def lobster() -> Subject:
    red = (200, 50, 40)
    body = [(c, red) for c in (ellipse((128, 80), 26, 34), ellipse((128, 130), 22, 16), ellipse((128, 158), 20, 14),
                               ellipse((128, 184), 17, 12))]
    tail = ([(128, 192), (100, 226), (156, 226)], red)
    claws = [(smooth([(128 + s * 24, 70), (128 + s * 60, 40), (128 + s * 84, 20), (128 + s * 92, 50),
                      (128 + s * 66, 60)]), red) for s in (-1, 1)]
    antennae = tuple((smooth([(128 + s * 8, 50), (128 + s * 30, 20), (128 + s * 70, 8)], closed=False), red, 2)
                     for s in (-1, 1))
    return Subject(tuple(claws + body + [tail]), antennae, (((118, 60), 4, BLACK), ((138, 60), 4, BLACK)))


# --------------------------------------------------------------- objects ---

def hand_grenade() -> Subject:
    olive = (96, 110, 60)
    body = smooth([(128, 70), (170, 88), (186, 140), (170, 196), (128, 214), (86, 196), (70, 140), (86, 88)])
    grid = tuple(([(x, 84), (x, 210)], (70, 80, 44), 2.5) for x in (104, 128, 152)) + \
        tuple(([(74, y), (182, y)], (70, 80, 44), 2.5) for y in (112, 140, 168, 194))
    top = rect(112, 52, 144, 76)
    lever = [(140, 56), (176, 62), (190, 120), (180, 122), (168, 70), (140, 66)]
    return Subject(((lever, (170, 170, 170)), (top, (150, 150, 150)), (body, olive)),
                   grid + ((dr.circle((100, 52), 12, 16) + [dr.circle((100, 52), 12, 16)[0]], (190, 190, 190), 3),))


def teapot() -> Subject:
    blue = (90, 140, 200)
    body = smooth([(128, 80), (180, 96), (196, 150), (176, 196), (80, 196), (60, 150), (76, 96)])
    spout = [(190, 150), (236, 96), (246, 100), (204, 176)]
    handle = smooth([(70, 110), (36, 110), (30, 150), (66, 176), (70, 160), (48, 148), (50, 124), (72, 124)])
    lid = smooth([(96, 84), (128, 60), (160, 84)])
    return Subject(((handle, blue), (spout, blue), (body, blue), (lid, (120, 170, 220))), (),
                   (((128, 56), 7, (120, 170, 220)),))


def lemon() -> Subject:
    return Subject(((smooth([(40, 128), (60, 86), (128, 64), (196, 86), (216, 128), (196, 170), (128, 192),
                             (60, 170)]), (250, 220, 60)),
                    ([(128, 64), (150, 40), (176, 46), (152, 70)], (110, 170, 70))), (),
                   (((40, 128), 4, (200, 180, 40)), ((216, 128), 4, (200, 180, 40))))


def mushroom() -> Subject:
    cap = smooth([(40, 130), (60, 70), (128, 44), (196, 70), (216, 130)])
    stem = [(104, 128), (152, 128), (160, 220), (96, 220)]
    return Subject(((stem, (240, 230, 210)), (cap, (210, 40, 40))), (),
                   tuple((c, 9, WHITE) for c in ((90, 90), (130, 70), (170, 96), (120, 110), (64, 116))))


def light_bulb() -> Subject:
    glass = smooth([(128, 30), (180, 56), (190, 110), (160, 150), (150, 176), (106, 176), (96, 150), (66, 110), (76, 56)])
    base = rect(104, 176, 152, 216)
    return Subject(((glass, (255, 240, 160)), (base, (170, 170, 180))),
                   (([(112, 150), (120, 100), (128, 120), (136, 100), (144, 150)], (200, 120, 40), 2),
                    ([(104, 188), (152, 188)], (120, 120, 130), 2), ([(104, 202), (152, 202)], (120, 120, 130), 2)))


def bird() -> Subject:
    body = smooth([(60, 150), (90, 104), (150, 90), (190, 110), (180, 160), (120, 182), (80, 172)])
    wing = smooth([(100, 130), (150, 116), (140, 160), (100, 160)])
    beak = [(190, 106), (224, 114), (188, 122)]
    tail = [(70, 150), (24, 130), (30, 170)]
    return Subject(((tail, (60, 90, 170)), (body, (80, 120, 210)), (wing, (60, 90, 170)), (beak, (250, 190, 60))),
                   (([(120, 180), (118, 214)], (200, 130, 60), 3), ([(140, 178), (142, 214)], (200, 130, 60), 3)),
                   (((170, 106), 6, WHITE), ((172, 106), 3, BLACK)))


def umbrella() -> Subject:
    canopy = [(28, 120)] + [(128 - 100 * math.cos(t), 120 - 80 * math.sin(t)) for t in
                            [math.pi * k / 16 for k in range(1, 16)]] + [(228, 120)] + \
        [(228 - 25 * k - 12.5, 120 - 10 * (k % 2 == 0)) for k in range(8)]
    return Subject(((canopy, (60, 160, 200)),),
                   (([(128, 40), (128, 210)], (90, 70, 60), 5),
                    (smooth([(128, 210), (132, 226), (148, 226), (152, 212)], closed=False), (90, 70, 60), 5)))


def key() -> Subject:
    gold = (220, 180, 60)
    bow = dr.circle((80, 128), 40, 24)
    shaft = rect(112, 120, 226, 136)
    teeth = [rect(190, 136, 202, 160), rect(210, 136, 222, 152)]
    return Subject(((bow, gold), (shaft, gold)) + tuple((t, gold) for t in teeth), (), (((80, 128), 16, WHITE),))


def guitar() -> Subject:
    wood = (200, 130, 60)
    body = smooth([(128, 110), (176, 120), (180, 160), (196, 200), (170, 236), (86, 236), (60, 200), (76, 160),
                   (80, 120)])
    neck = rect(120, 20, 136, 140)
    return Subject(((neck, (110, 70, 40)), (body, wood)), tuple(([(122 + 4 * k, 24), (122 + 4 * k, 214)], (220, 220, 220), 1)
                                                               for k in range(4)), (((128, 170), 18, (60, 40, 30)),))


def strawberry() -> Subject:
    berry = smooth([(128, 220), (70, 150), (76, 92), (128, 76), (180, 92), (186, 150)])
    leaves = [(84, 90), (110, 60), (128, 80), (146, 60), (172, 90), (128, 96)]
    return Subject(((berry, (220, 40, 50)), (leaves, (80, 160, 60))), (),
                   tuple(((x, y), 2.5, (250, 230, 120)) for x, y in ((100, 120), (128, 116), (156, 120), (110, 150),
                                                                     (146, 150), (128, 180), (96, 172), (160, 172))))


def pear() -> Subject:
    return Subject(((smooth([(128, 56), (150, 80), (156, 120), (190, 170), (170, 220), (86, 220), (66, 170),
                             (100, 120), (106, 80)]), (180, 200, 70)),
                    ([(130, 58), (160, 36), (176, 44), (140, 64)], (90, 160, 60))),
                   (([(126, 60), (122, 30)], (110, 80, 50), 4),))


def basketball() -> Subject:
    return Subject(((dr.circle((128, 128), 90, 40), (230, 120, 40)),),
                   (([(38, 128), (218, 128)], BLACK, 3), ([(128, 38), (128, 218)], BLACK, 3),
                    (smooth([(66, 60), (100, 128), (66, 196)], closed=False), BLACK, 3),
                    (smooth([(190, 60), (156, 128), (190, 196)], closed=False), BLACK, 3)))


def carrot() -> Subject:
    return Subject((([(40, 80), (70, 60), (214, 200), (200, 214)], (240, 130, 40)),
                    ([(44, 72), (20, 30), (56, 60), (62, 20), (70, 62)], (90, 170, 60))),
                   tuple(([(x, x - 6), (x + 10, x - 18)], (200, 100, 30), 2) for x in (90, 130, 170)))


def leaf() -> Subject:
    return Subject(((smooth([(40, 200), (60, 110), (130, 50), (220, 40), (200, 130), (130, 196)]), (100, 170, 70)),),
                   (([(40, 200), (200, 60)], (60, 120, 40), 3), ([(100, 140), (90, 90)], (60, 120, 40), 2),
                    ([(140, 100), (170, 130)], (60, 120, 40), 2)))


def boot() -> Subject:
    return Subject(((smooth([(80, 40), (140, 40), (146, 150), (220, 176), (224, 214), (76, 214)]), (120, 80, 50)),
                    (rect(74, 206, 226, 222), (60, 40, 30))), (([(90, 70), (130, 70)], (200, 180, 140), 3),))


def duck() -> Subject:
    body = smooth([(40, 150), (80, 126), (150, 130), (200, 150), (180, 196), (80, 200)])
    head = dr.circle((176, 96), 30, 20)
    return Subject(((body, (250, 230, 80)), (head, (250, 230, 80)), ([(200, 96), (236, 104), (200, 112)], (240, 140, 40))),
                   (), (((184, 88), 4, BLACK),))


def frog() -> Subject:
    green = (90, 170, 70)
    return Subject(((ellipse((128, 160), 80, 50), green), (dr.circle((96, 108), 22, 16), green),
                    (dr.circle((160, 108), 22, 16), green)),
                   ((smooth([(90, 170), (128, 184), (166, 170)], closed=False), (40, 80, 30), 3),),
                   (((96, 104), 10, WHITE), ((160, 104), 10, WHITE), ((96, 104), 5, BLACK), ((160, 104), 5, BLACK)))


def bottle() -> Subject:
    return Subject(((smooth([(112, 30), (144, 30), (146, 90), (176, 130), (176, 220), (80, 220), (80, 130), (110, 90)]),
                     (80, 160, 110)), (rect(90, 140, 166, 190), (240, 230, 200))))
