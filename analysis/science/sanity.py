"""Sanity checks on every CKA analysis: what a careful researcher checks before believing a heatmap.

- The matrix as estimated, before it is made exactly symmetric: its diagonal is 1 and it is
  symmetric to rounding, and no value lies outside [-1, 1] (the summed HSICs are inner products,
  so Cauchy-Schwarz bounds them). A violation is a bug, and fails the analysis.
- A shuffled baseline: each layer against its own activations with the batch order permuted,
  which pairs every example with another one. Independent representations have HSIC 0 in
  expectation, so this must be near 0; a large value means the estimator sees structure where
  there is none (a biased estimator, or too few examples).
- Seed-to-seed identification (Kornblith et al., 2019, "Similarity of Neural Network
  Representations Revisited", section 6.1): between two seeds of one architecture, a layer should
  be most similar to the same layer of the other seed; the share of layers for which it is,
  within one position, is the measure's accuracy.
"""

from __future__ import annotations

import numpy as np

from ..store import contract as c

__all__ = ["MATRIX_TOLERANCE", "matrix_checks", "shuffled_metrics", "seed_identification"]

MATRIX_TOLERANCE = 1e-6  # the sums are float64; float32 Grams move values by ~1e-8 (science/cka.py)


def matrix_checks(raw: np.ndarray, names: list[str] | None = None, tolerance: float = MATRIX_TOLERANCE) -> dict[str, float]:
    """The sanity metrics of a within-model (or joint) CKA matrix as estimated; raises ValueError,
    naming the worst layer, when the diagonal is not 1, the matrix not symmetric, or a value
    outside [-1, 1], beyond `tolerance`."""
    raw = np.asarray(raw, dtype=np.float64)
    diagonal = np.abs(np.diag(raw) - 1)
    asymmetry = np.abs(raw - raw.T)
    excess = np.maximum(np.abs(raw) - 1, 0)
    metrics = {c.SANITY_DIAGONAL_ERROR: float(diagonal.max()), c.SANITY_ASYMMETRY: float(asymmetry.max()),
               c.SANITY_RANGE_EXCESS: float(excess.max())}

    def layer(i: int) -> str:
        return names[i] if names else f"layer {i}"

    for key, values, what in ((c.SANITY_DIAGONAL_ERROR, diagonal, "CKA of a layer with itself is not 1"),
                              (c.SANITY_ASYMMETRY, asymmetry, "the CKA matrix is not symmetric"),
                              (c.SANITY_RANGE_EXCESS, excess, "a CKA value lies outside [-1, 1]")):
        if metrics[key] > tolerance:
            worst = np.unravel_index(np.argmax(values), values.shape)
            where = " and ".join(dict.fromkeys(layer(int(i)) for i in worst))
            raise ValueError(f"CKA sanity check failed: {what} (by {metrics[key]:.3g}, at {where}); "
                             "this is a bug in the estimator or its inputs, please report it")
    return metrics


def shuffled_metrics(shuffled: np.ndarray) -> dict[str, float]:
    """Metrics of the per-layer shuffled baseline (CKA of each layer with its batch-permuted self)."""
    values = np.abs(np.asarray(shuffled, dtype=np.float64))
    return {c.SANITY_SHUFFLED_MAX: float(values.max()), c.SANITY_SHUFFLED_MEAN: float(values.mean())}


def seed_identification(cross: np.ndarray, slack: int = 1) -> float:
    """The share of model A's layers whose most similar layer of model B (same architecture,
    another seed; `cross` is A x B) is the same layer, within `slack` positions."""
    cross = np.asarray(cross)
    if cross.shape[0] != cross.shape[1]:
        raise ValueError(f"seed identification compares one architecture's layers; got {cross.shape[0]} and {cross.shape[1]}")
    best = np.argmax(cross, axis=1)
    return float(np.mean(np.abs(best - np.arange(len(best))) <= slack))
