"""Dominant examples: the few images that carry a layer's first principal component.

Nguyen, Raghu & Kornblith's follow-up ("On the Origins of the Block Structure Phenomenon in
Neural Network Representations", arXiv 2202.07184) traces the block structure to a small set of
dominant images whose activations inside the block are very large along one direction, the
layers' PC1: the same images dominate every layer of the block, they share simple statistics
(background colour, brightness), and the set differs between seeds.

Here, from each layer's PC1 scores (pca.PC1.scores, centred activations projected on PC1):
- an example's share of its layer's PC1 variance is its squared score over the sum of them;
- a layer's dominant examples are its `k` largest shares;
- two layers agree on their dominant examples as much as their top-k sets overlap (Jaccard);
- a block's dominant examples are the `k` with the largest share averaged over its layers.
The follow-up's causal test recomputes CKA without the blocks' dominant images (`removal_sets`; in
the authors' published code that function removes nothing, since the image is kept before the
`continue` that was meant to skip it), against the same number of random images removed.
If a block is carried by a few images, its layers' top-k sets overlap far more than the same
number of layers elsewhere, and those k images hold a large share of each block layer's PC1.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data import Images, take
from ..store import contract as c
from .blocks import Block, in_block_mask, mask_spans

__all__ = ["Dominant", "DominantGroup", "find_dominant", "removal_sets", "example_shares", "top_examples", "jaccard", "region_overlaps",
           "image_statistics", "dominant_metrics"]


@dataclasses.dataclass
class DominantGroup:
    """The dominant examples of a span of layers (a block, or the whole model when it has none)."""

    label: str  # "block 40-79" or "all layers"
    examples: np.ndarray  # (k,) indices into the analysed examples, largest mean share first
    shares: np.ndarray  # (k,) their share of PC1 variance, averaged over the span's layers
    images: np.ndarray  # (k, 3, H, W) uint8


@dataclasses.dataclass
class Dominant:
    """What the dominant-example analysis found for one model (layers indexed like its names)."""

    k: int
    example_ids: np.ndarray  # (N,) what the analysed examples are (test-set indices)
    shares: np.ndarray  # (layers, N): each example's share of the layer's PC1 variance
    top: np.ndarray  # (layers, k): indices into the analysed examples, largest share first
    overlap: np.ndarray  # (layers, layers): Jaccard overlap of the layers' top-k sets
    groups: list[DominantGroup]  # one per block, or one for the whole model
    statistics: dict[str, dict[str, float]]  # "dominant" / "others" -> image statistic -> mean

    @property
    def top_share(self) -> np.ndarray:
        """(layers,): the share of each layer's PC1 variance that its top k examples hold."""
        return np.take_along_axis(self.shares, self.top, axis=1).sum(1)


def example_shares(scores: np.ndarray) -> np.ndarray:
    """(layers, N) PC1 scores -> each example's share of its layer's PC1 variance (rows sum to 1)."""
    squared = np.asarray(scores, dtype=np.float64) ** 2
    return squared / squared.sum(1, keepdims=True)


def top_examples(shares: np.ndarray, k: int) -> np.ndarray:
    """(layers, k): the `k` examples with the largest share per layer, largest first."""
    return np.argsort(-shares, axis=1, kind="stable")[:, :k]


def jaccard(top: np.ndarray, top_other: np.ndarray | None = None) -> np.ndarray:
    """Jaccard overlap |A & B| / |A | B| of every pair of top-k sets: rows of `top` against rows of
    `top_other` (default: `top` itself). Example indices must refer to the same examples."""
    other = top if top_other is None else top_other
    size = int(max(top.max(), other.max())) + 1
    member_a, member_b = np.zeros((len(top), size)), np.zeros((len(other), size))
    np.put_along_axis(member_a, top, 1.0, axis=1)
    np.put_along_axis(member_b, other, 1.0, axis=1)
    common = member_a @ member_b.T
    return common / (top.shape[1] + other.shape[1] - common)


def _mean_pairs(overlap: np.ndarray, regions: list[range]) -> float:
    """Mean overlap over every pair of distinct layers that lie in the same region."""
    values = [overlap[np.ix_(r, r)][np.triu_indices(len(r), 1)] for r in regions if len(r) >= 2]
    return float(np.concatenate(values).mean()) if values else float("nan")


