"""Linear probes on residual-block outputs (and the BN output before each residual add).

Solver: ridge regression onto one-hot labels, solved exactly in closed form, prediction by
argmax (a least-squares classifier), on features after the paper's 2x2 max-pool, flattened. Every
layer gets the same settings: features are centred, and the ridge is `ridge` x (mean feature
variance), which makes it invariant to each layer's scale.

Memory is bounded, whatever the depth. Per layer of pooled width d, over N training examples:
- d <= N (primal): one pass accumulates X^T X (d x d) and X^T Y in float32 products of the
  features minus a shift (the first batch's mean, so no large mean is squared), summed per batch;
  then (C + lam I) W = X^T Y / N is solved by a float64 Cholesky factorisation;
- d > N (dual): the features themselves are kept (N x d float32, smaller than d x d) and the
  same solution comes from the N x N system, W = X^T (X X^T / N + lam I)^-1 Y / N.
Layers are fitted in groups whose accumulators fit `memory_bytes` (config.PROBE_MEMORY_BYTES),
one forward pass over the training examples per group.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PROBE_MEMORY_BYTES, PROBE_RIDGE
from ..device import flat_features
from ..nets import feature_widths, stream

__all__ = ["LinearProbes", "fit_probes", "probe_accuracy"]


def pooled(out: torch.Tensor, pool: int) -> torch.Tensor:
    """The probe's features of a layer's output: max-pooled, flattened, float32."""
    if out.ndim == 4 and pool > 1:
        out = F.max_pool2d(out, pool)
    return flat_features(out).float()


@dataclasses.dataclass
class LinearProbes:
    names: list[str]
    weights: list[torch.Tensor]  # (d, classes) per layer, float32
    biases: list[torch.Tensor]  # (classes,) per layer, float32
    pool: int


def _groups(widths: Sequence[int], n: int, memory_bytes: int) -> list[list[int]]:
    """Layer indices in consecutive groups whose accumulators (4 min(d^2, N d) bytes each) fit."""
    groups, used = [[]], 0
    for i, d in enumerate(widths):
        size = 4 * min(d * d, n * d)
        if groups[-1] and used + size > memory_bytes:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += size
    return groups


def _solve(gram: torch.Tensor, rhs: torch.Tensor, lam: float) -> torch.Tensor:
    """(gram + lam I)^-1 rhs for a symmetric positive semi-definite float64 gram, by Cholesky."""
    factor = torch.linalg.cholesky(gram + lam * torch.eye(len(gram), dtype=gram.dtype, device=gram.device))
    return torch.cholesky_solve(rhs, factor)


def fit_probes(
    model: torch.nn.Module,
    names: Sequence[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    pool: int = 2,
    ridge: float = PROBE_RIDGE,
    batch_size: int = 500,
    progress: bool | None = None,
    bf16: bool = False,
    memory_bytes: int = PROBE_MEMORY_BYTES,
) -> LinearProbes:
    device = next(model.parameters()).device
    n = len(images)
    onehot = F.one_hot(labels.to(device), num_classes).to(torch.float64)
    ymean = onehot.mean(0)
    widths = feature_widths(model, names, images, lambda out: pooled(out, pool), bf16)
    weights: list = [None] * len(names)
    biases: list = [None] * len(names)
    for group in _groups(widths, n, memory_bytes):
        local = {i: k for k, i in enumerate(group)}
        dual = [widths[i] > n for i in group]
        kept = [torch.empty(n, widths[i], device=device) if dual[k] else None for k, i in enumerate(group)]
        shift, xtx, xty, xsum = [None] * len(group), [None] * len(group), [None] * len(group), [None] * len(group)

        def consume(i: int, out: torch.Tensor, rows: slice) -> None:
            k = local[i]
            x = pooled(out, pool)
            if dual[k]:
                kept[k][rows] = x
                return
            if shift[k] is None:
                shift[k] = x.mean(0)
                xtx[k] = torch.zeros(widths[i], widths[i], device=device)
                xty[k] = torch.zeros(widths[i], num_classes, dtype=torch.float64, device=device)
                xsum[k] = torch.zeros(widths[i], dtype=torch.float64, device=device)
            x = x - shift[k]
            xtx[k].addmm_(x.T, x)
            xty[k] += (x.T @ onehot[rows].float()).double()
            xsum[k] += x.sum(0, dtype=torch.float64)

        stream(model, images, [names[i] for i in group], lambda j, out, rows: consume(group[j], out, rows), batch_size,
               "probe features", progress, bf16)
        for k, i in enumerate(group):
            if dual[k]:
                x = kept[k].double()
                kept[k] = None
                mean = x.mean(0)
                x -= mean
                gram = x @ x.T / n
                lam = ridge * float(gram.trace().clamp_min(1e-12)) / widths[i]  # mean feature variance
                w = x.T @ _solve(gram, (onehot - ymean) / n, lam)
            else:
                centre = xsum[k] / n
                cov = xtx[k].double() / n - torch.outer(centre, centre)
                xtx[k] = None
                cross = xty[k] / n - torch.outer(centre, ymean)
                lam = ridge * float(cov.diagonal().mean().clamp_min(1e-12))
                w = _solve(cov, cross, lam)
                mean = shift[k].double() + centre
            weights[i] = w.float()
            biases[i] = (ymean - mean @ w).float()
    return LinearProbes(list(names), weights, biases, pool)


def probe_accuracy(
    model: torch.nn.Module,
    probes: LinearProbes,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 500,
    progress: bool | None = None,
    bf16: bool = False,
) -> np.ndarray:
    """Accuracy of each layer's probe on (images, labels)."""
    device = next(model.parameters()).device
    labels = labels.to(device)
    correct = torch.zeros(len(probes.names), dtype=torch.int64, device=device)

    def consume(i: int, out: torch.Tensor, rows: slice) -> None:
        scores = pooled(out, probes.pool) @ probes.weights[i] + probes.biases[i]
        correct[i] += (scores.argmax(1) == labels[rows]).sum()

    stream(model, images, probes.names, consume, batch_size, "probe scoring", progress, bf16)
    return (correct.double() / len(images)).cpu().numpy()
