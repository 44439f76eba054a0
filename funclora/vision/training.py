"""What `funclora train` does, as functions a Python user can call: `train(TrainOptions(...))`.

Two kinds of input:

- a flat folder of images (or one image): every image is taught one ImageNet `label`, in one
  full batch held in memory, `steps` times (`train_images`: the goldfish tutorial);
- a class-folder dataset (`funclora.vision.data`): minibatches in a seeded order for `epochs`,
  with validation, the frozen prefix's features on disk, checkpoints and bitwise resume
  (`train_dataset`). Folder names that are ImageNet classes teach those labels through the
  ImageNet head; `head="new"` trains a fresh head with one output per class folder instead.

Under torchrun (`opts.world`, `funclora.distributed.init()`) both train data-parallel: each process
its share of every (global) batch, one all-reduce a step; rank 0 alone prints and writes.

>>> opts = TrainOptions("data/goldfish", backbone="efficientnet_lite0", steps=3, quiet=True)
>>> opts.head, opts.batch_size, opts.device
('imagenet', 32, 'auto')
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from ..apply import functional
from ..cache import split
from ..checkpoint import check_settings, latest_checkpoint, load_checkpoint, save_checkpoint
from ..config import ALL, LoraConfig
from ..head import headless, new_head, with_head
from ..io import check_output, claim_output, save_or_keep
from ..lora import init_lora, merge
from ..optim import adam
from ..params import count, freeze, summary
from ..train import fit, fit_batches
from .guard import check_losses, check_rank_fits, check_seed_rank

__all__ = ["TrainOptions", "DEFAULTS", "DATASET_DEFAULTS", "DEFAULT_KEEP", "train", "train_images",
           "train_dataset", "resolve_device", "resolve_dtype", "head_name"]

# The drawn keep set (non-goldfish in the goldfish's styles), package data so an installed wheel has it too.
DEFAULT_KEEP = Path(__file__).resolve().parent / "keep"
DEFAULTS = {
    # Adam on the classifier head: 5/5 drawn goldfish on efficientnet_lite0 from step ~8, so 25
    # steps leave a wide margin; on cached features (funclora.split) they take ~1.5 s on 2 CPU cores.
    # keep_weight: λ of the keep set, chosen on a tuning set of drawings (scripts/make_keep.py --dev),
    # never on the held-out set the README reports (scripts/specificity.py).
    "layers": {"rank": 8, "lr": 1e-2, "steps": 25, "keep_weight": 3.0},
    # SGD on the tutorial's randn init: see funclora.vision.seed for why the learning rate is so small.
    # The keep set is off unless asked for (--keep); with it, λ = keep_weight.
    "seed": {"rank": 8, "lr": 1e-5, "steps": 30, "keep_weight": 10.0},
}
DATASET_DEFAULTS = {"rank": 8, "lr": 1e-3, "epochs": 3}
"""Class-folder datasets: Adam at 1e-3, 3 epochs (see the README's Fashion-MNIST table)."""


@dataclasses.dataclass
class TrainOptions:
    """The settings of one training run: the `funclora train` flags, with the same names and defaults."""

    images: str | Path
    backbone: str = "vgg19"
    weights: str = "imagenet"
    fallback: str | None = None
    label: str = "goldfish"
    mode: str = "layers"
    targets: Sequence[str] | None = None
    rank: int | None = None
    alpha: float | None = None
    steps: int | None = None
    lr: float | None = None
    seed: int = 0
    out: Path | None = None
    keep: str | None = None
    keep_weight: float | None = None
    augment: bool = False
    compile: bool = False
    report: Path | None = None
    quiet: bool = False
    head: str = "imagenet"
    epochs: int | None = None
    batch_size: int = 32
    workers: int = 0
    val: Path | None = None
    val_split: float | None = None
    cache: str | Path | None = None
    checkpoint: Path | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    device: str = "auto"
    dtype: str = "float32"
    world: Any = None  # funclora.distributed.World under torchrun: data-parallel, rank 0 writes
    force: bool = False
    strict: bool = False
    saved: Path | None = None  # set once the adapter is written (an interruption after it must say so)


def train(opts: TrainOptions) -> dict:
    """Train as `funclora train` does and save the adapter; return what the command prints.

    A folder of class sub-folders goes to `train_dataset`, anything else to `train_images`.
    """
    if opts.world is not None and opts.world.rank != 0:
        return _train(opts, lambda out: None)  # under torchrun rank 0 alone writes, so it alone claims --out
    if opts.out is not None:
        check_output(opts.out, force=opts.force)  # before the work, not after it
    with contextlib.ExitStack() as held:
        claim = functools.partial(claim_output, held=held, force=opts.force)
        return _train(opts, claim)


def _train(opts: TrainOptions, claim: Callable[[Path], None]) -> dict:
    from .data import is_class_folder

    if is_class_folder(opts.images):
        return train_dataset(opts, claim)
    dataset_only = {"--head new": opts.head != "imagenet", "--epochs": opts.epochs is not None,
                    "--val": opts.val is not None, "--val-split": opts.val_split is not None,
                    "--checkpoint": opts.checkpoint is not None, "--resume": opts.resume}
    asked = [flag for flag, on in dataset_only.items() if on]
    if asked:
        raise ValueError(f"{', '.join(asked)}: for class-folder datasets (IMAGES_DIR/<class>/*.png); "
                         f"{opts.images} is a flat folder of images, taught one --label")
    return train_images(opts, claim)


# ------------------------------------------------------------------------- devices and dtypes ---

def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda if available, else cpu; "cuda"/"mps" must be present (ValueError otherwise)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: no Apple MPS device is available here (use --device cpu or auto)")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or mps")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype | None:
    """None for float32 (no autocast); torch.bfloat16 for "bfloat16" (the frozen base under autocast)."""
    name = (name or "float32").strip().lower()
    if name in ("float32", "fp32"):
        return None
    if name in ("bfloat16", "bf16"):
        return torch.bfloat16
    raise ValueError(f"--dtype {name!r}: expected float32 or bfloat16")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A context that runs matmuls and convolutions in `dtype` (nothing for float32)."""
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def head_name(model: nn.Module) -> str:
    """The classifier's last nn.Linear: what `--head new` replaces."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to replace with a new head")
    return linears[-1]


