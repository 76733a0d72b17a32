"""Linear probes on residual-block outputs (and the BN output before each residual add).

Solver: ridge regression onto one-hot labels, solved exactly in closed form, prediction by
argmax (a least-squares classifier). It streams: one forward pass over the probe's training
examples accumulates, per layer, X^T X and X^T Y in float64 (features after the paper's 2x2
max-pool, flattened), so no activation is stored; the d x d system is then solved once per
layer. Every layer gets the same settings: features are centred, and the ridge is
`ridge` x (mean feature variance), which makes it invariant to each layer's scale.
The cost is O(N d^2) per layer; d after the 2x2 pool is 4096k for the first stage at width k,
so for wide models raise `pool` (4 gives d = 1024k) or lower the example count.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PROBE_RIDGE
from ..nets import ModelConfig, residual_blocks, stream

__all__ = ["LinearProbes", "probe_layers", "fit_probes", "probe_accuracy"]


def probe_layers(config: ModelConfig) -> list[str]:
    """For each residual block: the BN before the add, then the block's output."""
    return [f"{b}.{layer}" for b in residual_blocks(config) for layer in ("bn2", "relu")]


def pooled(out: torch.Tensor, pool: int) -> torch.Tensor:
    if out.ndim == 4 and pool > 1:
        out = F.max_pool2d(out, pool)
    return out.flatten(1).to(torch.float64)


@dataclasses.dataclass
class LinearProbes:
    names: list[str]
    weights: list[torch.Tensor]  # (d, classes) per layer
    biases: list[torch.Tensor]  # (classes,) per layer
    pool: int


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
) -> LinearProbes:
    device = next(model.parameters()).device
    onehot = F.one_hot(labels.to(device), num_classes).to(torch.float64)
    xtx: list = [None] * len(names)
    xty: list = [None] * len(names)
    xsum: list = [None] * len(names)

    def consume(i: int, out: torch.Tensor, rows: slice) -> None:
        x = pooled(out, pool)
        y = onehot[rows]
        xtx[i] = x.T @ x if xtx[i] is None else xtx[i].addmm_(x.T, x)
        xty[i] = x.T @ y if xty[i] is None else xty[i].addmm_(x.T, y)
        xsum[i] = x.sum(0) if xsum[i] is None else xsum[i].add_(x.sum(0))

    stream(model, images, names, consume, batch_size, "probe features", progress)
    n = len(images)
    ymean = onehot.mean(0)
    weights, biases = [], []
    for i in range(len(names)):
        mean = xsum[i] / n
        cov = xtx[i] / n - torch.outer(mean, mean)
        cross = xty[i] / n - torch.outer(mean, ymean)
        lam = ridge * float(cov.diagonal().mean().clamp_min(1e-12))
        w = torch.linalg.solve(cov + lam * torch.eye(len(cov), dtype=cov.dtype, device=cov.device), cross)
        weights.append(w)
        biases.append(ymean - mean @ w)
    return LinearProbes(list(names), weights, biases, pool)


def probe_accuracy(
    model: torch.nn.Module,
    probes: LinearProbes,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 500,
    progress: bool | None = None,
) -> np.ndarray:
    """Accuracy of each layer's probe on (images, labels)."""
    device = next(model.parameters()).device
    labels = labels.to(device)
    correct = torch.zeros(len(probes.names), dtype=torch.int64, device=device)

    def consume(i: int, out: torch.Tensor, rows: slice) -> None:
        scores = pooled(out, probes.pool) @ probes.weights[i] + probes.biases[i]
        correct[i] += (scores.argmax(1) == labels[rows]).sum()

    stream(model, images, probes.names, consume, batch_size, "probe scoring", progress)
    return (correct.double() / len(images)).cpu().numpy()
