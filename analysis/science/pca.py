"""The first principal component of every layer, and what CKA looks like without it.

Per layer, the activations over the analysis examples are centred and their first principal
component (PC1) estimated by streaming block power iteration (subspace iteration with `block`
vectors and a Rayleigh-Ritz step), one forward pass over the examples per iteration. It never
forms the d x d covariance (d reaches 160,000 at width 10) or the N x N Gram: each pass
accumulates X^T (X V), which costs O(N d block). Share of variance = lambda_1 / trace(C), both from
the same pass; the top Ritz value converges as (lambda_{block+1} / lambda_1)^iterations, so it is
exact to float precision where PC1 dominates (the block structure) and slightly low where the
spectrum is flat, where the share is small anyway. `pc_share_residual` reports convergence.
The last pass also yields every example's PC1 score (dominant.py ranks the examples on them).

Removing PC1 from centred activations X (unit direction v) gives X' = X - (Xv) v^T, whose Gram is
X X^T - q q^T with q = Xv. So the CKA passes need only q per layer and batch beside the Gram:
CKA without PC1 and CKA of the PC1 projections alone (Gram q q^T) come from the same forward
pass as the plain heatmap (similarity.batch_reductions). U-centring ignores mean shifts, so
batch-centred and globally centred activations give the same Grams here.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..device import flat_features
from ..nets import feature_widths, stream

__all__ = ["PC1", "estimate_pc1", "batch_pc1_share"]


@dataclasses.dataclass
class PC1:
    directions: list[torch.Tensor]  # unit vector per layer (d,), float32, on the model's device
    share: np.ndarray  # lambda_1 / total variance per layer
    residual: np.ndarray  # ||C v - lambda_1 v|| / lambda_1 per layer: 0 when converged
    scores: np.ndarray  # (layers, N) float32: each example's centred activations projected on the layer's PC1


@torch.inference_mode()
def estimate_pc1(
    model: torch.nn.Module,
    names: Sequence[str],
    images: torch.Tensor,
    batch_size: int = 256,
    iterations: int = 6,
    block: int = 4,
    seed: int = 0,
    progress: bool | None = None,
    bf16: bool = False,
) -> PC1:
    device = next(model.parameters()).device
    n_layers = len(names)
    n = len(images)
    # Per layer, kept between passes: a shift (the first batch's mean, removed before the products,
    # so no large mean is squared), the basis V (d, block) and X^T X V, all float32 (orthonormal
    # columns, and sums of a few float32 products), and float64 column sums and sums of squares.
    # They are views into a few buffers allocated before any pass: long-lived small allocations
    # made between the per-batch temporaries fragment the heap (a second call peaked at 4.3 GiB
    # instead of 0.9 for a ResNet-110 before this).
    widths = feature_widths(model, names, images, bf16=bf16)
    bounds = np.concatenate([[0], np.cumsum(widths)]).tolist()
    shift_all, started = torch.empty(bounds[-1], device=device), [False] * n_layers
    basis_all = torch.empty(bounds[-1], block, device=device)
    # The last pass keeps every example's X V (n x block per layer, tiny): the final direction is
    # V w, so each example's PC1 score is (X V) w less the mean's, with no pass of its own.
    xv_last = torch.empty(n_layers, n, block, device=device)
    last = [False]
    cv_all = torch.empty(bounds[-1], block, device=device)
    total_all = torch.empty(bounds[-1], dtype=torch.float64, device=device)
    sq = torch.empty(n_layers, dtype=torch.float64, device=device)
    views = [slice(bounds[i], bounds[i + 1]) for i in range(n_layers)]
    shift, basis, cv, total = ([buffer[v] for v in views] for buffer in (shift_all, basis_all, cv_all, total_all))
    generator = torch.Generator().manual_seed(seed)
    for i in range(n_layers):
        basis[i].copy_(torch.linalg.qr(torch.randn(widths[i], block, generator=generator, dtype=torch.float64))[0])

    def consume(i: int, out: torch.Tensor, rows: slice) -> None:
        x = flat_features(out).float()
        if not started[i]:
            shift[i].copy_(x.mean(0))
            started[i] = True
        x = x - shift[i]
        xv = x @ basis[i]
        if last[0]:
            xv_last[i, rows] = xv
        xv1 = torch.cat([xv, torch.ones(len(x), 1, device=x.device)], 1)
        product = x.T @ xv1  # X^T X V and, in its last column, the column sums: one read of x
        cv[i] += product[:, :-1]
        total[i] += product[:, -1]
        sq[i] += torch.vdot(x.flatten(), x.flatten())

    residual = np.zeros(n_layers)
    share = np.zeros(n_layers)
    scores = np.zeros((n_layers, n), dtype=np.float32)
    directions: list[torch.Tensor] = [None] * n_layers  # type: ignore[list-item]
    for iteration in tqdm(range(iterations), desc="PC1 power iterations", disable=None if progress is None else not progress):
        last[0] = iteration == iterations - 1
        for buffer in (cv_all, total_all, sq):
            buffer.zero_()
        stream(model, images, names, consume, batch_size, bf16=bf16)
        for i in range(n_layers):  # Rayleigh-Ritz on span(V), in float64, one layer at a time
            v = basis[i].double()
            mean = total[i] / n
            c_v = cv[i].double() / n - torch.outer(mean, mean @ v)  # covariance times V
            h = v.T @ c_v
            values, vectors = torch.linalg.eigh((h + h.T) / 2)
            top = v @ vectors[:, -1]
            lam = float(values[-1])
            c_top = c_v @ vectors[:, -1]
            residual[i] = float(torch.linalg.norm(c_top - lam * top) / lam) if lam > 0 else np.inf
            variance = float(sq[i]) / n - float(mean @ mean)
            share[i] = lam / variance if variance > 0 else np.nan
            directions[i] = (top / torch.linalg.norm(top)).float()
            if last[0]:
                scores[i] = ((xv_last[i].double() @ vectors[:, -1] - mean @ top) / torch.linalg.norm(top)).cpu().numpy()
            basis[i].copy_(torch.linalg.qr(c_v)[0])
    dead = [names[i] for i in range(n_layers) if not np.isfinite(share[i])]
    if dead:
        raise ValueError(f"layer(s) {', '.join(dead[:5])} have zero variance over the examples; PC1 is undefined")
    return PC1(directions=directions, share=share, residual=residual, scores=scores)


def batch_pc1_share(features: torch.Tensor) -> torch.Tensor:
    """The share of a batch's variance along its first principal component, differentiably: the
    top eigenvalue of the batch-centred Gram over its trace (the Gram is n x n, so this costs
    O(n^2 d) and an n x n eigenproblem, float64). The training penalty (train -P pc1_penalty)."""
    x = flat_features(features).float()
    x = x - x.mean(0)
    gram = (x @ x.T).double()
    return torch.linalg.eigvalsh(gram)[-1] / gram.diagonal().sum().clamp_min(torch.finfo(torch.float64).tiny)
