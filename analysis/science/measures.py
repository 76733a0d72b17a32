"""Similarity measures researchers check a CKA finding against, each a function of a batch's
linear Gram matrix, which the analysis engine already computes: so each costs a kernel transform
and one more stacked product per batch, never another forward pass.

| measure | kernel on the batch | HSIC estimator | reference |
|---|---|---|---|
| linear_cka | K = X X^T | unbiased (U-centring) | Nguyen et al. 2021, eq. 3; Song et al. 2012 |
| linear_cka_biased | K = X X^T | biased, tr(HKHL)/(n-1)^2 | Kornblith et al. 2019, eq. 3-5 |
| rbf_cka | K_ij = exp(-d_ij^2 / (2 s^2)), s^2 = f^2 median(d^2) | biased | Kornblith et al. 2019, sec. 3 (their `gram_rbf`, threshold f) |
| mutual_knn | A_ij = 1 if j is among the k nearest (cosine) of i | none: sum_i |N_A(i) & N_B(i)| / (n k) | Huh et al. 2024, sec. 2 and App. A |

X holds a layer's batch-centred activations (the engine's Grams are of centred features; for
the mutual nearest neighbours this means cosine similarity of centred features, where Huh et al.
normalise uncentred ones). Every measure is accumulated over minibatches the way the paper
accumulates CKA: the numerator and both self-terms are summed over batches and the ratio taken
once (for mutual_knn the self-terms are n k each, so this is the mean overlap). Each is 1 for
identical representations; linear CKA is invariant to rotations and isotropic scaling, RBF CKA
to rotations and (through the median bandwidth) isotropic scaling, mutual kNN to anything that
keeps each example's nearest neighbours; none to arbitrary invertible linear maps.

Published values reproduced (tests/test_measures.py): on one batch of Kornblith et al.'s demo
data (their notebook, google-research/representation_similarity), linear_cka_biased 0.55761,
rbf_cka at fraction 0.5 0.65483, and linear_cka 0.51346 (their "debiased" CKA), to 5 decimals.
Huh et al. publish no value on reproducible data for mutual_knn; it is checked against its
definition only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..config import MEASURES, AnalysisOptions
from .cka import MinibatchCKA

__all__ = ["MEASURES", "RBF_FRACTION", "KNN_K", "kernel", "MeasureAccumulator"]

RBF_FRACTION = AnalysisOptions.rbf_fraction  # bandwidth as a fraction of the median distance (Kornblith et al. report 0.2, 0.4, 0.8)
KNN_K = AnalysisOptions.knn_k  # neighbours per example (Huh et al. use 10)
CENTRING = {"linear_cka": "unbiased", "linear_cka_biased": "biased", "rbf_cka": "biased", "mutual_knn": "none"}


def kernel(measure: str, grams: torch.Tensor, rbf_fraction: float = RBF_FRACTION, knn_k: int = KNN_K) -> torch.Tensor:
    """The measure's kernel matrices (L, n, n) from linear Grams of batch-centred features (L, n, n)."""
    if measure in ("linear_cka", "linear_cka_biased"):
        return grams
    squared_norms = grams.diagonal(dim1=-2, dim2=-1)
    if measure == "rbf_cka":
        distances = (squared_norms[..., :, None] + squared_norms[..., None, :] - 2 * grams).clamp_min(0)
        median = distances.flatten(-2).quantile(0.5, dim=-1)  # numpy's median over all n^2 entries, as in Kornblith et al.'s gram_rbf
        return torch.exp(-distances / (2 * rbf_fraction**2 * median[..., None, None]))
    if measure == "mutual_knn":
        n = grams.shape[-1]
        if not 0 < knn_k < n:
            raise ValueError(f"knn_k={knn_k} is not allowed for batches of {n}; use an integer in [1, {n - 1}]")
        norms = squared_norms.clamp_min(torch.finfo(grams.dtype).tiny).sqrt()
        cosine = grams / (norms[..., :, None] * norms[..., None, :])
        cosine = cosine - 3 * torch.eye(n, dtype=grams.dtype, device=grams.device)  # never one's own neighbour
        nearest = cosine.topk(knn_k, dim=-1).indices
        return torch.zeros_like(grams).scatter_(-1, nearest, 1.0)
    raise ValueError(f"measure={measure!r} is unknown; use one of {', '.join(MEASURES)}")


class MeasureAccumulator:
    """One measure, accumulated over minibatches from the batches' linear Grams (see the table above)."""

    def __init__(self, measure: str, names: Sequence[str] | None = None, rbf_fraction: float = RBF_FRACTION,
                 knn_k: int = KNN_K):
        if measure not in MEASURES:
            raise ValueError(f"measure={measure!r} is unknown; use one of {', '.join(MEASURES)}")
        if not rbf_fraction > 0:
            raise ValueError(f"rbf_fraction={rbf_fraction!r} is not allowed; use a positive fraction of the median distance, e.g. 0.8")
        self.measure, self.rbf_fraction, self.knn_k = measure, rbf_fraction, knn_k
        self.acc = MinibatchCKA(names, centring=CENTRING[measure])

    def update_grams(self, grams: torch.Tensor) -> None:
        """Add one batch given its linear Grams (L, n, n) of batch-centred features, any float dtype."""
        k = kernel(self.measure, grams.to(torch.float64), self.rbf_fraction, self.knn_k)
        self.acc.update_grams(k, consume=k is not grams)  # the caller's Grams are never changed

    def compute(self) -> np.ndarray:
        """The measure's matrix (within one model: symmetric, unit diagonal)."""
        return self.acc.compute()
