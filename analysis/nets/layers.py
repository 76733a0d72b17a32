"""Building blocks that every family shares: the residual add and the global pool as modules of
their own (so each is reached by name and fires one hook), and the split of parameters that the
paper's L2 penalty applies to; and the dense layer of a pack (training/pack.py)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Add", "GlobalAvgPool", "PackedLinear", "decayed_parameters"]


class Add(nn.Module):
    """The residual sum as a module, so that it can be hooked by name."""

    def forward(self, residual: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return residual + shortcut


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class PackedLinear(nn.Module):
    """K linear layers side by side: input (B, K x in) -> output (B, K x out), model k's features
    through model k's weight (weight (K, out, in), bias (K, out)) in one batched product."""

    def __init__(self, size: int, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.size, self.in_features, self.out_features = size, in_features, out_features
        self.weight = nn.Parameter(torch.empty(size, out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(size, out_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_model = x.view(len(x), self.size, self.in_features).transpose(0, 1)  # (K, B, in)
        out = torch.baddbmm(self.bias.unsqueeze(1), per_model, self.weight.transpose(1, 2)) if self.bias is not None \
            else torch.bmm(per_model, self.weight.transpose(1, 2))
        return out.transpose(0, 1).reshape(len(x), self.size * self.out_features)


def decayed_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(conv and dense kernels, everything else): the paper's L2 applies to the first group only."""
    kernels, others = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_kernel = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear, PackedLinear))
            (kernels if is_kernel else others).append(p)
    return kernels, others
