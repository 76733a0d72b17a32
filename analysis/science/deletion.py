"""Deleting residual blocks: test accuracy with one block at a time replaced by its shortcut.

Only blocks with an identity shortcut can go (a projection block changes the shape). A deleted
block returns its input unchanged: the block computes relu(residual + x) with x already the
output of a ReLU, so dropping the residual branch leaves exactly x.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..nets import ModelConfig, predict_logits, residual_blocks

__all__ = ["deleted", "deletion_accuracy"]


@contextlib.contextmanager
def deleted(model: torch.nn.Module, block: str) -> Iterator[None]:
    """While open, `block` passes its input through unchanged."""
    handle = model.get_submodule(block).register_forward_hook(lambda _m, inputs, _out: inputs[0])
    try:
        yield
    finally:
        handle.remove()


def deletion_accuracy(model: torch.nn.Module, config: ModelConfig, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 1000) -> dict[str, float]:
    """Accuracy with each deletable block removed in turn, keyed by block name ('stage2.block3')."""
    out = {}
    for block in residual_blocks(config, identity_only=True):
        with deleted(model, block):
            logits = predict_logits(model, images, batch_size)
        out[block] = float((logits.argmax(1).cpu() == labels.cpu()).float().mean())
    return out
