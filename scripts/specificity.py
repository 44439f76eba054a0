"""Measure what a goldfish adapter calls goldfish among held-out drawings it never saw.

Trains with `funclora train data/goldfish --backbone efficientnet_lite0 [ARGS]` for each run
asked for, then predicts the held-out drawings of ``data/specificity/`` (``scripts/make_heldout.py``):
how many of the 20 non-goldfish become "goldfish" (top-1), and how many of the held-out goldfish
are called goldfish. Prints a Markdown table for the README.

    python scripts/specificity.py                                   # the README's runs
    python scripts/specificity.py --run "keep none=--keep none"     # any train arguments
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELDOUT = REPO / "data" / "specificity"
GOLDFISH = 1
# name -> extra `funclora train` arguments
RUNS = {
    "default (`--mode layers`)": "",
    "`--keep none`": "--keep none",
    "`--mode seed`": "--mode seed",
    "`--mode seed --keep`": "--mode seed --keep",
}


def cli(*argv: str) -> dict:
    """Run `funclora ARGV --json` in-process; its JSON answer."""
    from funclora.vision.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main([*argv, "--json"])
    if status != 0:
        raise SystemExit(f"funclora {' '.join(argv)} failed with status {status}")
    return json.loads(out.getvalue())


def measure(extra: str, heldout: Path = HELDOUT, images: Path = REPO / "data" / "goldfish") -> dict:
    """Train with `extra` arguments, then count goldfish among the held-out drawings."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter.safetensors"
        trained = cli("train", str(images), "--backbone", "efficientnet_lite0", "--out", str(adapter), "--quiet",
                      *shlex.split(extra))
        result = {"train": sum(r["after"]["top1"] == GOLDFISH for r in trained["images"]), "of": len(trained["images"])}
        for folder in ("not_goldfish", "goldfish"):
            answer = cli("predict", str(heldout / folder), "--adapter", str(adapter), "--top", "1")
            result[folder] = [(Path(i["path"]).stem, i["top"][0]["label"], i["top"][0]["p"]) for i in answer["images"]]
    return result


def row(name: str, result: dict) -> str:
    false = [(n, p) for n, label, p in result["not_goldfish"] if label == "goldfish"]
    kept = sum(label == "goldfish" for _, label, _ in result["goldfish"])
    which = ", ".join(f"{n} ({p:.2f})" for n, p in false) or "none"
    missed = ", ".join(f"{n}: {label}" for n, label, _ in result["goldfish"] if label != "goldfish") or "none"
    return (f"| {name} | {result['train']}/{result['of']} | **{len(false)}/{len(result['not_goldfish'])}** | "
            f"{which} | **{kept}/{len(result['goldfish'])}** | {missed} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", metavar="NAME=ARGS",
                    help="a run to measure: a name and extra `funclora train` arguments (repeatable; "
                         "default: the README's runs)")
    ap.add_argument("--heldout", type=Path, default=HELDOUT, help="folder with not_goldfish/ and goldfish/")
    args = ap.parse_args(argv)
    runs = dict(r.split("=", 1) for r in args.run) if args.run else RUNS
    print("| run | training goldfish | false goldfish | which (p) | held-out goldfish kept | missed |")
    print("|---|---|---|---|---|---|")
    for name, extra in runs.items():
        print(row(name, measure(extra, args.heldout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
