"""Linear CKA with the unbiased HSIC estimator, accumulated over minibatches (the paper's estimator).

    CKA(X, Y) = sum_i HSIC1(K_i, L_i) / sqrt(sum_i HSIC1(K_i, K_i) * sum_i HSIC1(L_i, L_i))

K_i = X_i X_i^T is the linear Gram of minibatch i. HSIC1 (Song et al., 2012) is the dot product of
the two U-centred Grams over n(n-3). Stacking the flattened U-centred Grams of every layer turns
all layer pairs of a batch into one matrix product, U U^T, and HSIC is summed over batches and
normalised once at the end (averaging per-batch CKA values would be another, biased estimator).

Precision: features are centred over the batch, in their own precision, before the Gram (U-centring
is blind to a mean shift, and removing it first avoids cancellation when ReLU outputs have large
means); the Gram is then a float32 product (TF32 off on CUDA), and U-centring, the stacked product
and every sum are float64. That is the analysis engine's precision (similarity.batch_reductions)
and the default of `gram`, `cka` and `MinibatchCKA.update`: about twice as fast as float64 Grams,
and within 1e-8 of a float64 computation on real ResNet activations and with offsets of 1e4
(tests/test_similarity.py pins 1e-7). `dtype=torch.float64` gives the float64 path, within 1e-9 of
the term-by-term reference (tests/test_cka.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..config import MIN_HSIC_BATCH
from ..device import flat_features

__all__ = ["centred", "gram", "u_center", "double_center", "cka", "MinibatchCKA", "shuffled_hsic", "CENTRINGS"]

CENTRINGS = ("unbiased", "biased", "none")


def centred(x: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Features of shape (n, ...) flattened per example (a view where the layout allows), minus their
    batch mean, in `dtype`. The mean is removed in the input's precision (float64 stays float64 until
    then), so a large offset costs nothing; for float32 activations this is their one copy."""
    x = flat_features(torch.as_tensor(x))
    x = x.to(torch.promote_types(x.dtype, dtype))
    return (x - x.mean(dim=0, keepdim=True)).to(dtype)


