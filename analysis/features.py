"""Activations by layer name, reduced inside the forward hook so none outlives its layer.

One forward pass per batch feeds every reduction: each hook hands the layer's output to a
function (a Gram for CKA, a projection for PCA, ...) and only that function's result is kept.
Memory therefore stays O(layers x what the reductions keep), never a layer's activations over
the data set, and never even all layers' activations of one batch at once.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from .cka import centred
from .data import to_float
from .runtime import autocast


@contextlib.contextmanager
def tapped(model: torch.nn.Module, names: Sequence[str], on_output: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """While open, every forward pass calls on_output(i, output) for layer names[i]. Whatever
    on_output returns is dropped: the layer's output passes on unchanged."""

    def hook_for(i: int):
        def hook(_module, _inputs, output) -> None:
            on_output(i, output)

        return hook

    handles = []
    try:
        for i, name in enumerate(names):
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"layer {name!r} is not in the model") from None
            handles.append(module.register_forward_hook(hook_for(i)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def batch_reductions(
    model: torch.nn.Module,
    names: Sequence[str],
    images: torch.Tensor,
    directions: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One forward pass over a batch of uint8 images, reduced per layer as it runs.

    Returns (Grams (L, n, n) float64 of the batch-centred activations; with `directions`, the
    projections (L, n) of those activations on each layer's unit direction, else None; logits).
    """
    device = next(model.parameters()).device
    n = len(images)
    grams = torch.empty(len(names), n, n, dtype=torch.float64, device=device)
    projections = None if directions is None else torch.empty(len(names), n, dtype=torch.float64, device=device)

    def reduce(i: int, out: torch.Tensor) -> None:
        x = centred(out)
        grams[i] = x @ x.T
        if projections is not None:
            projections[i] = x @ directions[i]

    x = to_float(images.to(device)).contiguous(memory_format=torch.channels_last)
    with tapped(model, names, reduce), autocast(device):
        logits = model(x)
    return grams, projections, logits.float()
