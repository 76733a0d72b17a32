"""The paper's explanation of the block structure, as numbers: what one model's analyses found,
and the metrics that test each claim against its blocks (Nguyen, Raghu & Kornblith, 2021, §4-5).

- Inside a block the first principal component carries most of the variance (pc1_share_*), and
  removing it breaks the block (block_mean_cka_without_pc1).
- Linear probes barely improve across the block (probe_gain_in_block).
- Deleting a residual block inside the block costs little accuracy (deletion_drop_*).
- The block differs between seeds while the rest agrees (cross_seed_similarity).
- Beyond the paper (its follow-up, arXiv 2202.07184): a few dominant images carry the block's
  PC1, the same ones in every layer of the block (dominant_overlap_*, dominant.py); without them
  the block dissolves, and without as many random images it does not
  (block_mean_cka_without_dominant against block_mean_cka_without_random).
A block means something only in a model that fits its training set (fit_to_training_set).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import torch

from ..config import FITS_TRAINING_SET
from ..data import indices_hash, subset_indices
from ..store import contract as c
from .blocks import Block, block_metrics, in_block_mask, layers_in_blocks, mean_off_diagonal
from .dominant import Dominant, dominant_metrics

__all__ = ["ModelReport", "explanation_metrics", "fit_to_training_set", "probe_training_indices",
           "cross_seed_similarity", "base_metrics"]


@dataclasses.dataclass
class ModelReport:
    """What the analyses found for one model (arrays indexed like `names`)."""

    label: str
    names: list[str]
    cka: np.ndarray
    blocks: list[Block]
    metrics: dict[str, float]
    cka_without_pc1: np.ndarray | None = None
    cka_pc1_only: np.ndarray | None = None
    pc1_share: np.ndarray | None = None
    pc1_residual: np.ndarray | None = None
    probe_names: list[str] | None = None
    probe_accuracy: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # train set -> per probe layer
    probe_outputs: list[str] = dataclasses.field(default_factory=list)  # the probe layers that are block outputs
    deletion: dict[str, float] | None = None  # block -> accuracy with it deleted
    measures: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # further similarity measures (measures.py)
    dominant: Dominant | None = None
    cka_without_dominant: np.ndarray | None = None  # CKA over the analysed examples less the blocks' dominant ones
    cka_without_random: np.ndarray | None = None  # ... less as many random ones (the control)
    dominant_removed: int = 0

    @property
    def largest(self) -> Block | None:
        return max(self.blocks, key=lambda b: b.length, default=None)


def base_metrics(blocks: list[Block], num_layers: int, accuracy: float) -> dict[str, float]:
    """Block metrics plus the model's accuracy on the analysed examples."""
    return {**block_metrics(blocks, num_layers), c.ANALYSIS_ACCURACY: accuracy}


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def explanation_metrics(report: ModelReport) -> dict[str, float]:
    """The numbers that test the paper's explanation of the block (undefined ones are dropped)."""
    names, found, largest = report.names, report.blocks, report.largest
    out: dict[str, float | None] = {}
    if report.pc1_share is not None:
        mask = in_block_mask(found, len(names))
        out[c.PC1_SHARE_IN_BLOCK] = _mean(report.pc1_share[mask])
        out[c.PC1_SHARE_OUTSIDE] = _mean(report.pc1_share[~mask])
        if largest:
            out[c.BLOCK_MEAN_CKA_WITHOUT_PC1] = mean_off_diagonal(report.cka_without_pc1, largest.start, largest.end)
    if report.probe_accuracy and largest:
        acc = dict(zip(report.probe_names, next(iter(report.probe_accuracy.values()))))
        inside = [n for n in report.probe_names if n in report.probe_outputs and n in names[largest.start : largest.end + 1]]
        if len(inside) >= 2:
            out[c.PROBE_GAIN_IN_BLOCK] = acc[inside[-1]] - acc[inside[0]]
    if report.deletion is not None:
        base = report.metrics[c.ANALYSIS_ACCURACY]
        drops = np.array([base - a for a in report.deletion.values()])
        mask = layers_in_blocks(found, names, [f"{b}.relu" for b in report.deletion])
        out[c.DELETION_DROP_IN_BLOCK] = _mean(drops[mask])
        out[c.DELETION_DROP_OUTSIDE] = _mean(drops[~mask])
    if report.dominant is not None:
        out.update(dominant_metrics(report.dominant, found))
    if report.cka_without_dominant is not None and largest:
        out[c.BLOCK_MEAN_CKA_WITHOUT_DOMINANT] = mean_off_diagonal(report.cka_without_dominant, largest.start, largest.end)
        out[c.BLOCK_MEAN_CKA_WITHOUT_RANDOM] = mean_off_diagonal(report.cka_without_random, largest.start, largest.end)
        out[c.DOMINANT_REMOVED] = float(report.dominant_removed)
    return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}


def fit_to_training_set(train_accuracy: float | None, label: str) -> float | None:
    """1.0 if the model fits its training set (clean accuracy >= FITS_TRAINING_SET), 0.0 if not
    (with a warning that names it), None when no training accuracy is known."""
    if train_accuracy is None:
        return None
    if train_accuracy >= FITS_TRAINING_SET:
        return 1.0
    warnings.warn(
        f"{label} fits only {train_accuracy:.1%} of its training set (under {FITS_TRAINING_SET:.0%}): an under-trained "
        "ResNet looks like one big block, so its block metrics mean little; train it longer or with a lower lr",
        stacklevel=2,
    )
    return 0.0


def probe_training_indices(train_labels: torch.Tensor, which: str, fraction: float, subset_seed: int,
                           expected_hash: str | None, limit: int, what: str) -> torch.Tensor:
    """Indices of the probes' training examples: the model's own training subset ('subset') or the
    whole training set ('full'), thinned to at most `limit` (0: no limit) by a fixed stride so
    every class stays represented. A subset whose hash differs from the one recorded at training
    time is refused, naming `what` (the model)."""
    if which == "full":
        index = torch.arange(len(train_labels))
    else:
        index = subset_indices(train_labels, fraction, subset_seed)
        if expected_hash and indices_hash(index) != expected_hash:
            raise ValueError(f"{what}: its training subset ({expected_hash}) is not in this copy of the data; "
                             "point data_dir at the data it was trained on, or use probe_train=full")
    if limit > 0 and len(index) > limit:
        index = index[:: math.ceil(len(index) / limit)]
    return index


def cross_seed_similarity(cross: np.ndarray, blocks_a: list) -> dict[str, float]:
    """Mean CKA between the same layer of two seeds (the diagonal of their cross matrix), inside
    model A's blocks and outside them; NaN where a side is empty."""
    diag = np.diag(cross)
    mask = in_block_mask(blocks_a, len(diag))
    return {c.SAME_LAYER_CKA_IN_BLOCK: float(diag[mask].mean()) if mask.any() else np.nan,
            c.SAME_LAYER_CKA_OUTSIDE: float(diag[~mask].mean()) if (~mask).any() else np.nan}
