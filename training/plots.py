"""The evaluation's pictures (matplotlib, Agg backend: no display needed, safe in threads/CI).

Each function draws one PNG from plain arrays and images, so the evaluation decides what to show
and these only decide how. Files are written atomically (temp file, then ``os.replace``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from runtime.atomic import atomic_path
from training.stl import BBox

STYLES: dict[str, dict[str, Any]] = {
    "model": {"color": "tab:red", "lw": 2.5},
    "global_only": {"color": "tab:orange", "ls": "--"},
    "imagenet": {"color": "tab:blue", "ls": "-."},
    "popularity": {"color": "tab:green", "ls": ":"},
    "random": {"color": "gray", "ls": ":"},
}


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG atomically and release its memory."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def topk_curves(
    curves: Mapping[str, np.ndarray], ks: Sequence[int], n_pairs: int, path: Path
) -> Path:
    """Top-k accuracy against k for the model and each baseline (the paper's Fig. 5)."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, values in curves.items():
        ax.plot(ks, values, label=name, **STYLES.get(name, {}))
    ax.set_xscale("log")
    ticks = [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if k <= max(ks)]
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.set_xlabel("k (rank cut-off among all products of the pair's category, log scale)")
    ax.set_ylabel("top-k accuracy (share of pairs)")
    ax.set_title(f"Top-k accuracy on {n_pairs} test pairs")
    top = max((float(np.max(v)) for v in curves.values()), default=1.0)
    ax.set_ylim(0, min(1.0, top * 1.15 + 0.02))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)


def per_category_auc(
    table: Mapping[str, Mapping[str, float]], counts: Mapping[str, int], path: Path
) -> Path:
    """Grouped bars: AUC per category (rows of ``table``) for each scorer (its columns)."""
    categories = list(table)
    scorers = list(next(iter(table.values()))) if table else []
    fig, ax = plt.subplots(figsize=(max(7.5, 0.9 * len(categories) + 2), 5))
    width = 0.8 / max(1, len(scorers))
    x = np.arange(len(categories))
    for i, name in enumerate(scorers):
        style = STYLES.get(name, {})
        ax.bar(
            x + (i - (len(scorers) - 1) / 2) * width,
            [table[c][name] for c in categories],
            width,
            label=name,
            color=style.get("color"),
        )
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    labels = [f"{c} (n={counts.get(c, 0)})" for c in categories]
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("AUC (binary choice, same-category negative)")
    ax.set_xlabel("category of the positive product")
    ax.set_ylim(0, 1)
    ax.set_title("AUC per category (dashed: chance)", pad=28)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, ncols=len(scorers))
    return _save(fig, path)


@dataclass(frozen=True)
class AttentionSample:
    """One cropped scene with the attention of the pair's category over its grid."""

    image: Image.Image
    attention: np.ndarray  # (grid*grid,)
    boxes: Sequence[BBox]  # other labelled products, normalized to the crop
    title: str


def attention_heatmaps(samples: Sequence[AttentionSample], grid: int, path: Path) -> Path:
    """Attention over sample cropped scenes, with the other labelled products outlined."""
    cols = min(4, max(1, len(samples)))
    rows = max(1, -(-len(samples) // cols))
    aspect = float(np.median([s.image.height / s.image.width for s in samples])) if samples else 1
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols + 1, (3.4 * aspect + 0.7) * rows + 0.6), squeeze=False
    )
    heat = None
    for ax, s in zip(axes.flat, samples, strict=False):
        w, h = s.image.size
        ax.imshow(s.image)
        peak = float(s.attention.max())
        heat = ax.imshow(
            s.attention.reshape(grid, grid) / max(peak, 1e-12),
            extent=(0, w, h, 0),
            cmap="inferno",
            alpha=0.5,
            interpolation="nearest",
            vmin=0.0,
            vmax=1.0,
        )
        for b in s.boxes:
            xy, bw, bh = (b[0] * w, b[1] * h), (b[2] - b[0]) * w, (b[3] - b[1]) * h
            ax.add_patch(Rectangle(xy, bw, bh, fill=False, edgecolor="lime", lw=2))
        r, c = divmod(int(np.argmax(s.attention)), grid)
        cell = Rectangle((c * w / grid, r * h / grid), w / grid, h / grid, fill=False)
        cell.set(edgecolor="cyan", lw=2.5)
        ax.add_patch(cell)
        ax.set_title(f"{s.title}\n(largest weight {peak:.3f})", fontsize=9)
        ax.set(xticks=[], yticks=[])
    for ax in list(axes.flat)[len(samples) :]:
        ax.axis("off")
    fig.suptitle(
        f"Attention of the pair's category on the {grid}x{grid} grid of the cropped scene\n"
        "(cyan: most attended region; green: other labelled products of the scene)",
        fontsize=10,
    )
    if heat is not None:
        fig.colorbar(
            heat,
            ax=axes.ravel().tolist(),
            shrink=0.5,
            label="attention / largest weight in the scene",
        )
    return _save(fig, path)


