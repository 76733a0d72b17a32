"""The CIFAR ResNet v1 family of Nguyen, Raghu & Kornblith (2021), built from a small config, and
the config of every family (arch "resnet": this one; "resnet50": the ImageNet family, bottleneck.py).

depth = 6n + 2: a 3x3 stem conv, three stages of n basic blocks (16k, 32k, 64k channels at
32x32, 16x16, 8x8 for width multiplier k), global average pool, linear head. The first block of
stages 2 and 3 downsamples with stride 2 and a 1x1 projection shortcut; every other shortcut is
the identity. He-normal init on conv and dense kernels.

Every layer the paper compares is its own module, so it is reached by name (forward hooks, or
`model.get_submodule(name)`) and listed in forward order by `layer_names(config)` without
building the model. For depth 6n+2 that is 9 + 21n layers:

    stem.conv  stem.bn  stem.relu
    stageS.blockB.{conv1, bn1, relu1, conv2, bn2, [shortcut.conv, shortcut.bn], add, relu}
    pool  logits

The projection shortcut exists in two blocks (stage2.block1 and stage3.block1), which gives the
4 layers beyond 3 + 21n + 2. ReLUs are not in-place, so a hooked tensor is never mutated later.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

STAGE_CHANNELS = (16, 32, 64)
ARCHS = ("resnet", "resnet50")
BOTTLENECK_INNER = (64, 128, 256, 512)  # resnet50's inner widths per stage; outputs are 4x


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """All that is needed to rebuild a network; logged as JSON beside its weights."""

    depth: int = 20
    width: float = 1.0
    num_classes: int = 10
    arch: str = "resnet"  # "resnet": CIFAR, depth 6n+2, width on every stage; "resnet50": depth 50+3k, width on stage 3

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r} is unknown; use one of {', '.join(ARCHS)}")
        if self.arch == "resnet" and (not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6):
            raise ValueError(
                f"depth={self.depth!r} is not 6n+2 with n >= 1; use one of 8, 14, 20, 26, 32, 38, 44, 56, 110, 164"
            )
        if self.arch == "resnet50" and (not isinstance(self.depth, int) or self.depth < 50 or (self.depth - 50) % 3):
            raise ValueError(f"depth={self.depth!r} is not 50+3k with k >= 0 (stage 3 of the ResNet-50 family holds 6+k "
                             "bottleneck blocks); use one of 50, 53, 56, 62, 74, 101")
        if not 0 < self.width < 1e4:  # also refuses inf and nan
            raise ValueError(f"width={self.width!r} must be a positive multiplier below 10,000, such as 1, 2 or 0.5")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes!r} must be an integer >= 2")

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        """Residual blocks per stage."""
        if self.arch == "resnet50":
            return (3, 4, 6 + (self.depth - 50) // 3, 3)
        return ((self.depth - 2) // 6,) * 3

    def channels(self, stage: int) -> int:
        """resnet: channels of stage 1, 2 or 3 (the stem has stage 1's); resnet50: the inner width of
        stage 1 to 4's bottlenecks (width scales stage 3's). At least one channel."""
        if self.arch == "resnet50":
            return max(1, round(BOTTLENECK_INNER[stage - 1] * (self.width if stage == 3 else 1)))
        return max(1, round(STAGE_CHANNELS[stage - 1] * self.width))

    def has_projection(self, stage: int, block: int) -> bool:
        """Whether a block's shortcut is a 1x1 projection (its shape changes), not the identity."""
        return block == 1 and (stage > 1 or self.arch == "resnet50")

    @property
    def pre_add_bn(self) -> str:
        """The residual branch's last BN in a block, the one before the add."""
        return "bn3" if self.arch == "resnet50" else "bn2"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(depth=int(d["depth"]), width=float(d["width"]), num_classes=int(d["num_classes"]),
                   arch=str(d.get("arch", "resnet")))  # configs written before resnet50 existed have no arch


