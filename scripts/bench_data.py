"""Fashion-MNIST on EfficientNet-Lite0: a new head alone vs LoRA + a new head, through `funclora train`.

    apt-get install dataset-fashion-mnist            # files under /usr/share/datasets/fashion-mnist
    python scripts/bench_data.py                     # writes docs/bench_data.json, prints a table

Exports the first --train training images and the first --test test images as PNG class folders
(28x28 greyscale; the backbone's preprocessing resizes them to 224x224), then runs each setting
as its own `funclora train ... --head new --val TEST --json` process under `/usr/bin/time -v`
(peak memory = its maximum resident set size). Test accuracy is the last epoch's top-1 on the test
folder (no selection on it). Also measured, side by side in one run: an epoch of the head on
features read from disk vs recomputing them (--cache none), and peak memory with 10x the images.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
LITE0_PARAMS = 4_652_008  # parameters of EfficientNet-Lite0 (with its 1000-class head)
LAST_BLOCKS = ("_blocks.14.*", "_blocks.15.*", "_conv_head")


def read_idx(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's idx files (gzip) -> (N, 28, 28) uint8 images and (N,) labels."""
    with gzip.open(images) as fh:
        pixels = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels) as fh:
        classes = np.frombuffer(fh.read(), np.uint8, offset=8)
    return pixels, classes


def export(split: str, n: int, folder: Path, source: Path = SOURCE) -> Path:
    """The first n images of `split` ("train" or "t10k") as folder/<class>/<index>.png."""
    if (folder / ".done").exists() and (folder / ".done").read_text() == str(n):
        return folder
    if not (source / f"{split}-images-idx3-ubyte.gz").exists():
        sys.exit(f"{source}: no Fashion-MNIST files (apt-get install dataset-fashion-mnist)")
    pixels, labels = read_idx(source / f"{split}-images-idx3-ubyte.gz", source / f"{split}-labels-idx1-ubyte.gz")
    for i in range(n):
        target = folder / CLASSES[labels[i]]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(target / f"{i:05d}.png")
    (folder / ".done").write_text(str(n))
    return folder