@dataclass(frozen=True)
class Thumb:
    """A product image and its caption."""

    image: Image.Image
    caption: str


@dataclass(frozen=True)
class CompatibilityRow:
    """A cropped scene, its true product, and the most and least compatible of its category."""

    scene: Image.Image
    title: str
    truth: Thumb
    best: Sequence[Thumb]
    worst: Sequence[Thumb]


def compatibility(rows: Sequence[CompatibilityRow], path: Path) -> Path:
    """Per scene: the crop, its true product, the 3 most and 3 least compatible (paper's Fig. 7)."""
    n_cols = 2 + max((len(r.best) + len(r.worst) for r in rows), default=0)
    fig, axes = plt.subplots(
        len(rows),
        n_cols,
        figsize=(2.1 * n_cols + 1.4, 2.7 * len(rows) + 0.6),
        squeeze=False,
        gridspec_kw={"width_ratios": [1.7] + [1.0] * (n_cols - 1)},
    )
    for i, row in enumerate(rows):
        axes[i, 0].imshow(row.scene)
        axes[i, 0].set_title(row.title, fontsize=8)
        items = [(row.truth, "true", "navy")]
        items += [(t, "most", "darkgreen") for t in row.best]
        items += [(t, "least", "darkred") for t in row.worst]
        for ax, (thumb, kind, colour) in zip(axes[i, 1:], items, strict=False):
            ax.imshow(thumb.image)
            ax.set_title(f"{kind}: {thumb.caption}", fontsize=8, color=colour)
        for ax in axes[i]:
            ax.set(xticks=[], yticks=[])
    fig.suptitle(
        "Cropped scene | its true product | 3 most | 3 least compatible products of that category"
        "\n(d* = model distance, lower = more compatible)",
        fontsize=10,
    )
    return _save(fig, path)


def tsne(points: np.ndarray, categories: Sequence[str], is_scene: np.ndarray, path: Path) -> Path:
    """2-D t-SNE of scene (triangles) and product (dots) embeddings coloured by category."""
    names = sorted(set(categories))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colour = {c: cmap(i % cmap.N) for i, c in enumerate(names)}
    cats = np.asarray(categories, dtype=object)
    fig, ax = plt.subplots(figsize=(9, 7.5))
    for c in names:
        prod = (cats == c) & ~is_scene
        scene = (cats == c) & is_scene
        ax.scatter(points[prod, 0], points[prod, 1], s=6, alpha=0.45, color=colour[c], label=c)
        ax.scatter(
            points[scene, 0],
            points[scene, 1],
            s=30,
            marker="^",
            color=colour[c],
            ec="black",
            lw=0.4,
        )
    ax.scatter([], [], s=6, color="gray", label="product (dot)")
    ax.scatter([], [], s=30, marker="^", color="gray", edgecolors="black", label="scene (triangle)")
    ax.set_xlabel("t-SNE dimension 1")
    ax.set_ylabel("t-SNE dimension 2")
    ax.set_title(
        f"t-SNE of {int((~is_scene).sum())} product and {int(is_scene.sum())} scene embeddings "
        "(scenes coloured by their pair's category)",
        fontsize=10,
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=2)
    return _save(fig, path)
