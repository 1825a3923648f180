"""The evaluation's pictures (matplotlib, Agg backend: no display needed, safe in threads/CI).

Each function draws one PNG from plain arrays and images, so the evaluation decides what to show
and these only decide how. Files are written atomically (temp file, then ``os.replace``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from training.stl import BBox  # noqa: E402

STYLES: dict[str, dict[str, object]] = {
    "model": {"color": "tab:red", "lw": 2.5},
    "global_only": {"color": "tab:orange", "ls": "--"},
    "imagenet": {"color": "tab:blue", "ls": "-."},
    "popularity": {"color": "tab:green", "ls": ":"},
    "random": {"color": "gray", "ls": ":"},
}


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG atomically and release its memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def topk_curves(
    curves: Mapping[str, np.ndarray], ks: Sequence[int], n_pairs: int, path: Path
) -> Path:
    """Top-k accuracy against k for the model and each baseline (the paper's Fig. 5)."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, values in curves.items():
        ax.plot(ks, values, label=name, **STYLES.get(name, {}))  # type: ignore[arg-type]
    ax.set_xscale("log")
    ax.set_xlabel("k (rank cut-off among all products of the pair's category, log scale)")
    ax.set_ylabel("top-k accuracy (share of pairs)")
    ax.set_title(f"Top-k accuracy on {n_pairs} test pairs")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)


def per_category_auc(table: Mapping[str, Mapping[str, float]], path: Path) -> Path:
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
            color=style.get("color"),  # type: ignore[arg-type]
        )
    ax.axhline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xticks(x, categories, rotation=30, ha="right")
    ax.set_ylabel("AUC (binary choice, same-category negative)")
    ax.set_xlabel("category of the positive product")
    ax.set_ylim(0, 1)
    ax.set_title("AUC per category")
    ax.legend(loc="lower right", fontsize=8, ncols=len(scorers))
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
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 4.2 * rows), squeeze=False)
    image_artist = None
    for ax, s in zip(axes.flat, samples, strict=False):
        w, h = s.image.size
        ax.imshow(s.image)
        image_artist = ax.imshow(
            s.attention.reshape(grid, grid),
            extent=(0, w, h, 0),
            cmap="inferno",
            alpha=0.55,
            interpolation="nearest",
            vmin=0.0,
            vmax=float(s.attention.max()),
        )
        for b in s.boxes:
            ax.add_patch(
                Rectangle(
                    (b[0] * w, b[1] * h),
                    (b[2] - b[0]) * w,
                    (b[3] - b[1]) * h,
                    fill=False,
                    edgecolor="lime",
                    lw=2,
                )
            )
        top = int(np.argmax(s.attention))
        r, c = divmod(top, grid)
        ax.add_patch(
            Rectangle((c * w / grid, r * h / grid), w / grid, h / grid, fill=False, ec="cyan", lw=2)
        )
        ax.set_title(s.title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(samples) :]:
        ax.axis("off")
    fig.suptitle(
        "Attention of the pair's category over the cropped scene "
        "(bright = attended; cyan = top region; green = other labelled products)",
        fontsize=10,
    )
    if image_artist is not None:
        fig.colorbar(image_artist, ax=axes.ravel().tolist(), shrink=0.6, label="attention (max→bright)")
    return _save(fig, path)


@dataclass(frozen=True)
class CompatibilityRow:
    """A cropped scene with the most and least compatible products of one category."""

    scene: Image.Image
    title: str
    best: Sequence[tuple[Image.Image, str]]  # (image, caption)
    worst: Sequence[tuple[Image.Image, str]]


def compatibility(rows: Sequence[CompatibilityRow], path: Path) -> Path:
    """For each scene: the scene, its 3 most and 3 least compatible products (the paper's Fig. 7)."""
    n_cols = 1 + max((len(r.best) + len(r.worst) for r in rows), default=0)
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(2.1 * n_cols, 2.6 * len(rows)), squeeze=False
    )
    for i, row in enumerate(rows):
        axes[i, 0].imshow(row.scene)
        axes[i, 0].set_title(row.title, fontsize=8)
        items = [(im, cap, "most") for im, cap in row.best] + [
            (im, cap, "least") for im, cap in row.worst
        ]
        for j, (im, cap, kind) in enumerate(items, start=1):
            ax = axes[i, j]
            ax.imshow(im)
            ax.set_title(f"{kind}: {cap}", fontsize=8, color="darkgreen" if kind == "most" else "darkred")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        "Cropped scene | 3 most compatible | 3 least compatible products of its pair's category "
        "(d* = model distance, ★ = the true product)",
        fontsize=10,
    )
    return _save(fig, path)


def tsne(
    points: np.ndarray, categories: Sequence[str], is_scene: np.ndarray, path: Path
) -> Path:
    """2-D t-SNE of scene (triangles) and product (dots) embeddings coloured by category."""
    names = sorted(set(categories))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colour = {c: cmap(i % cmap.N) for i, c in enumerate(names)}
    cats = np.asarray(categories, dtype=object)
    fig, ax = plt.subplots(figsize=(9, 7.5))
    for c in names:
        prod = (cats == c) & ~is_scene
        scene = (cats == c) & is_scene
        ax.scatter(*points[prod].T, s=6, alpha=0.45, color=colour[c], label=c)
        ax.scatter(*points[scene].T, s=30, marker="^", color=colour[c], edgecolors="black", lw=0.4)
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
