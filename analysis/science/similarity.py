"""Layer-by-layer CKA of one or more models over a dataset, on the same batches for all.

The paper's protocol: the test images, batches of 256, 10 passes each reshuffled, BN in
inference mode. Every model sees the same batches, and the Grams of all layers of all models
go into one MinibatchCKA, so each batch costs one product of the stacked U-centred Grams; each
model's own heatmap and each cross-model heatmap are blocks of that joint matrix.
With PC1 directions (pca.estimate_pc1), the same forward pass also feeds CKA with each layer's
PC1 removed (Grams K - q q^T) and CKA of the PC1 projections alone (Grams q q^T).
A pass drops its last partial batch (unless it is the only one), so every batch has equal
weight and size. The same batches give the sanity checks (sanity.py): the joint matrix as
estimated, and each layer's CKA with its own batch-permuted activations (cka.shuffled_hsic).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..nets import stream
from ..config import MIN_HSIC_BATCH
from .cka import MinibatchCKA, centred, shuffled_hsic
from .measures import KNN_K, RBF_FRACTION, MeasureAccumulator
from .sanity import matrix_checks

__all__ = ["VARIANTS", "ModelCKA", "pass_batches", "batch_reductions", "model_cka", "float64_cka"]

VARIANTS = ("cka", "without_pc1", "pc1_only")


@dataclasses.dataclass
class ModelCKA:
    names: list[list[str]]  # layer names per model
    joint: dict[str, np.ndarray]  # variant -> CKA over the concatenated layers of all models
    accuracy: list[float]  # accuracy of each model on the examples analysed
    batches: int
    num_examples: int
    sanity: dict[str, float] = dataclasses.field(default_factory=dict)  # the joint matrix as estimated (sanity.matrix_checks)
    shuffled: np.ndarray | None = None  # per layer of all models: CKA with its own batch-permuted activations

    def _span(self, i: int) -> slice:
        offsets = np.cumsum([0] + [len(n) for n in self.names])
        return slice(offsets[i], offsets[i + 1])

    def within(self, i: int, variant: str = "cka") -> np.ndarray:
        return self.joint[variant][self._span(i), self._span(i)]

    def cross(self, i: int, j: int, variant: str = "cka") -> np.ndarray:
        return self.joint[variant][self._span(i), self._span(j)]

    def shuffled_of(self, i: int) -> np.ndarray:
        """Model i's layers' shuffled baseline."""
        return self.shuffled[self._span(i)]


def pass_batches(num_examples: int, batch_size: int, passes: int, seed: int) -> list[torch.Tensor]:
    """Index batches for `passes` reshuffled passes over the examples."""
    if batch_size < MIN_HSIC_BATCH:
        raise ValueError(f"batch_size={batch_size} is too small for unbiased HSIC; use >= {MIN_HSIC_BATCH} (the paper: 256)")
    if num_examples < MIN_HSIC_BATCH:
        raise ValueError(f"num_examples={num_examples} is too small for unbiased HSIC; use >= {MIN_HSIC_BATCH}")
    if passes < 1:
        raise ValueError(f"passes={passes} must be >= 1 (the paper: 10)")
    size = min(batch_size, num_examples)
    out = []
    for p in range(passes):
        order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 7919 + p))
        out += list(order[: num_examples - num_examples % size].split(size))
    return out


def batch_reductions(
    model: torch.nn.Module,
    names: Sequence[str],
    images: torch.Tensor,
    directions: Sequence[torch.Tensor] | None = None,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One forward pass over a batch of uint8 images, reduced per layer as it runs.

    Returns (Grams (L, n, n) float32 of the batch-centred activations; with `directions`, the
    projections (L, n) of those activations on each layer's unit direction, else None; logits).
    Centring first keeps the float32 products well conditioned (post-ReLU means are large); the
    U-centring and every sum after this are float64 (MinibatchCKA.update_grams).
    """
    device = next(model.parameters()).device
    n = len(images)
    grams = torch.empty(len(names), n, n, dtype=torch.float32, device=device)
    projections = None if directions is None else torch.empty(len(names), n, dtype=torch.float32, device=device)

    def reduce(i: int, out: torch.Tensor, _rows: slice) -> None:
        x = centred(out)  # the one copy of the activation
        torch.mm(x, x.T, out=grams[i])
        if projections is not None:
            torch.mv(x, directions[i].to(x.dtype), out=projections[i])

    logits = stream(model, images, names, reduce, batch_size=n, bf16=bf16)
    return grams, projections, logits