# --------------------------------------------------------------------------- flat image folder ---

def _checked(opts: TrainOptions) -> Callable[[Path], None]:
    """The claim on --out when no lock is held (train_images/train_dataset called directly)."""
    return lambda out: check_output(out, force=opts.force)


def train_images(opts: TrainOptions, claim: Callable[[Path], None] | None = None) -> dict:
    """Teach every image of a flat folder the ImageNet label `opts.label` (full batch, `steps` times).
    `claim(out)` checks (and locks) the output before training."""
    from ..keep import keep_term
    from .backbones import resolve_label
    from .images import list_images, load_batch
    from .seed import apply_seed, seed_config, train_seed

    settings = {k: v if getattr(opts, k) is None else getattr(opts, k) for k, v in DEFAULTS[opts.mode].items()}
    if opts.mode == "seed" and (opts.targets or opts.alpha is not None):
        raise ValueError("--targets and --alpha apply to --mode layers; --mode seed adapts the input image")
    if opts.mode == "seed" and (opts.augment or opts.compile):
        raise ValueError("--augment and --compile apply to --mode layers; --mode seed trains on "
                         "the base's logits of fixed images")
    if opts.report is not None:
        check_report(opts.report)  # before training, not after it
    paths = list_images([opts.images])  # a wrong folder fails before the backbone loads
    # --mode seed keeps the tutorial's plain loss unless a keep set is asked for.
    keep_paths = _keep_paths(opts) if opts.mode == "layers" or keep_asked(opts) else []
    backbone = load_or_fall_back(opts)
    label = resolve_label(opts.label, backbone.classes)
    out = Path(opts.out) if opts.out else Path("runs") / f"{backbone.name}-{slug(backbone.classes[label])}" \
        f"{'-seed' if opts.mode == 'seed' else ''}.safetensors"
    (claim or _checked(opts))(out)
    x = load_batch(paths, backbone.preprocess)
    y = torch.full((len(paths),), label)
    model, base = backbone.model, freeze(backbone.model)
    progress = not opts.quiet

    keep_weight = _keep_weight(opts)
    keep = None  # {"x": images, "before": base logits, "after": adapted logits}

    started = time.perf_counter()
    if opts.mode == "layers":
        targets = tuple(ALL if list(opts.targets or []) == ["all"] else opts.targets or backbone.targets)
        cfg = LoraConfig(rank=settings["rank"], alpha=opts.alpha, targets=targets)
        check_rank_fits(model, cfg)
        f = functional(model, cfg)
        # The frozen layers (and the head's W x + b) give the same features every step: run them
        # once (funclora.split). --augment's images change every step, so they take the whole f.
        prefix, suffix = split(model, cfg)
        feats = prefix(base, x)
        with torch.no_grad():
            before = suffix(base, None, feats)
        run, batches = suffix, feats
        extra = None
        if keep_paths:
            keep = {"x": load_batch(keep_paths, backbone.preprocess)}
            keep_feats = prefix(base, keep["x"])  # the keep set never changes
            with torch.no_grad():  # the base's answers on the keep set: once, not per step
                keep["before"] = suffix(base, None, keep_feats)
            extra = keep_term(suffix, base, keep_feats, keep_weight, target=keep["before"])
        if opts.augment:
            from .augment import augmented_batches
            from .images import load_image

            run, batches = f, augmented_batches([load_image(p) for p in paths], backbone.preprocess, seed=opts.seed)
        lora = init_lora(model, cfg, seed=opts.seed)
        world = opts.world
        if world is not None and world.size > 1:  # each process its share of the batch, one all-reduce a step
            from .. import distributed

            if opts.compile:
                raise ValueError("--compile: not under torchrun (the data-parallel step is not compiled)")
            lora, history = distributed.fit(run, base, distributed.broadcast(lora, world), batches, y,
                                            opt=adam(settings["lr"]), steps=settings["steps"], extra=extra,
                                            progress=progress, terms=True, world=world)
            if world.rank != 0:  # rank 0 alone evaluates, writes and prints
                return None
        else:
            lora, history = fit(run, base, lora, batches, y, opt=adam(settings["lr"]), steps=settings["steps"],
                                extra=extra, progress=progress, terms=True, compile=opts.compile)
        with torch.no_grad():  # with the merged weights, as `predict` runs it (and merge checks they are finite)
            merged = merge(base, lora, cfg)
            after = f(merged, None, x)
            if keep:
                keep["after"] = f(merged, None, keep["x"])
        history = {"loss": history["loss"], "train": history["train"],
                   **({"keep": history["extra"]} if keep else {})}
    else:
        if opts.world is not None and opts.world.size > 1:
            raise ValueError("--mode seed runs in one process (not under torchrun)")
        with torch.no_grad():
            before = model(x)
            if keep_paths:
                keep = {"x": load_batch(keep_paths, backbone.preprocess)}
                keep["before"] = model(keep["x"])
        check_seed_rank(settings["rank"], x[0].numel(), before.shape[1])
        lora, history = train_seed(before, x, y, rank=settings["rank"], lr=settings["lr"],
                                   steps=settings["steps"], seed=opts.seed, progress=progress, terms=True,
                                   keep=(keep["x"], keep["before"]) if keep else None, keep_weight=keep_weight)
        history = {"loss": history["loss"], "train": history["train"], **({"keep": history["extra"]} if keep else {})}
        cfg = seed_config(lora)
        with torch.no_grad():
            after = apply_seed(before, lora, x)
            if keep:
                keep["after"] = apply_seed(keep["before"], lora, keep["x"])
    seconds = time.perf_counter() - started
    if not torch.isfinite(after).all():
        raise ValueError(f"training diverged (non-finite outputs); lower --lr (was {settings['lr']:g})")
    check_losses(history["loss"], settings["lr"], opts.strict)

    out.parent.mkdir(parents=True, exist_ok=True)
    save_or_keep(out, lora, cfg, metadata={
        "backbone": backbone.name, "mode": opts.mode, "label": str(label),
        "label_name": backbone.classes[label], "weights": str(opts.weights), "seed": str(opts.seed),
        **({"keep_images": str(len(keep_paths)), "keep_weight": f"{keep_weight:g}"} if keep else {}),
        **({"augment": "true"} if opts.augment else {}),
    })
    opts.saved = out
    kept = None if keep is None else {
        "images": len(keep_paths), "weight": keep_weight,
        "kept_top1": int((keep["before"].argmax(-1) == keep["after"].argmax(-1)).sum()),
        "as_label": int((keep["after"].argmax(-1) == label).sum()),
    }
    if opts.report:
        _write_report(opts, backbone, label, history, paths, before, after, keep_paths, keep, {
            "backbone": backbone.name, "weights": str(opts.weights), "mode": opts.mode,
            "steps": settings["steps"], "lr": settings["lr"], "rank": settings["rank"], "seed": opts.seed,
            "augment": bool(opts.augment), "keep": kept, "adapter": str(out), "seconds": round(seconds, 2),
        })
    return {"kind": "images", "backbone": backbone.name, "classes": backbone.classes, "label": label,
            "paths": paths, "before": before, "after": after, "history": history, "kept": kept,
            "keep_weight": keep_weight, "adapter": out, "seconds": seconds, "summary": summary(model, lora),
            "settings": settings}


