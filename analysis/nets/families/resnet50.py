"""The ImageNet ResNet-50 family of Nguyen, Raghu & Kornblith (2021), arch "resnet50": ResNet-50
with stage 3 scaled.

ResNet-50 has bottleneck blocks [3, 4, 6, 3] in four stages (inner widths 64, 128, 256, 512, outputs
4x those). The paper makes its deeper ImageNet models by adding blocks to stage 3 and its wider
ones by widening stage 3 alone: here depth = 50 + 3k puts 6 + k blocks in stage 3, and width
multiplies stage 3's channels (inner and output).

The layers are torchvision's resnet50 (7x7 stride-2 stem conv and a 3x3 stride-2 max-pool,
stride on the 3x3 conv, a 1x1 projection shortcut on the first block of every stage, zero-mean He
init), built from torchvision's conv1x1/conv3x3; at depth 50 and width 1 the network is
torchvision's resnet50 parameter for parameter (tests/test_resnet.py loads torchvision's weights
into it and compares the logits). Its own module tree differs in one way, for analysis:
torchvision's Bottleneck applies one ReLU module three times and adds in place, so a forward hook
on it fires three times and the add cannot be reached; here every ReLU and the add are modules of
their own, so each layer is reached by name and fires once:

    stem.conv  stem.bn  stem.relu  stem.pool
    stageS.blockB.{conv1, bn1, relu1, conv2, bn2, relu2, conv3, bn3, [shortcut.conv, shortcut.bn], add, relu}
    pool  logits
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.resnet import conv1x1, conv3x3

from ..family import Family, ModelConfig, register
from ..layers import Add, GlobalAvgPool

__all__ = ["BottleneckResNet", "EXPANSION", "FAMILY"]

EXPANSION = 4  # a bottleneck's output channels over its inner width
INNER = (64, 128, 256, 512)  # the bottlenecks' inner widths per stage; width scales stage 3's


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, inner: int, stride: int, projection: bool):
        super().__init__()
        c_out = inner * EXPANSION
        self.conv1, self.bn1, self.relu1 = conv1x1(c_in, inner), nn.BatchNorm2d(inner), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = conv3x3(inner, inner, stride), nn.BatchNorm2d(inner), nn.ReLU()
        self.conv3, self.bn3 = conv1x1(inner, c_out), nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(OrderedDict(conv=conv1x1(c_in, c_out, stride), bn=nn.BatchNorm2d(c_out)))
                         if projection else nn.Identity())
        self.add = Add()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.relu1(self.bn1(self.conv1(x)))
        residual = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(residual)))))
        return self.relu(self.add(residual, self.shortcut(x)))


class BottleneckResNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c1 = 64
        self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, c1, 7, stride=2, padding=3, bias=False), bn=nn.BatchNorm2d(c1),
                                              relu=nn.ReLU(), pool=nn.MaxPool2d(3, stride=2, padding=1)))
        c_in = c1
        for stage, count in enumerate(config.stage_blocks, start=1):
            inner = config.channels(stage)
            blocks = OrderedDict()
            for block in range(1, count + 1):
                stride = 2 if block == 1 and stage > 1 else 1
                blocks[f"block{block}"] = Bottleneck(c_in, inner, stride, projection=config.has_projection(stage, block))
                c_in = inner * EXPANSION
            self.add_module(f"stage{stage}", nn.Sequential(blocks))
        self.pool = GlobalAvgPool()
        self.logits = nn.Linear(c_in, config.num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.head(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features to logits: what follows the last residual block."""
        return self.logits(self.pool(x))


FAMILY = register(Family(
    name="resnet50",
    summary="the paper's ImageNet ResNet-50 family: depth 50+3k, width on stage 3 only, trained on streamed crops",
    network=BottleneckResNet,
    depth_base=50, depth_step=3,
    depth_rule="50+3k with k >= 0 (stage 3 of the ResNet-50 family holds 6+k bottleneck blocks)",
    depth_examples=(50, 53, 56, 62, 74, 101),
    default_depth=50,
    stage_blocks=lambda depth: (3, 4, 6 + (depth - 50) // 3, 3),
    stage_channels=lambda stage, width: INNER[stage - 1] * (width if stage == 3 else 1),
    projected_stages=frozenset({1, 2, 3, 4}),
    stem_layers=("conv", "bn", "relu", "pool"),
    branch_layers=("conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3"),
    streamed=True,
    name_pattern="{dataset}-resnet50-d{depth}-w{width}",
))
