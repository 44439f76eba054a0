"""Pictures of a training run: the loss per step, and each image's top classes before and after.

`write_report(folder, ...)` writes three files:

    loss.png          the loss per step: the classification term, the keep term, their sum
    before_after.png  a row per image: its thumbnail and its top-3 classes before and after,
                      the target class highlighted
    report.json       the same numbers, for scripts

matplotlib is imported only here, when a report is asked for, and draws through its Agg canvas
directly (no pyplot: no global figure state, no display needed).

>>> import json, tempfile, torch
>>> from pathlib import Path
>>> from PIL import Image
>>> folder = Path(tempfile.mkdtemp())
>>> Image.new("RGB", (8, 8), "orange").save(folder / "fish.png")
>>> rows = [image_row(folder / "fish.png", torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.1, 0.8, 0.1]))]
>>> files = write_report(folder / "report", history={"train": [1.0, 0.5]}, rows=rows, target=1,
...                      classes=("tench", "goldfish", "shark"), summary={"steps": 2})
>>> sorted(p.name for p in files.values())
['before_after.png', 'loss.png', 'report.json']
>>> json.loads(files["json"].read_text())["images"][0]["after"][0]
{'index': 1, 'label': 'goldfish', 'p': 0.8}
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..messages import cut
from .images import load_image

__all__ = ["TOP", "image_row", "write_report", "plot_loss", "plot_before_after"]

TOP = 3
"""Classes shown per image, before and after."""

_TARGET = "#e8590c"   # the class being taught: orange, like a goldfish
_OTHER = "#adb5bd"    # every other class: grey
_LINES = {"train": ("#1c7ed6", "classification (cross-entropy)"),
          "keep": ("#2f9e44", "keep set (λ·KL to the base)"),
          "loss": ("#212529", "total")}


def image_row(path: str | os.PathLike, before: torch.Tensor, after: torch.Tensor, group: str = "train") -> dict:
    """One image's record: its path, its group ("train" / "keep"), and its class probabilities
    (1-D, softmaxed) before and after training."""
    return {"path": Path(path), "group": group, "before": before, "after": after}


def write_report(folder: str | os.PathLike, *, history: Mapping[str, Sequence[float]],
                 rows: Sequence[Mapping], target: int, classes: Sequence[str],
                 summary: Mapping | None = None) -> dict[str, Path]:
    """Write loss.png, before_after.png and report.json into `folder` (created if missing).

    history: per-step values by term: "train" (the classification loss), optionally "keep"
        (the weighted keep term) and "loss" (their sum).
    rows: `image_row` records. summary: anything JSON-able worth keeping (backbone, steps, ...).
    Returns {"loss": ..., "before_after": ..., "json": ...} paths.
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--report {out}: is a file (expected a folder to write the report into)")
    out.mkdir(parents=True, exist_ok=True)
    files = {"loss": out / "loss.png", "before_after": out / "before_after.png", "json": out / "report.json"}
    plot_loss(history, files["loss"], subtitle=_subtitle(summary or {}, classes[target]))
    plot_before_after(rows, target, classes, files["before_after"])
    record = {
        **dict(summary or {}),
        "target": {"index": target, "label": classes[target]},
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "images": [{"path": str(r["path"]), "group": r["group"],
                    "before": _top(r["before"], classes), "after": _top(r["after"], classes)}
                   for r in rows],
    }
    files["json"].write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return files


def _subtitle(summary: Mapping, label: str) -> str:
    parts = [summary.get("backbone"), f"label {label!r}",
             f"{summary['steps']} steps" if "steps" in summary else None,
             f"lr {summary['lr']:g}" if "lr" in summary else None,
             f"λ = {summary['keep']['weight']:g}" if isinstance(summary.get("keep"), Mapping) else None,
             "augmented" if summary.get("augment") else None]
    return ", ".join(p for p in parts if p)


