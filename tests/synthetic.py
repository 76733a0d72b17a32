"""Synthetic "models" whose named layers return fixed feature tables: activations with a known
structure (a spectrum, a shared principal component) for the science tests."""

import torch
from torch import nn


class Lookup(nn.Module):
    """A 'model' whose named layers return rows of fixed feature tables, the row index encoded in
    the first two pixels of each uint8 image: synthetic activations with known structure."""

    def __init__(self, tables: dict[str, torch.Tensor]):
        super().__init__()
        self.names = list(tables)
        for name, table in tables.items():
            self.register_buffer(f"table_{name}", table)
            self.add_module(name, nn.Identity())
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        idx = (x[:, 0, 0, 0] * 255).round().long() + 256 * (x[:, 0, 0, 1] * 255).round().long()
        out = None
        for name in self.names:
            out = getattr(self, name)(getattr(self, f"table_{name}")[idx] * self.scale)
        return out


def index_images(n: int) -> torch.Tensor:
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    return images


def known_spectrum(n: int, d: int, singular: list[float], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(singular), generator=g, dtype=torch.float64))
    u = u - u.mean(0)  # centred over examples
    u, _ = torch.linalg.qr(u)
    v, _ = torch.linalg.qr(torch.randn(d, len(singular), generator=g, dtype=torch.float64))
    x = u @ torch.diag(torch.tensor(singular, dtype=torch.float64)) @ v.T + 5.0  # plus a mean offset
    return x, v[:, 0]


def shared_pc_layers(n: int = 512, d: int = 30, seed: int = 0):
    """Three layers sharing one dominant direction of large variance, plus independent noise."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, 1, generator=g) * 20
    return {f"l{i}": common @ torch.randn(1, d, generator=g) + torch.randn(n, d, generator=g) for i in range(3)}