def keep_asked(opts: TrainOptions) -> bool:
    """Whether the options asked for a keep set (the default one is silently skipped where unused)."""
    return (opts.keep is not None and str(opts.keep).strip().lower() != "none") or opts.keep_weight is not None


def _keep_paths(opts: TrainOptions) -> list[Path]:
    from .images import list_images

    if opts.keep is None:
        return list_images([DEFAULT_KEEP]) if DEFAULT_KEEP.is_dir() else []
    if str(opts.keep).strip().lower() == "none":
        return []
    try:
        return list_images([opts.keep])
    except ValueError as error:
        raise ValueError(f"--keep: {error}") from None


def _keep_weight(opts: TrainOptions) -> float:
    return DEFAULTS[opts.mode]["keep_weight"] if opts.keep_weight is None else opts.keep_weight


def check_report(folder: Path) -> None:
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ValueError(f"--report {folder}: is a file (expected a folder to write the report into)")
    try:
        import matplotlib  # noqa: F401  (imported only when a report is asked for)
    except ImportError as error:
        raise RuntimeError(f"--report needs matplotlib ({error}): pip install 'funclora[plot]'") from None


def _write_report(opts, backbone, label, history, paths, before, after, keep_paths, keep, summary) -> None:
    from .report import image_row, write_report

    rows = [image_row(p, b, a, "train") for p, b, a in zip(paths, before.softmax(-1), after.softmax(-1))]
    if keep:
        rows += [image_row(p, b, a, "keep")
                 for p, b, a in zip(keep_paths, keep["before"].softmax(-1), keep["after"].softmax(-1))]
    write_report(opts.report, history=history, rows=rows, target=label, classes=backbone.classes,
                 summary=summary)