def block_layer_names(config: ModelConfig, stage: int, block: int) -> list[str]:
    prefix = f"stage{stage}.block{block}"
    if config.arch == "resnet50":
        names = ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3"]
    else:
        names = ["conv1", "bn1", "relu1", "conv2", "bn2"]
    if config.has_projection(stage, block):
        names += ["shortcut.conv", "shortcut.bn"]
    names += ["add", "relu"]
    return [f"{prefix}.{n}" for n in names]


def residual_blocks(config: ModelConfig, identity_only: bool = False) -> list[str]:
    """Names of the residual blocks in forward order, e.g. 'stage2.block3'; with
    `identity_only`, only those whose shortcut is the identity (the ones that can be deleted)."""
    return [
        f"stage{s}.block{b}" for s, count in enumerate(config.stage_blocks, start=1) for b in range(1, count + 1)
        if not (identity_only and config.has_projection(s, b))
    ]


def layer_names(config: ModelConfig, which: Literal["all", "blocks"] = "all") -> list[str]:
    """The layers the paper compares, in forward order.

    "all": every conv, BN, ReLU, residual add (and resnet50's stem max-pool), the pooled features
    and the logits (9 + 21n for the CIFAR family).
    "blocks": the output (final ReLU) of each residual block (3n for the CIFAR family).
    """
    if which == "blocks":
        return [f"{b}.relu" for b in residual_blocks(config)]
    if which != "all":
        raise ValueError(f"layers={which!r} is not one of 'all', 'blocks'")
    names = ["stem.conv", "stem.bn", "stem.relu"] + (["stem.pool"] if config.arch == "resnet50" else [])
    for stage, count in enumerate(config.stage_blocks, start=1):
        for block in range(1, count + 1):
            names += block_layer_names(config, stage, block)
    return names + ["pool", "logits"]


def penalised_layers(config: ModelConfig, spec: str) -> list[str]:
    """The residual block outputs that `spec` picks: "all", or a comma list of block-output names
    or prefixes of them ("stage3", "stage2.block4"), in forward order."""
    outputs = layer_names(config, "blocks")
    if spec.strip() == "all":
        return outputs
    wanted = [w.strip() for w in spec.split(",") if w.strip()]

    def picks(output: str, w: str) -> bool:
        return output == w or output.startswith(w + ".")

    unmatched = [w for w in wanted if not any(picks(o, w) for o in outputs)]
    if unmatched or not wanted:
        raise ValueError(f"pc1_penalty_layers={spec!r} names no residual block output of a ResNet-{config.depth} "
                         f"({', '.join(unmatched) or 'empty'}); use all, or e.g. stage3 or stage2.block1 "
                         f"(outputs {outputs[0]} to {outputs[-1]})")
    return [o for o in outputs if any(picks(o, w) for w in wanted)]


class Add(nn.Module):
    """The residual sum as a module, so that it can be hooked by name."""

    def forward(self, residual: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return residual + shortcut


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, projection: bool):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(c_out),
                )
            )
            if projection
            else nn.Identity()
        )
        self.add = Add()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu(self.add(residual, self.shortcut(x)))


class ResNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c1 = config.channels(1)
        self.stem = nn.Sequential(
            OrderedDict(conv=conv3x3(3, c1), bn=nn.BatchNorm2d(c1), relu=nn.ReLU())
        )
        c_in = c1
        for stage in (1, 2, 3):
            c_out = config.channels(stage)
            blocks = OrderedDict()
            for block in range(1, config.stage_blocks[stage - 1] + 1):
                stride = 2 if config.has_projection(stage, block) else 1
                blocks[f"block{block}"] = BasicBlock(c_in, c_out, stride, config.has_projection(stage, block))
                c_in = c_out
            self.add_module(f"stage{stage}", nn.Sequential(blocks))
        self.pool = GlobalAvgPool()
        self.logits = nn.Linear(c_in, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.head(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features to logits: what follows the last residual block."""
        return self.logits(self.pool(x))


def decayed_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(conv and dense kernels, everything else): the paper's L2 applies to the first group only."""
    kernels, others = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_kernel = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (kernels if is_kernel else others).append(p)
    return kernels, others
