"""A grid of training runs at once: every combination of seeds, learning rates, ranks and keep
weights is one adapter of one `fl.fit_many` (`funclora train --seed 0,1,2,3 --lr 1e-3,1e-2`).

The frozen part runs once for the whole grid (cached features, `fl.split`), and every step
trains all the adapters in one vmapped step: adapters of smaller ranks are padded with zeros
(`fl.stack`), each adapter's scale (alpha / rank) and keep weight ride along as per-adapter data,
each has its own Adam and learning rate. Under torchrun the grid is also data-parallel.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import many
from ..cache import split
from ..config import LoraConfig
from ..keep import keep_term
from ..lora import init_lora
from ..optim import adam
from ..params import freeze

__all__ = ["combinations", "train_grid", "run_grid", "grid_name", "format_grid"]

Combo = dict[str, Any]
"""One run of the grid: {"seed": int, "lr": float, "rank": int, "keep_weight": float}."""


def combinations(seeds: Sequence[int], lrs: Sequence[float], ranks: Sequence[int],
                 keep_weights: Sequence[float]) -> list[Combo]:
    """Every combination, the seed varying fastest (duplicates in a list are dropped).

    >>> [tuple(c.values()) for c in combinations([0, 1], [0.1], [4, 8], [10.0])]
    [(0, 0.1, 4, 10.0), (1, 0.1, 4, 10.0), (0, 0.1, 8, 10.0), (1, 0.1, 8, 10.0)]
    """
    unique = [list(dict.fromkeys(v)) for v in (ranks, lrs, keep_weights, seeds)]
    return [{"seed": s, "lr": lr, "rank": r, "keep_weight": w}
            for r, lr, w, s in itertools.product(*unique)]


def grid_name(combo: Combo, keep: bool) -> str:
    """The adapter file name of one combination.

    >>> grid_name({"seed": 1, "lr": 0.01, "rank": 8, "keep_weight": 10.0}, keep=True)
    'seed1_lr0.01_rank8_keep10.safetensors'
    """
    keep_part = f"_keep{combo['keep_weight']:g}" if keep else ""
    return f"seed{combo['seed']}_lr{combo['lr']:g}_rank{combo['rank']}{keep_part}.safetensors"


def train_grid(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, combos: list[Combo], *,
               targets: Sequence[str], alpha: float | None, steps: int, keep_x: torch.Tensor | None = None,
               batches: Callable[[int], list] | None = None, val_x: torch.Tensor | None = None,
               world: Any = None, progress: bool = True) -> dict:
    """Train one adapter per combination at once; return {"loras", "cfgs", "histories", "logits",
    "keep_before", "keep_logits", "val_logits"} (None where there is no keep set or val set).

    x, y: the training images and labels. batches (augmentation): a function of the step that
    returns one batch of fresh images per combination, trained on instead of x. keep_x: the keep
    images (their KL term weighted per combination), or None. logits: each adapter's outputs on
    x after training, and on keep_x and val_x (the base's on keep_x: keep_before). world: data-parallel under torchrun (`funclora.distributed.init()`).
    """
    base = freeze(model)
    cfgs = [LoraConfig(rank=c["rank"], alpha=alpha, targets=tuple(targets)) for c in combos]
    top = max(cfgs, key=lambda c: c.rank)
    layer = next(iter(init_lora(model, top)))  # every layer has the same scale ratio here (no patterns)
    scales = [c.scale_for(layer) / top.scale_for(layer) for c in cfgs]
    loras = [init_lora(model, cfg, seed=c["seed"]) for cfg, c in zip(cfgs, combos)]
    prefix, suffix = split(model, top)
    extra = weights = keep_feats = None
    if keep_x is not None:
        keep_feats = prefix(base, keep_x)
        extra = keep_term(suffix, base, keep_feats, weight=1.0)
        weights = [c["keep_weight"] for c in combos]
    feats = prefix(base, x)
    run, data = suffix, feats
    if batches is not None:  # fresh images every step: the whole model runs (no cached prefix for them)
        from ..apply import functional

        run, data = functional(model, top), batches
        extra = None if keep_x is None else keep_term(run, base, keep_x, weight=1.0)
    trained, histories = many.fit_many(
        run, base, loras, data, y, opt=[adam(c["lr"]) for c in combos], steps=steps, extra=extra,
        extra_weights=weights, scales=None if all(s == 1 for s in scales) else scales, terms=True,
        progress=progress, world=world)
    with torch.no_grad():
        adapted = [_as_top(lora, top, s) for lora, s in zip(trained, scales)]
        logits = [suffix(base, lora, feats) for lora in adapted]
        keep = None if keep_x is None else [suffix(base, lora, keep_feats) for lora in adapted]
        val_feats = None if val_x is None else prefix(base, val_x)
        val = None if val_x is None else [suffix(base, lora, val_feats) for lora in adapted]
        before = None if keep_x is None else suffix(base, None, keep_feats)
    return {"loras": trained, "cfgs": cfgs, "histories": histories, "logits": logits, "keep_before": before,
            "keep_logits": keep, "val_logits": val}


def _as_top(lora, top: LoraConfig, scale: float):
    """The adapter padded to the grid's top rank, B scaled so that it runs with the top config's scale."""
    padded = many.pad_rank(lora, top.rank)
    return padded if scale == 1 else {n: {**ab, "B": ab["B"] * scale} for n, ab in padded.items()}


def format_grid(rows: list[dict], best: int | None = None) -> str:
    """The results table: one row per combination, the best one (if any) marked with *.

    >>> print(format_grid([{"seed": 0, "lr": 0.01, "rank": 8, "keep_weight": 10.0, "loss": 0.5, "hits": "5/5",
    ...                     "kept": "8/8", "val": None, "file": "a.safetensors"}], best=0))
       seed  lr    rank  keep λ  loss    label  keep  val  adapter
    *  0     0.01  8     10      0.5000  5/5    8/8   -    a.safetensors
    """
    head = ("", "seed", "lr", "rank", "keep λ", "loss", "label", "keep", "val", "adapter")
    body = [("*" if i == best else "", str(r["seed"]), f"{r['lr']:g}", str(r["rank"]), f"{r['keep_weight']:g}",
             "diverged" if r["loss"] is None else f"{r['loss']:.4f}", r["hits"], r["kept"] or "-",
             "-" if r["val"] is None else f"{100 * r['val']:.1f}%", r["file"]) for i, r in enumerate(rows)]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (head, *body))


def run_grid(args: Any, world: Any = None) -> dict | None:
    """`funclora train` with comma lists, on a flat folder of images taught one --label: train
    every combination at once, save one adapter each (rank 0), and return what the command prints
    ({"rows", "best", "folder", "seconds", ...}); None on the other ranks of a torchrun job.
    `args` has the train command's fields (seed, lr, rank and keep_weight as lists)."""
    import time
    from pathlib import Path

    from ..io import save
    from .backbones import resolve_label
    from .data import is_class_folder
    from .images import list_images, load_batch
    from .training import DEFAULTS, _keep_paths, _keep_weight, load_backbone, slug

    if args.mode != "layers" or args.compile or is_class_folder(args.images):
        raise ValueError("comma lists (a grid) train --mode layers on a flat folder of images, without --compile")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a file; a grid writes one adapter per combination into a folder")
    if len(set(args.seed)) > 1 and args.weights == "none":
        raise ValueError("--weights none draws the backbone from --seed: give one seed for a grid")
    paths, keep_paths = list_images([args.images]), _keep_paths(args)
    weights = [0.0] if not keep_paths else (args.keep_weight or [_keep_weight(args)])
    combos = combinations(args.seed, args.lr or [DEFAULTS["layers"]["lr"]],
                          args.rank or [DEFAULTS["layers"]["rank"]], weights)
    backbone = load_backbone(args.backbone, args.weights, args.seed[0])
    label = resolve_label(args.label, backbone.classes)
    x, y = load_batch(paths, backbone.preprocess), torch.full((len(paths),), label)
    keep_x = load_batch(keep_paths, backbone.preprocess) if keep_paths else None
    val_x = val_y = None
    if args.val is not None:
        from .evaluate import labelled_images

        val_paths, val_y = labelled_images(args.val, backbone.classes)
        val_x = load_batch(val_paths, backbone.preprocess)
    batches = None
    if args.augment:
        from .augment import augmented_batches
        from .images import load_image

        images = [load_image(p) for p in paths]
        streams = [augmented_batches(images, backbone.preprocess, seed=c["seed"]) for c in combos]

        def batches(step: int) -> list:
            return [stream(step) for stream in streams]

    targets = tuple(("*",) if list(args.targets or []) == ["all"] else args.targets or backbone.targets)
    started = time.perf_counter()
    result = train_grid(backbone.model, x, y, combos, targets=targets, alpha=args.alpha,
                        steps=args.steps if args.steps is not None else DEFAULTS["layers"]["steps"],
                        keep_x=keep_x, batches=batches, val_x=val_x, world=world,
                        progress=not (args.json or args.quiet))
    seconds = time.perf_counter() - started
    if world is not None and world.rank != 0:
        return None
    folder = Path(args.out) if args.out else Path("runs") / f"{backbone.name}-{slug(backbone.classes[label])}-grid"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (combo, lora, cfg, history) in enumerate(zip(combos, result["loras"], result["cfgs"],
                                                        result["histories"])):
        last = history["loss"][-1] if history["loss"] else None
        ok = last is not None and math.isfinite(last)
        name = grid_name(combo, keep=bool(keep_paths))
        save(folder / name, lora, cfg, metadata={
            "backbone": backbone.name, "mode": "layers", "label": str(label), "label_name": backbone.classes[label],
            "weights": str(args.weights), "seed": str(combo["seed"]), "lr": f"{combo['lr']:g}",
            **({"keep_images": str(len(keep_paths)), "keep_weight": f"{combo['keep_weight']:g}"} if keep_paths else {}),
            **({"augment": "true"} if args.augment else {})})
        hits = int((result["logits"][k].argmax(-1) == label).sum())
        kept = None if keep_x is None else \
            int((result["keep_logits"][k].argmax(-1) == result["keep_before"].argmax(-1)).sum())
        val = None if val_x is None else float((result["val_logits"][k].argmax(-1) == val_y).float().mean())
        rows.append({**combo, "loss": last if ok else None, "hits": f"{hits}/{len(paths)}",
                     "kept": None if kept is None else f"{kept}/{len(keep_paths)}", "val": val if ok else None,
                     "file": str(folder / name), "history": history["loss"]})
    scored = [i for i, r in enumerate(rows) if r["val"] is not None]
    best = max(scored, key=lambda i: (rows[i]["val"], -rows[i]["loss"])) if scored else None
    for i, r in enumerate(rows):
        r["best"] = i == best
    return {"rows": rows, "best": best, "folder": str(folder), "seconds": seconds, "backbone": backbone.name,
            "label_name": backbone.classes[label], "processes": 1 if world is None else world.size}
