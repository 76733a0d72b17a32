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

from .cka import gram
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
def batch_grams(model: torch.nn.Module, names: Sequence[str], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Grams (L, n, n) float64 of the named layers, logits) for one batch of uint8 images."""
    device = next(model.parameters()).device
    grams = torch.empty(len(names), len(images), len(images), dtype=torch.float64, device=device)

    def store(i: int, out: torch.Tensor) -> None:
        grams[i] = gram(out)

    x = to_float(images.to(device)).contiguous(memory_format=torch.channels_last)
    with tapped(model, names, store), autocast(device):
        logits = model(x)
    return grams, logits.float()
