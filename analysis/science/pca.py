"""The first principal component of every layer, and what CKA looks like without it.

Per layer, the activations over the analysis examples are centred and their first principal
component (PC1) estimated by streaming block power iteration (subspace iteration with `block`
vectors and a Rayleigh-Ritz step), one forward pass over the examples per iteration. It never
forms the d x d covariance (d reaches 160,000 at width 10) or the N x N Gram: each pass
accumulates X^T (X V), which costs O(N d block). Share of variance = lambda_1 / trace(C), both from
the same pass; the top Ritz value converges as (lambda_{block+1} / lambda_1)^iterations, so it is
exact to float precision where PC1 dominates (the block structure) and slightly low where the
spectrum is flat, where the share is small anyway. `pc_share_residual` reports convergence.

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

from ..nets import stream

__all__ = ["PC1", "estimate_pc1"]


@dataclasses.dataclass
class PC1:
    directions: list[torch.Tensor]  # unit vector per layer (d,), float32, on the model's device
    share: np.ndarray  # lambda_1 / total variance per layer
    residual: np.ndarray  # ||C v - lambda_1 v|| / lambda_1 per layer: 0 when converged


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
    basis: list[torch.Tensor | None] = [None] * n_layers  # V per layer, (d, block), float64
    shift: list[torch.Tensor | None] = [None] * n_layers  # first batch's mean (float32), removed before the products
    generator = torch.Generator().manual_seed(seed)
    n = len(images)

    def one_pass(v: list[torch.Tensor | None]) -> tuple[list, list, list]:
        cv = [None] * n_layers  # sum of X^T (X V), float64
        total = [None] * n_layers  # sum of X, float64
        sq = [None] * n_layers  # sum of squares, a float64 scalar tensor (no host sync per batch)
        v32: list[torch.Tensor | None] = [None if b is None else b.float() for b in v]

        def consume(i: int, out: torch.Tensor, _rows: slice) -> None:
            x = out.flatten(1).float()
            if shift[i] is None:
                shift[i] = x.mean(0)
            x = x - shift[i]
            if v[i] is None:
                q, _ = torch.linalg.qr(torch.randn(x.shape[1], block, generator=generator, dtype=torch.float64).to(device))
                v[i], v32[i] = q, q.float()
            xv = x @ v32[i]
            batch_cv, batch_sum, batch_sq = (x.T @ xv).double(), x.sum(0, dtype=torch.float64), torch.vdot(x.flatten(), x.flatten()).double()
            if cv[i] is None:
                cv[i], total[i], sq[i] = batch_cv, batch_sum, batch_sq
            else:
                cv[i] += batch_cv
                total[i] += batch_sum
                sq[i] += batch_sq

        stream(model, images, names, consume, batch_size, bf16=bf16)
        return cv, total, sq

    residual = np.zeros(n_layers)
    share = np.zeros(n_layers)
    directions: list[torch.Tensor] = [None] * n_layers  # type: ignore[list-item]
    for _ in tqdm(range(iterations), desc="PC1 power iterations", disable=None if progress is None else not progress):
        cv, total, sq = one_pass(basis)
        for i in range(n_layers):
            mean = total[i] / n
            c_v = cv[i] / n - torch.outer(mean, mean @ basis[i])  # covariance times V
            h = basis[i].T @ c_v  # Rayleigh-Ritz on span(V)
            values, vectors = torch.linalg.eigh((h + h.T) / 2)
            top = basis[i] @ vectors[:, -1]
            lam = float(values[-1])
            c_top = c_v @ vectors[:, -1]
            residual[i] = float(torch.linalg.norm(c_top - lam * top) / lam) if lam > 0 else np.inf
            variance = float(sq[i]) / n - float(mean @ mean)
            share[i] = lam / variance if variance > 0 else np.nan
            directions[i] = (top / torch.linalg.norm(top)).float()
            basis[i], _ = torch.linalg.qr(c_v)
    dead = [names[i] for i in range(n_layers) if not np.isfinite(share[i])]
    if dead:
        raise ValueError(f"layer(s) {', '.join(dead[:5])} have zero variance over the examples; PC1 is undefined")
    return PC1(directions=directions, share=share, residual=residual)