def region_overlaps(overlap: np.ndarray, blocks: list[Block]) -> tuple[float, float]:
    """(mean overlap over pairs of layers in the same block, over pairs in the same stretch of
    layers outside the blocks). NaN where there is no such pair (no block: the first is NaN)."""
    inside = [range(b.start, b.end + 1) for b in blocks]
    outside = [range(start, end + 1) for start, end in mask_spans(~in_block_mask(blocks, len(overlap)))]
    return _mean_pairs(overlap, inside), _mean_pairs(overlap, outside)


def image_statistics(images: Images, chunk: int = 500) -> dict[str, float]:
    """Mean colour (red, green, blue), brightness (mean luminance), contrast (per-image standard
    deviation of luminance) and saturation (HSV's (max - min) / max per pixel) of uint8 images
    (N, 3, H, W), all in [0, 1], averaged over the images; read `chunk` images at a time."""
    per_image = []
    for s in range(0, len(images), chunk):
        x = images[s : s + chunk].double() / 255
        luminance = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # ITU-R BT.601
        top, bottom = x.amax(1), x.amin(1)
        saturation = torch.where(top > 0, (top - bottom) / top.clamp_min(1e-12), torch.zeros_like(top))
        per_image.append(torch.stack([*x.mean((2, 3)).T, luminance.mean((1, 2)), luminance.flatten(1).std(1),
                                      saturation.mean((1, 2))], 1))
    means = torch.cat(per_image).mean(0).tolist()
    return dict(zip(("red", "green", "blue", "brightness", "contrast", "saturation"), means))


def find_dominant(scores: np.ndarray, blocks: list[Block], images: Images, example_ids: np.ndarray,
                  k: int) -> Dominant:
    """The dominant-example analysis of one model from its PC1 scores (layers, N) over the analysed
    uint8 `images` (N, 3, H, W), test-set indices `example_ids`; `blocks` from the block detector.
    The dominant examples of the largest block (with no block, of the whole model) are compared
    with the rest of the analysed images in `statistics`."""
    n = scores.shape[1]
    if not 1 <= k < n:
        raise ValueError(f"dominant_top={k} must be between 1 and the number of analysed examples - 1 ({n - 1})")
    shares = example_shares(scores)
    top = top_examples(shares, k)
    spans = [(f"block {b.start}-{b.end}", range(b.start, b.end + 1)) for b in blocks] or [("all layers", range(len(shares)))]
    groups = []
    for label, span in spans:
        mean_share = shares[span].mean(0)
        chosen = top_examples(mean_share[None], k)[0]
        groups.append(DominantGroup(label, chosen, mean_share[chosen], images[torch.from_numpy(chosen)].numpy()))
    largest = max(range(len(spans)), key=lambda j: len(spans[j][1]))
    dominant = np.zeros(n, dtype=bool)
    dominant[groups[largest].examples] = True
    statistics = {"dominant": image_statistics(take(images, torch.from_numpy(np.flatnonzero(dominant)))),
                  "others": image_statistics(take(images, torch.from_numpy(np.flatnonzero(~dominant))))}
    return Dominant(k, np.asarray(example_ids), shares, top, jaccard(top), groups, statistics)


def removal_sets(found: Dominant, blocks: list[Block], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The follow-up's causal test, as two sets of analysed examples to leave out: every block's
    dominant examples (the union of its layers' top k), and as many drawn at random from the other
    examples (the control). Indices into the analysed examples, sorted."""
    dominant = np.unique(np.concatenate([found.top[b.start : b.end + 1].ravel() for b in blocks])) if blocks else np.array([], int)
    others = np.setdiff1d(np.arange(found.shares.shape[1]), dominant)
    rng = np.random.default_rng(seed)
    return dominant, np.sort(rng.choice(others, size=min(len(dominant), len(others)), replace=False))


def dominant_metrics(found: Dominant, blocks: list[Block]) -> dict[str, float]:
    """dominant_overlap_in_block / _outside (region_overlaps), and the share of PC1 variance held by
    each layer's top k, averaged over all layers (dominant_share_top{k}) and over the block layers
    (dominant_share_in_block, k being the analysis's dominant_top)."""
    inside, outside = region_overlaps(found.overlap, blocks)
    top_share = found.top_share
    mask = in_block_mask(blocks, len(top_share))
    out = {c.DOMINANT_OVERLAP_IN_BLOCK: inside, c.DOMINANT_OVERLAP_OUTSIDE: outside,
           c.dominant_share_top(found.k): float(top_share.mean()),
           c.DOMINANT_SHARE_IN_BLOCK: float(top_share[mask].mean()) if mask.any() else float("nan")}
    return {key: value for key, value in out.items() if np.isfinite(value)}
