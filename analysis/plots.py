"""Figures in the paper's style. Needs matplotlib only (no torch), so queries can plot too."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: runs log figures to MLflow, they are never shown
# Names and labels are drawn as the text they are: a model name such as 'a$b$c' or '$x^$' would
# otherwise be typeset as math, or fail the whole analysis at its last step.
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CMAP = "magma"


def stage_of(layer: str) -> str:
    """'stage2.block3.add' -> 'stage2'; 'stem.conv' -> 'stem'; 'logits' -> 'head'."""
    head = layer.split(".")[0]
    return head if head.startswith(("stage", "stem")) else "head"


def stage_spans(names: Sequence[str]) -> list[tuple[str, int, int]]:
    """(stage, first index, last index) for each contiguous stage in layer order."""
    spans: list[tuple[str, int, int]] = []
    for i, name in enumerate(names):
        stage = stage_of(name)
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], i)
        else:
            spans.append((stage, i, i))
    return spans


def _mark_stages(ax, names: Sequence[str], axis: str) -> None:
    spans = stage_spans(names)
    centres = [(a + b) / 2 for _, a, b in spans]
    labels = [s for s, _, _ in spans]
    for _, a, _ in spans[1:]:
        (ax.axvline if axis == "x" else ax.axhline)(a - 0.5, color="white", lw=0.8, alpha=0.8)
    if axis == "x":
        ax.set_xticks(centres, labels, fontsize=8)
    else:
        ax.set_yticks(centres, labels, fontsize=8, rotation=90, va="center")


def heatmap(
    matrix: np.ndarray,
    names_y: Sequence[str],
    names_x: Sequence[str] | None = None,
    title: str = "",
    subtitle: str = "",
    blocks: Sequence[tuple[int, int]] = (),
    ax=None,
    bar_label: str = "CKA",
) -> Figure:
    """CKA heatmap: layer 0 at the bottom-left as in the paper, stages marked, colour bar 0 to 1.
    `blocks` are (start, end) index ranges outlined in cyan (detected block structure); any other
    layer-by-layer matrix in [0, 1] is drawn the same way under its own `bar_label`."""
    names_x = names_y if names_x is None else names_x
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=120)
    else:
        fig = ax.figure
    im = ax.imshow(matrix, origin="lower", cmap=CMAP, vmin=0, vmax=1, interpolation="nearest")
    for start, end in blocks:
        ax.add_patch(plt.Rectangle((start - 0.5, start - 0.5), end - start + 1, end - start + 1, fill=False, ec="cyan", lw=1.2))
    _mark_stages(ax, names_x, "x")
    _mark_stages(ax, names_y, "y")
    ax.set_xlabel(f"layer ({len(names_x)})")
    ax.set_ylabel(f"layer ({len(names_y)})")
    if title:
        ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=9)
    if own:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=bar_label)
        fig.tight_layout()
    return fig


def image_grid(images: np.ndarray, captions: Sequence[str], title: str, columns: int = 10) -> Figure:
    """uint8 images (N, 3, H, W) in rows of `columns`, each captioned, enlarged without smoothing."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.25 * columns, 1.45 * rows + 0.5), dpi=120, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(np.transpose(images[k], (1, 2, 0)), interpolation="nearest")
            ax.set_title(captions[k], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def heatmap_strip(matrices: Sequence[np.ndarray], captions: Sequence[str], title: str,
                  blocks: Sequence[Sequence[tuple[int, int]]] = (), columns: int = 5) -> Figure:
    """Heatmaps of one model in reading order, `columns` to a row (e.g. over training), on one
    colour scale, blocks outlined."""
    rows = -(-len(matrices) // columns)
    width = min(columns, len(matrices))
    fig, axes = plt.subplots(rows, width, figsize=(2.4 * width + 1.0, 2.5 * rows + 0.5), dpi=110, squeeze=False,
                             layout="constrained")
    for k, ax in enumerate(axes.flat):
        if k >= len(matrices):
            ax.axis("off")
            continue
        ax.imshow(matrices[k], origin="lower", cmap=CMAP, vmin=0, vmax=1, interpolation="nearest")
        for start, end in (blocks[k] if k < len(blocks) else ()):
            ax.add_patch(plt.Rectangle((start - 0.5, start - 0.5), end - start + 1, end - start + 1, fill=False, ec="cyan", lw=1))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(captions[k], fontsize=8)
    fig.colorbar(axes.flat[0].images[0], ax=axes, fraction=0.03, pad=0.02, label="CKA")
    fig.suptitle(title, fontsize=10)
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)


def shade(ax, spans: Sequence[tuple[float, float]], label: str = "block structure") -> None:
    for k, (start, end) in enumerate(spans):
        ax.axvspan(start - 0.5, end + 0.5, color="tab:orange", alpha=0.15, lw=0, label=label if k == 0 else None)


def curves(
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    shaded: Sequence[tuple[int, int]],
    ylabel: str,
    title: str,
    hline: tuple[float, str] | None = None,
) -> Figure:
    """One line per series over named positions (layers or residual blocks), the (start, end)
    position ranges in `shaded` shaded (the detected blocks). Tick labels thin out when there are
    many positions."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=120)
    x = np.arange(len(labels))
    shade(ax, shaded)
    for name, values in series.items():
        ax.plot(x, values, marker="o", ms=3, lw=1.4, label=name)
    if hline is not None:
        ax.axhline(hline[0], color="grey", ls="--", lw=1, label=hline[1])
    step = max(1, len(labels) // 24)
    ax.set_xticks(x[::step], [labels[i] for i in x[::step]], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def heatmap_pair(left: np.ndarray, right: np.ndarray, names: Sequence[str], titles: tuple[str, str], suptitle: str,
                 blocks: Sequence[tuple[int, int]] = ()) -> Figure:
    """Two heatmaps side by side on one colour scale (e.g. CKA with and without PC1)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), dpi=120)
    for ax, matrix, title in zip(axes, (left, right), titles):
        heatmap(matrix, names, title=title, blocks=blocks, ax=ax)
    fig.colorbar(axes[0].images[0], ax=axes, fraction=0.025, pad=0.02, label="CKA")
    fig.suptitle(suptitle, fontsize=10)
    return fig