def model_cka(
    models: Sequence[torch.nn.Module],
    layer_names: Sequence[Sequence[str]],
    images: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int = 256,
    passes: int = 10,
    seed: int = 0,
    model_labels: Sequence[str] | None = None,
    directions: Sequence[Sequence[torch.Tensor]] | None = None,
    progress: bool | None = None,
    bf16: bool = False,
    measures: Sequence[str] = (),
    rbf_fraction: float = RBF_FRACTION,
    knn_k: int = KNN_K,
) -> ModelCKA:
    """CKA within and across `models` (each already on its device) over uint8 `images`.
    `directions[m][l]`: PC1 of model m's layer l, to also compute the PC1 variants. `measures`:
    further similarity measures of measures.py (besides linear_cka, always computed), from the
    same batches' Grams; their matrices are `joint[measure]`."""
    model_labels = model_labels or [f"model{m}" for m in range(len(models))]
    flat = [f"{label}:{n}" for label, names in zip(model_labels, layer_names) for n in names]
    variants = VARIANTS if directions is not None else VARIANTS[:1]
    accumulators = {v: MinibatchCKA(flat) for v in variants}
    others = {m: MeasureAccumulator(m, flat, rbf_fraction, knn_k) for m in measures if m != "linear_cka"}
    correct = [0] * len(models)
    shuffled = torch.zeros(2, len(flat), dtype=torch.float64)  # summed <U(K), U(PKP^T)> and <U(K), U(K)>
    permutations = torch.Generator().manual_seed(seed)
    batches = pass_batches(len(images), batch_size, passes, seed)
    per_pass = len(batches) // passes
    for k, index in enumerate(tqdm(batches, desc="CKA batches", disable=None if progress is None else not progress)):
        grams, projections = [], []
        batch = images[index]  # read once for all models (streamed images are decoded here)
        for m, (model, names) in enumerate(zip(models, layer_names)):
            g, q, logits = batch_reductions(model, names, batch, None if directions is None else directions[m], bf16)
            device = grams[0].device if grams else g.device
            grams.append(g.to(device))
            if q is not None:
                projections.append(q.to(device))
            if k < per_pass:  # accuracy over the first pass, which sees each example at most once
                correct[m] += int((logits.argmax(1).cpu() == targets[index]).sum())
        grams = torch.cat(grams).to(torch.float64)
        shuffled += torch.stack(shuffled_hsic(grams, permutations)).cpu()
        for accumulator in others.values():  # before the Grams are consumed below
            accumulator.update_grams(grams)
        accumulators["cka"].update_grams(grams, consume=directions is None)
        if directions is not None:  # one stack of Grams at a time besides `grams`: K - qq^T in place
            q = torch.cat(projections).to(torch.float64)
            pc1_only = q[:, :, None] * q[:, None, :]
            accumulators["without_pc1"].update_grams(grams.sub_(pc1_only), consume=True)
            accumulators["pc1_only"].update_grams(pc1_only, consume=True)
    first_pass = sum(len(b) for b in batches[:per_pass])
    return ModelCKA(
        names=[list(n) for n in layer_names],
        joint={**{v: acc.compute() for v, acc in accumulators.items()}, **{m: acc.compute() for m, acc in others.items()}},
        accuracy=[c / first_pass for c in correct],
        batches=len(batches),
        num_examples=len(images),
        sanity=matrix_checks(accumulators["cka"].compute(symmetrise=False), flat),
        shuffled=(shuffled[0] / shuffled[1]).numpy(),
    )


def float64_cka(model: torch.nn.Module, names: Sequence[str], images: torch.Tensor,
                batches: Sequence[torch.Tensor]) -> np.ndarray:
    """The within-model CKA of the same activations over the same `batches` of `images`, every
    Gram, product and sum in float64: the yardstick for the engine's precision (tests, benchmarks)."""
    acc = MinibatchCKA(names, dtype=torch.float64)
    for index in batches:
        feats: list = [None] * len(names)
        stream(model, images[index], names, lambda i, out, _rows: feats.__setitem__(i, out.clone()), batch_size=len(index))
        acc.update(feats)
    return acc.compute()
