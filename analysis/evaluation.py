"""Logits, loss and accuracy of a model on uint8 images, in inference mode and in batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import to_float
from .runtime import autocast


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """float32 logits (N, classes) on the model's device; BN in inference mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size].to(device, non_blocking=True))
        with autocast(device):
            out.append(model(x.contiguous(memory_format=torch.channels_last)).float())
    model.train(was_training)
    return torch.cat(out)


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean cross-entropy and accuracy over the whole set."""
    logits = predict_logits(model, images, batch_size)
    labels = labels.to(logits.device)
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
    }
