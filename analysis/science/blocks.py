"""Block structure as data: contiguous runs of layers with nearly identical representations.

Rule. A block is a contiguous range of layers [i, j] whose mean off-diagonal CKA is at least
`threshold` and which spans at least `min_frac` of all layers and never fewer than `min_layers`
(defaults in analysis/config.py: 0.94, 0.2, 4). The detector takes the longest such range (ties: the
higher mean), trims edge layers whose own mean CKA with the rest of the range is below the
threshold (the mean over pairs would otherwise let a block swallow a neighbour or two), then
searches what is left on each side, so blocks never overlap.

Why these choices:
- The mean over all pairs, not the minimum, makes the rule robust to noise and to a few
  dissimilar layers inside a block (a projection shortcut, the logits); a minimum would split a
  block at its first outlier.
- Calibrated on this project's CPU study (docs/cpu-study.md), all layers, 1,000 test images: a
  ResNet-20 that fits its 1,000 training images (98.8%) has ordinary within-stage similarity of
  mean CKA 0.91-0.93 over up to 21% of its layers, while a ResNet-56 on the same data shows the
  paper's block: 20% and 31% of its layers at mean CKA 0.95, which removing PC1 breaks. 0.94 and
  20% separate the two; 0.9 and 10% (the first choice here) called the control's stages blocks.
- A minimum span: any conv -> BN -> ReLU triple is trivially similar (BN is an affine map of the
  conv), so short ranges are normal local similarity, not block structure.
Caveat (Nguyen et al., 2021; docs/cpu-study.md): an untrained or under-trained ResNet looks like
one big block; read block metrics beside the model's training accuracy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ..config import BLOCK_MIN_FRAC, BLOCK_MIN_LAYERS, BLOCK_THRESHOLD
from ..store import contract as c

__all__ = ["Block", "find_blocks", "block_metrics", "mean_off_diagonal", "in_block_mask", "layers_in_blocks", "mask_spans"]


@dataclasses.dataclass(frozen=True)
class Block:
    start: int  # index of the first layer
    end: int  # index of the last layer (inclusive)
    first_layer: str
    last_layer: str
    length: int
    fraction: float  # length / number of layers
    mean_cka: float  # mean off-diagonal CKA inside the block

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def find_blocks(
    matrix: np.ndarray,
    names: Sequence[str] | None = None,
    threshold: float = BLOCK_THRESHOLD,
    min_frac: float = BLOCK_MIN_FRAC,
    min_layers: int = BLOCK_MIN_LAYERS,
) -> list[Block]:
    """Blocks of a square within-model CKA matrix, in layer order."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a within-model CKA matrix is square; got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("the CKA matrix holds NaN or infinite values; recompute it")
    n = m.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(n)]
    min_len = max(min_layers, math.ceil(min_frac * n), 2)
    # 2-D prefix sums: the sum over any square [i..j] x [i..j] in O(1).
    prefix = np.zeros((n + 1, n + 1))
    prefix[1:, 1:] = m.cumsum(0).cumsum(1)
    diag_prefix = np.concatenate([[0.0], np.cumsum(np.diag(m))])

    def best_in(lo: int, hi: int) -> tuple[int, int, float] | None:
        """Longest qualifying range inside [lo, hi) (ties: highest mean), or None."""
        for length in range(hi - lo, min_len - 1, -1):
            i = np.arange(lo, hi - length + 1)
            j = i + length
            total = prefix[j, j] - prefix[i, j] - prefix[j, i] + prefix[i, i]
            off = total - (diag_prefix[j] - diag_prefix[i])
            mean = off / (length * (length - 1))
            ok = np.nonzero(mean >= threshold)[0]
            if len(ok):
                k = ok[np.argmax(mean[ok])]
                return int(i[k]), int(j[k]) - 1, float(mean[k])
        return None

    found, pending = [], [(0, n)]
    while pending:
        lo, hi = pending.pop()
        if hi - lo < min_len:
            continue
        best = best_in(lo, hi)
        if best is None:
            continue
        start, end, _ = best
        while end - start + 1 > min_len and m[start, start + 1 : end + 1].mean() < threshold:
            start += 1
        while end - start + 1 > min_len and m[end, start:end].mean() < threshold:
            end -= 1
        mean = mean_off_diagonal(m, start, end)
        found.append(Block(start, end, names[start], names[end], end - start + 1, (end - start + 1) / n, mean))
        pending += [(lo, start), (end + 1, hi)]
    return sorted(found, key=lambda b: b.start)


def block_metrics(blocks: Sequence[Block], num_layers: int) -> dict[str, float]:
    """Summary numbers logged as MLflow metrics and registry tags. `block_mean_cka` (of the
    largest block) is absent when there is no block, rather than a made-up value."""
    metrics = {
        c.BLOCK_COUNT: float(len(blocks)),
        c.BLOCK_LARGEST_FRAC: 0.0,
        c.BLOCK_TOTAL_FRAC: sum(b.length for b in blocks) / num_layers,
    }
    if blocks:
        largest = max(blocks, key=lambda b: b.length)
        metrics.update({c.BLOCK_LARGEST_FRAC: largest.fraction, c.BLOCK_MEAN_CKA: largest.mean_cka})
    return metrics


def mean_off_diagonal(matrix: np.ndarray, start: int, end: int) -> float:
    """Mean CKA between distinct layers of the square [start..end] x [start..end] (inclusive)."""
    inner = np.asarray(matrix)[start : end + 1, start : end + 1]
    return float((inner.sum() - np.trace(inner)) / (inner.size - len(inner)))


def in_block_mask(blocks: Sequence[Block] | Sequence[dict], num_layers: int) -> np.ndarray:
    """Per layer, whether it lies inside a block (blocks as Block or as their logged dicts)."""
    mask = np.zeros(num_layers, dtype=bool)
    for b in blocks:
        start, end = (b["start"], b["end"]) if isinstance(b, dict) else (b.start, b.end)
        mask[start : end + 1] = True
    return mask


def layers_in_blocks(blocks: Sequence[Block], names: Sequence[str], layers: Sequence[str]) -> np.ndarray:
    """For each of `layers`, whether it falls inside a detected block (by its index in `names`;
    layers not in `names` are outside)."""
    mask = in_block_mask(blocks, len(names))
    index = {n: i for i, n in enumerate(names)}
    return np.array([layer in index and bool(mask[index[layer]]) for layer in layers])


def mask_spans(mask: Sequence[bool]) -> list[tuple[int, int]]:
    """Contiguous True runs of a boolean sequence as (start, end) index pairs, end inclusive."""
    spans, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i - 1))
            start = None
    return spans
