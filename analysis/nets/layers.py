"""Building blocks that every family shares: the residual add and the global pool as modules of
their own (so each is reached by name and fires one hook), and the split of parameters that the
paper's L2 penalty applies to."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Add", "GlobalAvgPool", "decayed_parameters"]


class Add(nn.Module):
    """The residual sum as a module, so that it can be hooked by name."""

    def forward(self, residual: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return residual + shortcut


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def decayed_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(conv and dense kernels, everything else): the paper's L2 applies to the first group only."""
    kernels, others = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_kernel = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (kernels if is_kernel else others).append(p)
    return kernels, others
