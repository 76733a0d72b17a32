"""Deleting residual blocks: test accuracy with one block at a time replaced by its shortcut.

Only blocks with an identity shortcut can go (a projection block changes the shape). A deleted
block returns its input unchanged: the block computes relu(residual + x) with x already the
output of a ReLU, so dropping the residual branch leaves exactly x.

`deletion_accuracy` runs the blocks of each batch in order once; at every deletable block the
rest of the network runs from that block's input, so deleting block k costs only the blocks
after it: about half the work of running each deletion from the input image.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..device import activation_precision
from ..nets import ModelConfig, as_input, residual_blocks

__all__ = ["deleted", "deletion_accuracy"]


@contextlib.contextmanager
def deleted(model: torch.nn.Module, block: str) -> Iterator[None]:
    """While open, `block` passes its input through unchanged."""
    handle = model.get_submodule(block).register_forward_hook(lambda _m, inputs, _out: inputs[0])
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def deletion_accuracy(model: torch.nn.Module, config: ModelConfig, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 1000, bf16: bool = False) -> dict[str, float]:
    """Accuracy with each deletable block removed in turn, keyed by block name ('stage2.block3')."""
    order = residual_blocks(config)
    blocks = [model.get_submodule(name) for name in order]
    correct = dict.fromkeys(residual_blocks(config, identity_only=True), 0)
    device = next(model.parameters()).device
    labels = labels.to(device)
    was_training = model.training
    model.eval()
    try:
        with activation_precision(device, bf16):
            for s in range(0, len(images), batch_size):
                h = model.stem(as_input(images[s : s + batch_size], device))
                for k, name in enumerate(order):
                    if name in correct:
                        z = h  # block k deleted: its output is its input
                        for later in blocks[k + 1 :]:
                            z = later(z)
                        correct[name] += int((model.head(z).argmax(1) == labels[s : s + batch_size]).sum())
                    h = blocks[k](h)
    finally:
        model.train(was_training)
    return {name: count / len(images) for name, count in correct.items()}