def gram(x: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Linear Gram matrix of the batch-centred features, x of shape (n, ...) flattened per example:
    float32 by default (the engine's precision), float64 with `dtype=torch.float64`."""
    x = centred(x, dtype)
    return x @ x.T


def u_center(grams: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """U-centre a stack of Grams (..., n, n): zero the diagonal, remove row and column means with
    the unbiased corrections, zero the diagonal again. Then HSIC1(K, L) = <U(K), U(L)> / (n(n-3)).
    `inplace` overwrites `grams` instead of a copy (for a caller that has no further use of it)."""
    n = grams.shape[-1]
    k = grams if inplace else grams.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    means = k.sum(dim=-1) / (n - 2)
    means = means - means.sum(dim=-1, keepdim=True) / (2 * (n - 1))
    k -= means[..., :, None]
    k -= means[..., None, :]
    k.diagonal(dim1=-2, dim2=-1).zero_()
    return k


def double_center(grams: torch.Tensor) -> torch.Tensor:
    """H K H, the centring of the classic (biased) HSIC estimator."""
    return grams - grams.mean(dim=-1, keepdim=True) - grams.mean(dim=-2, keepdim=True) + grams.mean(dim=(-2, -1), keepdim=True)


def cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, debiased: bool = True,
        dtype: torch.dtype = torch.float32) -> float:
    """Linear CKA between two full representations of the same n examples (n x d1, n x d2).

    debiased=True: the unbiased HSIC estimator (the paper's); False: the classic biased linear
    CKA of Kornblith et al. (2019). `dtype`: the Grams' precision, as for `gram`.
    """
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples and y {y.shape[0]}; CKA compares the same examples")
    if debiased:
        acc = MinibatchCKA(["x"], ["y"], dtype=dtype)
        acc.update([x], [y])
        return float(acc.compute()[0, 0])
    centred = double_center(torch.stack([gram(x, dtype), gram(y, dtype)]).double()).flatten(1)
    products = centred @ centred.T
    _check_self(products.diagonal(), ["x", "y"])
    return float(products[0, 1] / torch.sqrt(products[0, 0] * products[1, 1]))


class MinibatchCKA:
    """Layer-by-layer CKA accumulated over minibatches.

    Within one model: `update(feats)` per batch, `compute()` gives the symmetric L x L matrix with
    a unit diagonal. Across two models: `update(feats_a, feats_b)` with the same examples in both,
    `compute()` gives La x Lb. Features are per-layer tensors of any shape (n, ...), whose Grams
    `update` computes in `dtype` (float32, the engine's precision, or float64); or pass Grams
    directly to `update_grams` (the analysis engine computes them inside forward hooks).
    `centring`: "unbiased" (U-centring, the paper's HSIC1), "biased" (H K H, the classic HSIC of
    Kornblith et al. 2019) or "none" (kernels compared as they are: measures.py's mutual_knn).
    """

    def __init__(self, names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None,
                 dtype: torch.dtype = torch.float32, centring: str = "unbiased"):
        if centring not in CENTRINGS:
            raise ValueError(f"centring={centring!r} is not one of {', '.join(CENTRINGS)}")
        self.names_a = list(names_a) if names_a is not None else None
        self.names_b = list(names_b) if names_b is not None else None
        self.dtype = dtype
        self.centring = centring
        self.cross: torch.Tensor | None = None  # sum of HSIC1(K_a, K_b), La x Lb (or La x La)
        self.self_a: torch.Tensor | None = None  # sum of HSIC1(K_a, K_a)
        self.self_b: torch.Tensor | None = None
        self.within: bool | None = None  # set by the first batch
        self.batches = 0

    def update(self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor] | None = None) -> None:
        grams_a = torch.stack([gram(f, self.dtype) for f in feats_a])
        grams_b = None if feats_b is None else torch.stack([gram(f, self.dtype) for f in feats_b])
        self.update_grams(grams_a, grams_b, consume=True)

    def update_grams(self, grams_a: torch.Tensor, grams_b: torch.Tensor | None = None, consume: bool = False) -> None:
        """Add one batch given its Grams, stacked (L, n, n), float32 or float64 (U-centred in
        float64 either way). `consume`: float64 Grams the caller no longer needs are U-centred in
        place (saves a copy of the stack); Grams of another dtype are converted, never touched."""
        n = grams_a.shape[-1]
        if n < MIN_HSIC_BATCH:
            raise ValueError(f"a minibatch of {n} examples is too small for unbiased HSIC; use batch_size >= {MIN_HSIC_BATCH}")
        if grams_b is not None and grams_b.shape[-1] != n:
            raise ValueError(f"model A saw {n} examples and model B {grams_b.shape[-1]}; pass the same batch to both")
        ua = _centred_flat(grams_a, consume, self.centring)
        scale = {"unbiased": 1.0 / (n * (n - 3)), "biased": 1.0 / (n - 1) ** 2, "none": 1.0 / n}[self.centring]
        if grams_b is None:
            cross = (ua @ ua.T) * scale  # all layer pairs in one product
            self_a = cross.diagonal().clone()
            self_b = self_a
        else:
            ub = _centred_flat(grams_b, consume, self.centring)
            cross = (ua @ ub.T) * scale
            self_a = (ua * ua).sum(1) * scale
            self_b = (ub * ub).sum(1) * scale
        if self.cross is None:
            self.cross, self.self_a, self.self_b = cross, self_a, self_b
            self.within = grams_b is None
        else:
            if cross.shape != self.cross.shape or self.within != (grams_b is None):
                raise ValueError(f"batch has {tuple(cross.shape)} layer pairs, earlier batches {tuple(self.cross.shape)}")
            self.cross += cross
            self.self_a += self_a
            if not self.within:
                self.self_b += self_b
        self.batches += 1

    def compute(self, symmetrise: bool = True) -> np.ndarray:
        """The CKA matrix as float64. Raises naming any layer whose summed self-HSIC is not positive.
        Within one model it is made exactly symmetric with a unit diagonal unless `symmetrise` is
        False (the matrix as estimated, for the sanity checks of science/sanity.py)."""
        if self.cross is None:
            raise ValueError("no minibatch was added; call update() first")
        _check_self(self.self_a, self.names_a)
        self_b = self.self_a if self.within else self.self_b
        _check_self(self_b, self.names_b if not self.within else self.names_a)
        out = self.cross / torch.sqrt(self.self_a[:, None] * self_b[None, :])
        out = out.cpu().numpy()
        if self.within and symmetrise:
            out = (out + out.T) / 2  # exact symmetry, and exactly 1 on the diagonal
            np.fill_diagonal(out, 1.0)
        return out


def shuffled_hsic(grams: torch.Tensor, generator: torch.Generator, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """For each layer of a stack of Grams (L, n, n): (<U(K), U(P K P^T)>, <U(K), U(K)>) in float64,
    P one random permutation of the batch (drawn from `generator`). Summed over batches, their
    ratio is each layer's CKA with its own batch-permuted activations: the shuffled baseline of
    science/sanity.py. U-centring commutes with the permutation, so U(P K P^T) = P U(K) P^T. Layers
    are taken `chunk` at a time, so the extra memory is a few Grams."""
    perm = torch.randperm(grams.shape[-1], generator=generator).to(grams.device)
    cross, own = [], []
    for part in grams.split(chunk):
        u = u_center(part.to(torch.float64))  # a copy: the caller's Grams are left as they are
        cross.append((u * u[:, perm][:, :, perm]).sum((1, 2)))
        own.append((u * u).sum((1, 2)))
    return torch.cat(cross), torch.cat(own)


def _centred_flat(grams: torch.Tensor, consume: bool, centring: str = "unbiased") -> torch.Tensor:
    """Centred float64 Grams (U-centred, double-centred or as they are), flattened per layer; in
    place where `grams` is a copy already."""
    wide = grams.to(torch.float64)
    if centring == "biased":
        return double_center(wide).flatten(1)
    if centring == "none":
        return wide.flatten(1)
    return u_center(wide, inplace=consume or wide is not grams).flatten(1)


def _check_self(self_hsic: torch.Tensor, names: Sequence[str] | None) -> None:
    bad = torch.nonzero(~(self_hsic > 0)).flatten().tolist()
    if bad:
        labels = [names[i] if names else f"layer {i}" for i in bad]
        raise ValueError(
            f"self-HSIC is not positive for {', '.join(labels[:10])}{' ...' if len(bad) > 10 else ''}: "
            "the layer is constant or dead over the examples, so CKA is undefined; leave it out of `layers`"
        )