def _top(probs: torch.Tensor, classes: Sequence[str], k: int = TOP) -> list[dict]:
    values, indices = probs.topk(min(k, probs.shape[-1]))
    return [{"index": int(i), "label": classes[i], "p": round(float(p), 4)} for p, i in zip(values, indices)]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_loss(history: Mapping[str, Sequence[float]], path: str | os.PathLike, subtitle: str = "") -> None:
    """Loss per step on a log scale, one line per term (a term that is all zero is left out)."""
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    drawn = 0
    for name in ("train", "keep", "loss"):
        values = list(history.get(name, ()))
        if name == "loss" and "keep" not in history:
            continue  # without a keep term the total is the classification term
        if not values or not any(v > 0 for v in values):
            continue
        colour, label = _LINES[name]
        steps = range(1, len(values) + 1)
        # A log axis cannot show 0 (the keep term at step 1, where B = 0): leave those points out.
        shown = [v if v > 0 else float("nan") for v in values]
        ax.plot(steps, shown, color=colour, label=label, lw=2 if name != "loss" else 1.2,
                ls="-" if name != "loss" else "--", marker="o" if len(values) <= 40 else None, ms=3)
        drawn += 1
    if drawn:
        ax.set_yscale("log")
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no training steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title("Training loss", loc="left", fontweight="bold")
    if subtitle:
        ax.set_title(subtitle, loc="right", fontsize=8, color="#495057")
    ax.grid(True, which="major", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.savefig(path)


def plot_before_after(rows: Sequence[Mapping], target: int, classes: Sequence[str],
                      path: str | os.PathLike) -> None:
    """A row per image: thumbnail | top-3 before | top-3 after; the target class in orange."""
    n = max(len(rows), 1)
    fig = _figure(9.0, 0.6 + 1.35 * n)
    grid = fig.add_gridspec(n, 3, width_ratios=(1.0, 2.2, 2.2))
    name = classes[target]
    fig.suptitle(f"Top-{TOP} classes before and after training   ({name} in orange)",
                 x=0.02, ha="left", fontweight="bold")
    group = None
    for i, row in enumerate(rows):
        thumb = fig.add_subplot(grid[i, 0])
        thumb.imshow(_thumbnail(row["path"]))
        thumb.set_xticks([])
        thumb.set_yticks([])
        tag = "trained on" if row["group"] == "train" else "keep set"
        thumb.set_xlabel(cut(Path(row["path"]).name, 34, "…"), fontsize=6.5)
        if row["group"] != group:  # label each group once, on its first image
            thumb.set_title(tag, fontsize=10, loc="left", fontweight="bold", color="#495057")
            group = row["group"]
        for j, when in enumerate(("before", "after")):
            ax = fig.add_subplot(grid[i, 1 + j])
            _bars(ax, row[when], target, classes, p_target=float(row[when][target]))
            if i == 0:
                ax.set_title(when, fontsize=10, fontweight="bold")
    fig.savefig(path)


def _bars(ax, probs: torch.Tensor, target: int, classes: Sequence[str], p_target: float) -> None:
    values, indices = probs.topk(min(TOP, probs.shape[-1]))
    labels = [cut(classes[i], 24, "…") for i in indices.tolist()]
    colours = [_TARGET if i == target else _OTHER for i in indices.tolist()]
    ys = range(len(labels))[::-1]  # highest on top
    ax.barh(list(ys), [1.0] * len(labels), color="#f1f3f5", height=0.7)  # the 0..1 track
    ax.barh(list(ys), values.tolist(), color=colours, height=0.7)
    for y, v, lab, c in zip(ys, values.tolist(), labels, indices.tolist()):
        weight = "bold" if c == target else "normal"
        ax.text(0.02, y, f"{lab}", va="center", ha="left", fontsize=8, fontweight=weight, color="#212529")
        ax.text(1.15, y, f"{v:.2f}", va="center", ha="right", fontsize=8, fontweight=weight, color="#212529")
    if target not in indices.tolist():  # say where the target is, so "not in the top 3" is visible
        shown = f"{p_target:.3f}" if p_target >= 0.001 else "< 0.001"
        ax.set_xlabel(f"p({cut(classes[target], 18, '…')}) {'= ' * (p_target >= 0.001)}{shown}", fontsize=7,
                      color=_TARGET, labelpad=1)
    ax.set_xlim(0, 1.16)  # the bars fill 0..1, their values sit to the right
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.axvline(0, color="#868e96", lw=0.8)


def _thumbnail(path: Path):
    image = load_image(path)
    image.thumbnail((160, 160))
    return image
