"""The CIFAR ResNet v1 family of Nguyen, Raghu & Kornblith (2021): arch "resnet".

depth = 6n + 2: a 3x3 stem conv, three stages of n basic blocks (16k, 32k, 64k channels at
32x32, 16x16, 8x8 for width multiplier k), global average pool, linear head. The first block of
stages 2 and 3 downsamples with stride 2 and a 1x1 projection shortcut; every other shortcut is
the identity. He-normal init on conv and dense kernels.

Every layer the paper compares is its own module, reached by name (nets.family.layer_names):
9 + 21n layers for depth 6n+2:

    stem.conv  stem.bn  stem.relu
    stageS.blockB.{conv1, bn1, relu1, conv2, bn2, [shortcut.conv, shortcut.bn], add, relu}
    pool  logits

The projection shortcut exists in two blocks (stage2.block1 and stage3.block1), which gives the
4 layers beyond 3 + 21n + 2. ReLUs are not in-place, so a hooked tensor is never mutated later.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.resnet import conv1x1, conv3x3

from ..family import Family, ModelConfig, register
from ..layers import Add, GlobalAvgPool

__all__ = ["ResNet", "FAMILY"]

STAGE_CHANNELS = (16, 32, 64)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, projection: bool):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(OrderedDict(conv=conv1x1(c_in, c_out, stride), bn=nn.BatchNorm2d(c_out)))
                         if projection else nn.Identity())
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
        self.stem = nn.Sequential(OrderedDict(conv=conv3x3(3, c1), bn=nn.BatchNorm2d(c1), relu=nn.ReLU()))
        c_in = c1
        for stage in (1, 2, 3):
            c_out = config.channels(stage)
            blocks = OrderedDict()
            for block in range(1, config.stage_blocks[stage - 1] + 1):
                projection = config.has_projection(stage, block)
                blocks[f"block{block}"] = BasicBlock(c_in, c_out, 2 if projection else 1, projection)
                c_in = c_out
            self.add_module(f"stage{stage}", nn.Sequential(blocks))
        self.pool = GlobalAvgPool()
        self.logits = nn.Linear(c_in, config.num_classes)
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


FAMILY = register(Family(
    name="resnet",
    summary="the paper's CIFAR ResNet: depth 6n+2, width k on every stage (16k, 32k, 64k channels)",
    network=ResNet,
    depth_base=8, depth_step=6, depth_rule="6n+2 with n >= 1", depth_examples=(8, 14, 20, 26, 32, 38, 44, 56, 110, 164),
    default_depth=20,
    stage_blocks=lambda depth: ((depth - 2) // 6,) * 3,
    stage_channels=lambda stage, width: STAGE_CHANNELS[stage - 1] * width,
    projected_stages=frozenset({2, 3}),
    stem_layers=("conv", "bn", "relu"),
    branch_layers=("conv1", "bn1", "relu1", "conv2", "bn2"),
    streamed=False,
    name_pattern="{dataset}-resnet{depth}-w{width}",
))