def trend(table, x: str, panel: str, y: str, title: str) -> Figure:
    """`y` (mean, with its std as error bars) against `x`, one panel per value of `panel`, one line
    per data fraction: the paper's 'block structure grows with width/depth/less data' view."""
    panels = sorted(table[panel].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.4), dpi=120, squeeze=False, sharey=True)
    for ax, value in zip(axes[0], panels):
        sub = table[table[panel] == value]
        for fraction, line in sorted(sub.groupby("data_fraction"), key=lambda kv: kv[0]):
            line = line.sort_values(x)
            ax.errorbar(line[x], line[f"{y}_mean"], yerr=line[f"{y}_std"].fillna(0), marker="o", capsize=3,
                        label=f"data {fraction:g}")
        ax.set_title(f"{panel} {value:g}", fontsize=9)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(y.replace("_", " "))
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def heatmap_grid(cells: dict, depths: Sequence, widths: Sequence, title: str) -> Figure:
    """The paper's Figure 1 layout: rows depth, columns width; `cells[(depth, width)]` is
    (matrix, layer names, caption), missing cells left blank."""
    fig, axes = plt.subplots(len(depths), len(widths), figsize=(max(2.9 * len(widths), 5.0), 2.8 * len(depths)), dpi=110,
                             squeeze=False)
    for r, depth in enumerate(depths):
        for c, width in enumerate(widths):
            ax = axes[len(depths) - 1 - r][c]  # deepest at the top, as in the paper
            if (depth, width) not in cells:
                ax.axis("off")
                continue
            matrix, names, caption = cells[(depth, width)]
            ax.imshow(matrix, origin="lower", cmap=CMAP, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"depth {depth}, width {width:g}\n{caption}", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def example_accuracy_map(acc_a: np.ndarray, acc_b: np.ndarray, seeds_a: int, seeds_b: int, label_a: str, label_b: str) -> Figure:
    """Per-example accuracy over the seeds of group A against group B, as a 2-D histogram with
    one bin per attainable value (k / seeds), log-scaled counts."""
    from matplotlib.colors import LogNorm

    def edges(seeds: int) -> np.ndarray:
        return np.linspace(-0.5 / seeds, 1 + 0.5 / seeds, seeds + 2)

    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=120)
    *_, im = ax.hist2d(acc_a, acc_b, bins=[edges(seeds_a), edges(seeds_b)], cmap="viridis", norm=LogNorm())
    ax.plot([0, 1], [0, 1], color="white", lw=0.8, ls="--")
    fig.colorbar(im, ax=ax, label="examples")
    ax.set_xlabel(f"per-example accuracy, {label_a}")
    ax.set_ylabel(f"per-example accuracy, {label_b}")
    ax.set_title("off-diagonal mass: examples one group gets right and the other wrong", fontsize=8)
    fig.tight_layout()
    return fig


def class_differences(classes: Sequence[str], diff: np.ndarray, ci: np.ndarray, significant: Sequence[int], title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    x = np.arange(len(classes))
    colors = ["tab:red" if i in set(significant) else "tab:blue" for i in x]
    ax.errorbar(x, diff, yerr=[diff - ci[:, 0], ci[:, 1] - diff], fmt="none", ecolor="grey", capsize=3)
    ax.scatter(x, diff, c=colors, zorder=3)
    for i in significant:
        ax.annotate("*", (i, ci[i, 1]), ha="center", va="bottom", color="tab:red", fontsize=14)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy difference (B - A)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def agreement_heatmap(agreement: np.ndarray, labels: Sequence[str], split: int) -> Figure:
    fig, ax = plt.subplots(figsize=(5.4, 4.8), dpi=120)
    off = agreement[~np.eye(len(agreement), dtype=bool)]
    im = ax.imshow(agreement, cmap="viridis", vmin=off.min() if off.size else 0, vmax=off.max() if off.size else 1)
    ax.axhline(split - 0.5, color="white", lw=1)
    ax.axvline(split - 0.5, color="white", lw=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(im, ax=ax, label="share of examples with the same prediction")
    ax.set_title("prediction agreement (group A top-left, B bottom-right)", fontsize=9)
    fig.tight_layout()
    return fig