def train(name: str, data: Path, work: Path, *args: str, val: Path | None = None, timeout: int = 3600) -> dict:
    """One `funclora train` process under /usr/bin/time -v: its JSON result, peak RSS and wall time."""
    out = work / f"{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()}.safetensors"
    command = [sys.executable, "-m", "funclora", "train", str(data), "--backbone", "efficientnet_lite0",
               "--head", "new", "--json", "--quiet", "--out", str(out), *args,
               *(["--val", str(val)] if val else [])]
    print("$", " ".join(command[1:]), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    result.update(name=name, peak_rss_mb=round(rss / 1024, 1), wall_s=round(wall, 1),
                  adapter_bytes=out.stat().st_size, command=" ".join(command[1:]))
    return result


def row(result: dict) -> dict:
    history = result["history"]
    last = history[-1]["val"]
    train_seconds = [e["seconds"] for e in history]
    return {"setting": result["name"], "test_top1": last["top1"] if last else None,
            "trainable": result["trainable"], "trainable_pct": 100 * result["trainable"] / LITE0_PARAMS,
            "adapter_kb": result["adapter_bytes"] / 1024, "epochs": len(history),
            "s_per_epoch": sum(train_seconds) / len(train_seconds), "peak_rss_mb": result["peak_rss_mb"],
            "images": result["images"], "features_s": (result["cached"] or {}).get("seconds"),
            "test_top1_per_epoch": [e["val"]["top1"] if e["val"] else None for e in history]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=3000, help="training images (default 3000)")
    parser.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the head and last-blocks runs")
    parser.add_argument("--lr", default="1e-3", help="Adam learning rate of every run")
    parser.add_argument("--targets", nargs="+", default=list(LAST_BLOCKS),
                        help=f"the last-blocks run's LoRA targets (default {' '.join(LAST_BLOCKS)})")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of the adapters (default 8)")
    parser.add_argument("--all-train", type=int, default=300,
                        help="training images of the all-layers run (a subset: it runs the whole model every step)")
    parser.add_argument("--all-epochs", type=int, default=2)
    parser.add_argument("--skip-all", action="store_true", help="skip the all-layers run")
    parser.add_argument("--speedup", type=int, default=100,
                        help="training images of the features-on-disk vs recomputed epoch (default 100)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "fashion_mnist")
    parser.add_argument("--json-out", type=Path, default=ROOT / "docs" / "bench_data.json")
    parser.add_argument("--plot-only", action="store_true",
                        help="only draw docs/bench_data.png from the --json-out of an earlier run")
    args = parser.parse_args(argv)
    picture = args.json_out.with_suffix(".png")
    if args.plot_only:
        plot(json.loads(args.json_out.read_text()), picture)
        return 0
    work = args.work
    train_dir = export("train", args.train, work / f"train{args.train}")
    test_dir = export("t10k", args.test, work / f"test{args.test}")
    cache = work / "cache"
    common = ["--epochs", str(args.epochs), "--batch-size", "32", "--lr", args.lr, "--cache", str(cache)]
    results = {"commands": [], "rows": []}

    head = train("head only", train_dir, work, *common, val=test_dir)
    blocks = train(f"LoRA r{args.rank} on {' '.join(args.targets)} + head", train_dir, work, *common,
                   "--targets", *args.targets, "--rank", str(args.rank), val=test_dir)
    runs = [head, blocks]
    results["rows"] = [row(r) for r in runs]
    results["commands"] = [r["command"] for r in runs]
    save(results, args.json_out)
    # Features on disk vs recomputed, one epoch of the head each, side by side (the first --speedup
    # training images: their features are on disk already, from the head-only run).
    sub = export("train", args.speedup, work / f"train{args.speedup}")
    cached = train("epoch from disk", sub, work, "--epochs", "1", "--cache", str(cache))
    fresh = train("epoch recomputed", sub, work, "--epochs", "1", "--cache", "none")
    results["cache"] = {"images": args.speedup, "cached_s": cached["history"][0]["seconds"],
                        "recomputed_s": fresh["history"][0]["seconds"],
                        "speedup": fresh["history"][0]["seconds"] / cached["history"][0]["seconds"]}
    save(results, args.json_out)
    # Memory bounded by the batch: an epoch of the head on 1/10 of the images and on all of them
    # (features from disk, computed by the head-only run).
    tenth = export("train", args.train // 10, work / f"train{args.train // 10}")
    mem = [train(f"memory {n}", d, work, "--epochs", "1", "--cache", str(cache))
           for n, d in ((args.train // 10, tenth), (args.train, train_dir))]
    results["memory"] = {"images": [args.train // 10, args.train], "peak_rss_mb": [m["peak_rss_mb"] for m in mem],
                         "growth_pct": 100 * (mem[1]["peak_rss_mb"] / mem[0]["peak_rss_mb"] - 1)}
    results["commands"] += [r["command"] for r in (cached, fresh, *mem)]
    save(results, args.json_out)
    if not args.skip_all:  # last: the slowest run (the whole model every step, nothing cached)
        small = export("train", args.all_train, work / f"train{args.all_train}")
        runs.append(train(f"LoRA r{args.rank} all layers + head ({args.all_train} images)", small, work,
                          "--epochs", str(args.all_epochs), "--batch-size", "32", "--lr", args.lr,
                          "--targets", "all", "--rank", str(args.rank), "--cache", "none", val=test_dir,
                          timeout=7200))
        results["rows"].append(row(runs[-1]))
        results["commands"].append(runs[-1]["command"])
        save(results, args.json_out)
    plot(results, picture)
    print(table(results))
    return 0


def plot(results: dict, path: Path) -> None:
    """Test top-1 after each epoch, one line per setting: what the table's last column hides."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in results["rows"]:
        top1 = [100 * t for t in r.get("test_top1_per_epoch") or [] if t is not None]
        ax.plot(range(1, len(top1) + 1), top1, marker="o",
                label=f"{r['setting']} ({r['trainable']:,} trained)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fashion-MNIST on EfficientNet-Lite0 (scripts/bench_data.py)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: never over a line
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def table(results: dict) -> str:
    lines = ["| setting | test top-1 | trainable params | adapter file | s / epoch | peak memory |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["rows"]:
        lines.append(f"| {r['setting']} | {100 * r['test_top1']:.1f}% | {r['trainable']:,} ({r['trainable_pct']:.2f}%) "
                     f"| {r['adapter_kb']:.0f} KB | {r['s_per_epoch']:.1f} | {r['peak_rss_mb']:.0f} MB |")
    c, m = results.get("cache"), results.get("memory")
    if not (c and m):
        return "\n".join(lines)
    lines.append(f"\nhead, one epoch of {c['images']} images: {c['cached_s']:.2f} s from disk vs "
                 f"{c['recomputed_s']:.1f} s recomputed ({c['speedup']:.0f}x)")
    lines.append(f"peak memory, {m['images'][0]} vs {m['images'][1]} images: {m['peak_rss_mb'][0]:.0f} MB vs "
                 f"{m['peak_rss_mb'][1]:.0f} MB ({m['growth_pct']:+.1f}%)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
