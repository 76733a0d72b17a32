"""A pack: K networks that differ only in their seed, trained as one network of grouped layers.

Small networks leave a GPU waiting on kernel launches (docs/gpu-results.md: a ResNet-20 at width 1
uses 0.4% of an H200's bf16 peak). Packed, every layer of the K networks is one kernel: each
convolution becomes a grouped convolution with the K networks' channels side by side (groups =
K x its own), each BatchNorm one over K x its channels, the linear head one batched product
(layers.PackedLinear); every model's images go into its own 3 input channels. Nothing crosses from
one network's channels to another's, so each model gets exactly what it gets alone: its own
initialisation (built from its seed, then packed), its own BatchNorm statistics, its own loss and
gradients (the pack's objective is the sum of the models' mean losses); SGD's momentum and weight
decay are per element. Module names do not change, so a layer is reached by name as in one model,
its output holding the K models' channels in order (`chunks`).

A pack of one is the model itself, untouched: a lone training is a pack of one.
Families built from Conv2d, BatchNorm2d, Linear and parameter-free modules pack; any other module
with parameters is refused by name.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from ..nets.layers import PackedLinear

__all__ = ["Pack", "check_pack"]

def check_pack(configs: list) -> None:
    """Refuse, in one line, a pack whose trainings differ in more than their seed."""
    if not configs:
        raise ValueError("a pack needs at least one training")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={','.join(map(str, seeds))} repeats a seed; give each seed once")
    shared = dataclasses.replace(configs[0], seed=0)
    for c in configs[1:]:
        if dataclasses.replace(c, seed=0) != shared:
            differ = sorted(k for k, v in dataclasses.asdict(c).items() if k != "seed" and v != getattr(configs[0], k))
            raise ValueError(f"the trainings of a pack may differ only in seed, not in {', '.join(differ)}")


class Pack:
    """K models of one architecture as one network (`network`); for K = 1, the model itself."""

    def __init__(self, models: list[nn.Module]):
        self.size = len(models)
        self.template = models[0]
        self.network = models[0] if self.size == 1 else _packed(models)

    def inputs(self, batches: list[torch.Tensor]) -> torch.Tensor:
        """The models' own image batches (B, C, H, W) each, as the network's input (B, K C, H, W)."""
        return batches[0] if self.size == 1 else torch.cat(batches, dim=1)

    def per_model(self, logits: torch.Tensor) -> torch.Tensor:
        """The network's logits as (B, K, classes)."""
        return logits.view(len(logits), self.size, -1)

    def chunks(self, activation: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A layer's output as the K models' own outputs (channels are dimension 1)."""
        return (activation,) if self.size == 1 else activation.chunk(self.size, dim=1)

    def state(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's own state dict (parameters and buffers), as one model holds it."""
        if self.size == 1:
            return self.network.state_dict()
        lone = self.template.state_dict()
        return {name: _unpacked(tensor, lone[name], k, self.size) for name, tensor in self.network.state_dict().items()}

    def model(self, k: int) -> nn.Module:
        """Model k as a network of its own (for K = 1 the network itself)."""
        if self.size == 1:
            return self.network
        model = copy.deepcopy(self.template).to(next(self.network.parameters()).device)
        model.load_state_dict(self.state(k))
        return model


def _unpacked(packed: torch.Tensor, lone: torch.Tensor, k: int, size: int) -> torch.Tensor:
    if packed.numel() == lone.numel():  # shared by all (BatchNorm's step count)
        return packed
    return packed.reshape(size, *lone.shape)[k]


def _packed(models: list[nn.Module]) -> nn.Module:
    size = len(models)
    network = copy.deepcopy(models[0])
    for name, module in list(network.named_modules()):
        wide = _wide(module, size, name)
        if wide is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(network.get_submodule(parent) if parent else network, leaf, wide)
    # Every value comes from the models: the wide layers are made without memory or initialisation
    # (which would draw from the global generator), then filled.
    network = network.to_empty(device=next(models[0].parameters()).device)
    states = [m.state_dict() for m in models]
    network.load_state_dict({name: states[0][name] if t.numel() == states[0][name].numel()
                             else torch.stack([s[name] for s in states]).reshape(t.shape)
                             for name, t in network.state_dict().items()})
    first = next(m for m in network.modules() if isinstance(m, nn.Conv2d))
    lone_channels = first.in_channels // size
    # Evaluation feeds every model the same images: a batch of lone-width images is repeated K times.
    network.register_forward_pre_hook(lambda _m, args: (args[0].repeat(1, size, 1, 1), *args[1:])
                                      if args[0].shape[1] == lone_channels else None)
    return network


def _wide(module: nn.Module, size: int, name: str) -> nn.Module | None:
    """The packed replacement of one module (None: it works on packed channels as it is)."""
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(size * module.in_channels, size * module.out_channels, module.kernel_size, module.stride,
                         module.padding, module.dilation, size * module.groups, module.bias is not None, module.padding_mode,
                         device="meta")
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(size * module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                              device="meta")
    if isinstance(module, nn.Linear):
        return PackedLinear(size, module.in_features, module.out_features, module.bias is not None, device="meta")
    if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
        raise ValueError(f"layer {name!r} ({type(module).__name__}) cannot be packed; train its seeds one at a time (seeds=one)")
    return None