def load_backbone(name: str, weights: str, seed: int):
    from .backbones import load_backbone as load

    torch.manual_seed(seed)  # --weights none draws the backbone from torch's RNG: make it repeatable
    return load(name, weights)


def load_or_fall_back(opts: TrainOptions):
    """The backbone; if its published weights cannot be fetched and `opts.fallback` names another
    backbone, that one instead, said in one line on stderr (so `make goldfish` works offline)."""
    from .backbones import WeightsUnavailable

    try:
        return load_backbone(opts.backbone, opts.weights, opts.seed)
    except WeightsUnavailable as error:
        if opts.fallback is None or opts.fallback == opts.backbone:
            raise
        reason = " ".join(error.reason.split())
        print(f"funclora: {opts.backbone}'s ImageNet weights are unavailable ({reason}); "
              f"running the same experiment on {opts.fallback} (--fallback)", file=sys.stderr)
        return load_backbone(opts.fallback, "imagenet", opts.seed)


def slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "label"


# ---------------------------------------------------------------------------- class folders ---

def train_dataset(opts: TrainOptions, claim: Callable[[Path], None] | None = None) -> dict:
    """Train on a class-folder dataset with minibatches; save the adapter (the best on val, if any).

    Returns {"kind": "dataset", "adapter", "classes", "images", "steps", "epochs": [per-epoch
    {"epoch", "loss", "val"}], "val": {"top1", "top5"} of the saved adapter or None, "loss":
    [per step], "trainable", "seconds", "cached": features read from disk or None}.
    """
    from .augment import AugmentedFiles
    from .data import batches_per_epoch, class_folders, loader, split_val, to_device

    _check_dataset_options(opts)
    # Under torchrun: every rank trains on its share of each global batch; rank 0 alone speaks and writes.
    world = opts.world if opts.world is not None and opts.world.size > 1 else None
    lead = world is None or world.rank == 0
    if world is not None and opts.compile:
        raise ValueError("--compile: not under torchrun (the data-parallel step is not compiled)")
    out = Path(opts.out) if opts.out else Path("runs") / f"{opts.backbone}-{slug(Path(opts.images).name)}.safetensors"
    (claim or _checked(opts))(out)
    device, dtype = world.device if world else resolve_device(opts.device), resolve_dtype(opts.dtype)
    paths, labels, classes = class_folders(opts.images)
    val_paths: list[Path] = []
    val_labels: list[int] = []
    if opts.val is not None:
        val_paths, val_names, val_classes = class_folders(opts.val)
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise ValueError(f"--val {opts.val}: class folders {unknown[:3]} are not classes of {opts.images} "
                             f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
        val_labels = [classes.index(val_classes[i]) for i in val_names]
    elif opts.val_split is not None:
        train_idx, val_idx = split_val(labels, opts.val_split, opts.seed)
        val_paths, val_labels = [paths[i] for i in val_idx], [labels[i] for i in val_idx]
        paths, labels = [paths[i] for i in train_idx], [labels[i] for i in train_idx]
    progress = not opts.quiet and lead
    say = (lambda text: tqdm.write(text, file=sys.stderr)) if progress else (lambda text: None)
    note = (lambda text: print(text, file=sys.stderr)) if lead else (lambda text: None)  # shown even with --quiet

    backbone = load_or_fall_back(opts)
    model = backbone.model.to(device)
    new = opts.head == "new"
    head = head_name(model)
    if new:
        body = headless(model, head)
        targets = _targets(opts.targets, None)
        names = list(classes)
    else:
        body = model
        targets = _targets(opts.targets, backbone.targets)
        imagenet = _imagenet_labels(classes, backbone.classes, opts.images)
        labels, val_labels = [imagenet[i] for i in labels], [imagenet[i] for i in val_labels]
        names = list(classes)
    rank = opts.rank or DATASET_DEFAULTS["rank"]
    lr = opts.lr or DATASET_DEFAULTS["lr"]
    base = freeze(body)
    cfg = LoraConfig(rank=rank, alpha=opts.alpha, targets=targets or (head,))
    if targets:
        check_rank_fits(body, cfg)
    lora = init_lora(body, cfg, seed=opts.seed) if targets else {}
    params: dict[str, Any] = {"lora": lora}
    if new:
        params["head"] = {k: v.to(device) for k, v in
                          new_head(dict(model.named_modules())[head].in_features, len(classes), seed=opts.seed).items()}

    # The frozen prefix, and what the training step runs on its features.
    if targets:
        prefix, suffix = split(body, cfg)
    else:  # head only: the whole body is frozen, its output is the feature
        def prefix(base, x):
            with torch.no_grad():
                return (functional_call(body, dict(base), (x,)),)

        def suffix(base, lora, feats):
            return feats[0]
    full = functional(body, cfg) if targets else (lambda base, lora, x: functional_call(body, dict(base), (x,)))
    cached = not opts.augment and str(opts.cache).strip().lower() != "none"
    if cached and _features_outgrow_images(prefix, base, backbone.preprocess, paths[0], device):
        note("features: the adapters start at the input, so the frozen prefix's features are larger than the "
            "images; nothing is cached on disk")
        cached = False
    if opts.augment:
        note("--augment: the images change at every step, so no features are cached (each step runs the whole model)")

    def with_precision(g):
        def run(base, params, x):
            with autocast(device, dtype):
                out = g(base, params, x)
            return out.float()
        return run

    f_train = with_precision(with_head(suffix if cached else full))
    # Data: feature files (cached), or images read per batch.
    data_hashes = None
    if cached:
        from .features import FeatureFiles, cached_features, default_cache, setting_key, tensors_hash

        setting = {"backbone": backbone.name, "weights": tensors_hash(base), "preprocess": repr(backbone.preprocess),
                   "targets": list(cfg.targets) if targets else [], "head": opts.head, "device": device.type,
                   "dtype": str(dtype), "torch": torch.__version__.split("+")[0], "format": 1}
        key = setting_key(**setting)
        cache_dir = Path(opts.cache) if opts.cache else default_cache()

        def run_prefix(x):
            with autocast(device, dtype):
                return tuple(t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                             for t in prefix(base, x))
        began = time.perf_counter()
        files, made = cached_features(paths + val_paths, run_prefix, backbone.preprocess, cache_dir, key,
                                      setting=setting, batch_size=opts.batch_size, device=device, progress=progress,
                                      world=world)
        feature_seconds = time.perf_counter() - began
        data_hashes = [f.stem for f in files]
        train_data = FeatureFiles(files[:len(paths)], labels)
        val_data = FeatureFiles(files[len(paths):], val_labels) if val_paths else None
        cache_note = {"folder": str(cache_dir / key), "computed": made, "reused": len(files) - made,
                      "seconds": round(feature_seconds, 3)}
    else:
        from .data import ImageFiles

        train_data = AugmentedFiles(paths, labels, backbone.preprocess, opts.seed) if opts.augment else \
            ImageFiles(paths, labels, backbone.preprocess)
        val_data = ImageFiles(val_paths, val_labels, backbone.preprocess) if val_paths else None
        cache_note = None

    per_epoch = batches_per_epoch(len(train_data), opts.batch_size)
    if opts.steps is not None:
        total = opts.steps
        epochs = max(1, math.ceil(total / per_epoch)) if total else 0
    else:
        epochs = opts.epochs if opts.epochs is not None else DATASET_DEFAULTS["epochs"]
        total = epochs * per_epoch
    # No number of processes among them: a checkpoint holds global state alone (the adapters, Adam's
    # state, the losses of the global batches), so a run resumes on any number of processes.
    settings = {
        "data": _fingerprint(paths, labels, data_hashes), "val": _fingerprint(val_paths, val_labels, None),
        "classes": json.dumps(names), "backbone": backbone.name, "weights": str(opts.weights),
        "head": opts.head, "targets": json.dumps(list(targets)), "rank": str(rank), "alpha": str(opts.alpha),
        "lr": repr(lr), "batch_size": str(opts.batch_size), "steps": str(total), "seed": str(opts.seed),
        "augment": str(bool(opts.augment)), "cached": str(cached), "device": device.type, "dtype": str(dtype),
    }
    opt = adam(lr)
    state = None
    done, losses, log = 0, [], []  # steps done, loss per step, per-epoch records
    best: dict | None = None  # {"params", "val", "epoch"}
    if opts.resume:
        found = latest_checkpoint(opts.checkpoint)
        if found is None:
            raise ValueError(f"--resume: no checkpoint in {opts.checkpoint} (expected step-*.safetensors "
                             f"written by --checkpoint {opts.checkpoint})")
        tree, info = load_checkpoint(found, device=device)
        check_settings(info["settings"], settings, found)
        params, state, losses, log = tree["params"], tree["state"], tree["losses"], tree["log"]
        best = tree["best"]
        torch.set_rng_state(tree["rng"]["torch"].cpu())
        done = info["step"]
        note(f"resuming from {found} (step {done} of {total})")
    step = None
    if world is not None:  # rank 0's adapters (and new head) everywhere; one bucket a step: gradients and loss
        from .. import distributed

        params = distributed.broadcast(params, world)
        parallel = distributed.make_step(f_train, opt, world=world)
        step = lambda lora, state, base, x, y: parallel(lora, state, base, x, y, shares[-1])  # noqa: E731

    def checkpoint(step: int, params, state) -> None:
        if not lead:
            return
        tree = {"params": params, "state": state, "losses": list(losses), "log": list(log), "best": best,
                "rng": {"torch": torch.get_rng_state()}}
        save_checkpoint(opts.checkpoint, step, tree, settings=settings)

    def evaluate(params) -> dict | None:
        if val_data is None:
            return None
        from .evaluate import dataset_accuracy

        return dataset_accuracy(f_train, base, params, val_data, batch_size=opts.batch_size, workers=opts.workers,
                                device=device, world=world)

    def finish_epoch(epoch: int, params) -> None:
        nonlocal best
        val = evaluate(params)
        steps = losses[epoch * per_epoch:(epoch + 1) * per_epoch]
        log.append({"epoch": epoch + 1, "loss": sum(steps) / len(steps) if steps else None, "val": val,
                    "seconds": round(spent.get(epoch, 0.0), 4)})
        if val is not None and (best is None or val["top1"] > best["val"]["top1"]):
            best = {"params": params, "val": val, "epoch": epoch + 1}
        say(f"epoch {epoch + 1}/{epochs}: loss {log[-1]['loss']:.4f}"
            + (f", val top-1 {100 * val['top1']:.1f}%" if val else ""))

    started = time.perf_counter()
    epoch_bar = tqdm(total=epochs, initial=len(log), desc="epochs", unit="epoch", disable=not progress or epochs < 2,
                     dynamic_ncols=True, position=0)
    image_bar = tqdm(total=len(train_data) * epochs if opts.steps is None else total * opts.batch_size,
                     initial=min(done * opts.batch_size, len(train_data) * epochs), desc="training", unit="img",
                     disable=not progress, leave=False, dynamic_ncols=True, position=1)
    sizes: list[int] = []  # examples in each global batch
    shares: list[float] = []  # this rank's fraction of each global batch
    spent: dict[int, float] = {}  # training seconds per epoch

    def sized(batches, fractions):
        for (x, y), share in zip(batches, fractions):
            sizes.append(round(len(y) / share) if share else 0)  # for rank 0's bar (its share is never empty)
            shares.append(share)
            yield to_device(x, device), y.to(device)

    def on_step(step: int, params, state, history) -> None:
        losses.append(history["loss"][-1])
        image_bar.update(sizes[-1])
        image_bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        if opts.checkpoint is not None and opts.checkpoint_every and step % opts.checkpoint_every == 0:
            checkpoint(step, params, state)

    for epoch in range(done // per_epoch if per_epoch else 0, epochs):
        while len(log) < min(done // per_epoch, epochs):  # an epoch ended at a checkpoint: finish it
            finish_epoch(len(log), params)
            epoch_bar.update(1)
        if done >= total:
            break
        start = done - epoch * per_epoch
        count_here = min(per_epoch - start, total - done)
        if isinstance(train_data, AugmentedFiles):
            train_data.epoch = epoch
        batches = loader(train_data, opts.batch_size, opts.seed, epoch, start, workers=opts.workers,
                         rank=world.rank if world else 0, world=world.size if world else 1)
        began = time.perf_counter()
        params, state, _ = fit_batches(f_train, base, params,
                                       sized(itertools.islice(batches, count_here), batches.batch_sampler.shares()),
                                       opt=opt, state=state, start=done, on_step=on_step, progress=False,
                                       total=count_here, compile=opts.compile, step=step)
        spent[epoch] = spent.get(epoch, 0.0) + time.perf_counter() - began  # training alone, not val
        done += count_here
        if done == (epoch + 1) * per_epoch or done == total:
            finish_epoch(epoch, params)
            epoch_bar.update(1)
    while len(log) < epochs and done >= total and len(log) * per_epoch < done:
        finish_epoch(len(log), params)
    image_bar.close()
    epoch_bar.close()
    seconds = time.perf_counter() - started
    if opts.checkpoint is not None:
        checkpoint(done, params, state)

    if not lead:
        return None
    chosen = best["params"] if best is not None else params
    check_losses(losses, lr, opts.strict)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_or_keep(out, chosen["lora"], cfg, metadata={
        "backbone": backbone.name, "mode": "layers", "weights": str(opts.weights), "seed": str(opts.seed),
        "head": opts.head, "head_module": head, "classes": json.dumps(names),
        **({} if new else {"labels": json.dumps([int(i) for i in imagenet])}),
        "dtype": opts.dtype, **({"augment": "true"} if opts.augment else {}),
    }, modules={head: chosen["head"]} if new else None)
    opts.saved = out
    return {"kind": "dataset", "adapter": out, "backbone": backbone.name, "classes": names, "head": opts.head,
            "images": len(paths), "val_images": len(val_paths), "steps": done, "epochs": log,
            "val": best["val"] if best is not None else None, "best_epoch": best["epoch"] if best else None,
            "loss": losses, "trainable": count(chosen), "seconds": seconds, "cached": cache_note,
            "device": str(device)}


def _features_outgrow_images(prefix, base, preprocess, path: Path, device) -> bool:
    """Whether one image's prefix features hold more numbers than the image itself (nothing to gain)."""
    from .images import load_batch

    x = load_batch([path], preprocess).to(device)
    feats = prefix(base, x)
    return sum(t.numel() for t in feats if isinstance(t, torch.Tensor)) > x.numel()


def _check_dataset_options(opts: TrainOptions) -> None:
    if opts.mode != "layers":
        raise ValueError("--mode seed: for a flat folder of images; a class-folder dataset trains layers")
    if opts.head not in ("imagenet", "new"):
        raise ValueError(f"--head {opts.head!r}: expected imagenet or new")
    if opts.report is not None or keep_asked(opts):
        raise ValueError("--report, --keep and --keep-weight: for a flat folder of images taught one --label")
    if opts.val is not None and opts.val_split is not None:
        raise ValueError("--val and --val-split: pass one of them")
    if (opts.checkpoint_every or opts.resume) and opts.checkpoint is None:
        raise ValueError("--checkpoint-every and --resume need --checkpoint DIR")
    if isinstance(opts.batch_size, bool) or not isinstance(opts.batch_size, int) or opts.batch_size < 1:
        raise ValueError(f"--batch-size must be an integer >= 1, got {opts.batch_size!r}")


def _targets(asked: Sequence[str] | None, default: Sequence[str] | None) -> tuple[str, ...]:
    if asked is None:
        return tuple(default or ())
    if list(asked) == ["all"]:
        return ALL
    if list(asked) == ["none"]:
        return ()
    return tuple(asked)


def _imagenet_labels(folders: Sequence[str], classes: Sequence[str], root) -> list[int]:
    from .backbones import resolve_label

    labels = []
    for name in folders:
        try:
            labels.append(resolve_label(name, classes))
        except ValueError as error:
            raise ValueError(f"{Path(root) / name}: class folder {name!r} is not an ImageNet class ({error}); "
                             f"pass --head new to train a new head with one output per class folder") from None
    return labels


def _fingerprint(paths: Sequence[Path], labels: Sequence[int], hashes: Sequence[str] | None) -> str:
    """sha256 over each image's content hash and label, in order: what the data was."""
    from .features import content_hash

    digest = hashlib.sha256()
    for i, (path, label) in enumerate(zip(paths, labels)):
        digest.update(f"{hashes[i] if hashes else content_hash(path)}:{label};".encode())
    return f"{len(paths)} images, sha256 {digest.hexdigest()[:16]}"

