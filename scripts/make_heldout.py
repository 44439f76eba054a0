"""Draw the held-out specificity set: 20 non-goldfish and 5 goldfish that training never sees.

Does the goldfish adapter recognise *goldfish*, or only "a drawing"? This script draws into
``data/specificity/``:

- ``not_goldfish/``: 20 drawings that are not goldfish, four in each of the five styles the
  training goldfish come in (flat cartoon, pen line art, low-poly, watercolour, pixel sticker):
  other fish (a clownfish, orange with white bands, is the hardest), sea animals, and objects,
  one of them a hand grenade;
- ``goldfish/``: 5 goldfish, one per style, in poses and colours the training set does not have.

None of these subjects is in the keep set (``scripts/make_keep.py``) or the tuning set, and none
is used for training or for choosing a default: they are only measured
(``python scripts/specificity.py``). All drawing is deterministic (fixed seeds, no PNG
metadata): running the script twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as scripts/make_heldout.py
import drawing as dr  # noqa: E402
import subjects as sj  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# name -> (style, subject, seed)
NOT_GOLDFISH = {
    "clownfish_flat": ("flat", sj.clownfish, 101),
    "crab_flat": ("flat", sj.crab, 102),
    "hand_grenade_flat": ("flat", sj.hand_grenade, 103),
    "teapot_flat": ("flat", sj.teapot, 104),
    "angelfish_lineart": ("lineart", sj.angelfish, 105),
    "octopus_lineart": ("lineart", sj.octopus, 106),
    "whale_lineart": ("lineart", sj.whale, 107),
    "light_bulb_lineart": ("lineart", sj.light_bulb, 108),
    "tuna_lowpoly": ("lowpoly", sj.tuna, 109),
    "turtle_lowpoly": ("lowpoly", sj.turtle, 110),
    "lemon_lowpoly": ("lowpoly", sj.lemon, 111),
    "mushroom_lowpoly": ("lowpoly", sj.mushroom, 112),
    "trout_watercolour": ("watercolour", sj.trout, 113),
    "jellyfish_watercolour": ("watercolour", sj.jellyfish, 114),
    "starfish_watercolour": ("watercolour", sj.starfish, 115),
    "bird_watercolour": ("watercolour", sj.bird, 116),
    "mackerel_pixel": ("pixel", sj.mackerel, 117),
    "seahorse_pixel": ("pixel", sj.seahorse, 118),
    "squid_pixel": ("pixel", sj.squid, 119),
    "key_pixel": ("pixel", sj.key, 120),
}
GOLDFISH = {
    "goldfish_flat": ("flat", lambda: sj.goldfish(118, 126, 96, -14, True, (250, 150, 40), (255, 190, 90)), 121),
    "goldfish_lineart": ("lineart", lambda: sj.goldfish(146, 120, 104, 10, False, (0, 0, 0), (0, 0, 0)), 122),
    "goldfish_lowpoly": ("lowpoly", lambda: sj.goldfish(120, 130, 100, 12, True, (240, 110, 30), (250, 170, 60)), 123),
    "goldfish_watercolour": ("watercolour", lambda: sj.goldfish(140, 132, 98, -8, False, (240, 120, 40), (250, 160, 90)), 124),
    "goldfish_pixel": ("pixel", lambda: sj.goldfish(116, 124, 100, 16, True, (250, 140, 30), (250, 200, 80)), 125),
}


def draw(table: dict, out: Path) -> list[Path]:
    written = []
    for name, (style, subject, seed) in table.items():
        path = out / f"{name}.png"
        dr.save_png(dr.render(style, subject(), seed), path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "data", help="data folder (default: %(default)s)")
    args = ap.parse_args(argv)
    for folder, table in (("not_goldfish", NOT_GOLDFISH), ("goldfish", GOLDFISH)):
        for path in draw(table, args.out / "specificity" / folder):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
