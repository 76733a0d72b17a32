"""Model families as records, and the small config every network is built from.

A family (the `arch` of a training) is one `Family` record, registered by the module that defines
its network (nets/families/, in the manner of timm's `register_model`): how to build it, which
depths exist and which it trains at by default, how its stages are laid out and named, whether its
images are streamed, and how its registered models are named. Everything else is derived from the
record, for every family alike:

    stem layers  stageS.blockB.{branch layers, [shortcut.conv, shortcut.bn], add, relu}  pool  logits

- the layers CKA compares (`layer_names`), the residual block outputs (`layer_names(.., "blocks")`);
- the layers linear probes read: each block's last branch layer (the BN before the add) and output;
- the blocks deletion can remove: those whose shortcut is the identity (`residual_blocks`);
- the block outputs the PC1 penalty may name (`penalised_layers`).
So adding a family is adding one module to nets/families/.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Callable

from torch import nn

from ..config import short_number

__all__ = ["Family", "register", "family", "families", "ModelConfig", "registered_name", "block_layer_names",
           "residual_blocks", "layer_names", "penalised_layers", "probe_layers"]


@dataclasses.dataclass(frozen=True)
class Family:
    """What the project knows about one family of residual networks."""

    name: str  # the `arch` value that selects it
    summary: str  # one line for help texts
    network: Callable[["ModelConfig"], nn.Module]  # builds a freshly initialised network
    depth_base: int  # valid depths: depth_base + depth_step * k for k >= 0
    depth_step: int
    depth_rule: str  # the valid depths in words, for errors and help
    depth_examples: tuple[int, ...]
    default_depth: int  # what depth=auto trains
    stage_blocks: Callable[[int], tuple[int, ...]]  # depth -> residual blocks per stage
    stage_channels: Callable[[int, float], float]  # (stage, width) -> channels, before rounding
    projected_stages: frozenset[int]  # stages whose first block has a 1x1 projection shortcut
    stem_layers: tuple[str, ...]  # under stem., in forward order
    branch_layers: tuple[str, ...]  # a block's residual branch in forward order; the last is the BN before the add
    streamed: bool  # trained on streamed ImageFolder crops (data/folder.py), else on decoded images in memory
    name_pattern: str  # the registered model's name, from {dataset}, {depth} and {width}

    def depth_ok(self, depth: object) -> bool:
        return isinstance(depth, int) and depth >= self.depth_base and (depth - self.depth_base) % self.depth_step == 0


_FAMILIES: dict[str, Family] = {}


def register(record: Family) -> Family:
    """Make a family known by its name (once)."""
    if record.name in _FAMILIES:
        raise ValueError(f"model family {record.name!r} is registered twice")
    _FAMILIES[record.name] = record
    return record


def families() -> list[Family]:
    return list(_FAMILIES.values())


def family(arch: str) -> Family:
    """The family named `arch`; an unknown name is refused, listing the known ones."""
    try:
        return _FAMILIES[arch]
    except KeyError:
        raise ValueError(f"arch={arch!r} is unknown; use one of {', '.join(_FAMILIES)}") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """All that is needed to rebuild a network; logged as JSON beside its weights."""

    depth: int = 20
    width: float = 1.0
    num_classes: int = 10
    arch: str = "resnet"

    def __post_init__(self) -> None:
        f = family(self.arch)
        if not f.depth_ok(self.depth):
            raise ValueError(f"depth={self.depth!r} is not {f.depth_rule}; use one of "
                             f"{', '.join(map(str, f.depth_examples))}")
        if not 0 < self.width < 1e4:  # also refuses inf and nan
            raise ValueError(f"width={self.width!r} must be a positive multiplier below 10,000, such as 1, 2 or 0.5")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes={self.num_classes!r} must be an integer >= 2")

    @property
    def family(self) -> Family:
        return family(self.arch)

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        """Residual blocks per stage."""
        return self.family.stage_blocks(self.depth)

    def channels(self, stage: int) -> int:
        """The channels of a stage (1-based; for bottlenecks, their inner width), at least one."""
        return max(1, round(self.family.stage_channels(stage, self.width)))

    def has_projection(self, stage: int, block: int) -> bool:
        """Whether a block's shortcut is a 1x1 projection (its shape changes), not the identity."""
        return block == 1 and stage in self.family.projected_stages

    @property
    def pre_add_bn(self) -> str:
        """The residual branch's last BN in a block, the one before the add."""
        return self.family.branch_layers[-1]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(depth=int(d["depth"]), width=float(d["width"]), num_classes=int(d["num_classes"]),
                   arch=str(d.get("arch", "resnet")))  # configs written before resnet50 existed have no arch


def registered_name(dataset: str, depth: int, width: float, arch: str) -> str:
    """The registered model of a dataset and architecture: 'cifar10-resnet20-w1' for the CIFAR
    family, 'imagenet-resnet50-d56-w2' for the ResNet-50 family; seeds and data fractions are its versions."""
    return family(arch).name_pattern.format(dataset=dataset, depth=depth, width=short_number(width))


def block_layer_names(config: ModelConfig, stage: int, block: int) -> list[str]:
    names = [*config.family.branch_layers, *(["shortcut.conv", "shortcut.bn"] if config.has_projection(stage, block) else []),
             "add", "relu"]
    return [f"stage{stage}.block{block}.{n}" for n in names]


def residual_blocks(config: ModelConfig, identity_only: bool = False) -> list[str]:
    """Names of the residual blocks in forward order, e.g. 'stage2.block3'; with
    `identity_only`, only those whose shortcut is the identity (the ones that can be deleted)."""
    return [
        f"stage{s}.block{b}" for s, count in enumerate(config.stage_blocks, start=1) for b in range(1, count + 1)
        if not (identity_only and config.has_projection(s, b))
    ]


def layer_names(config: ModelConfig, which: str = "all") -> list[str]:
    """The layers the paper compares, in forward order.

    "all": every stem layer, every conv, BN, ReLU and residual add, the pooled features and the
    logits (9 + 21n for the CIFAR family of depth 6n+2).
    "blocks": the output (final ReLU) of each residual block (3n for the CIFAR family).
    Anything else: a comma list of shell-style patterns over the names of "all" ("stage3.*.relu",
    "stem.*,logits"), the matches in forward order; a pattern that matches nothing is refused.
    """
    if which == "blocks":
        return [f"{b}.relu" for b in residual_blocks(config)]
    names = [f"stem.{n}" for n in config.family.stem_layers]
    for stage, count in enumerate(config.stage_blocks, start=1):
        for block in range(1, count + 1):
            names += block_layer_names(config, stage, block)
    names += ["pool", "logits"]
    if which == "all":
        return names
    patterns = [p.strip() for p in which.split(",") if p.strip()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ValueError(f"layers={which!r}: {pattern!r} matches no layer of this network ({names[0]}, {names[1]}, ..., "
                             f"{names[-1]}); -P layers=list prints them all")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def probe_layers(config: ModelConfig) -> list[str]:
    """What linear probes read: for each residual block, the BN before the add, then the block's output."""
    return [f"{b}.{layer}" for b in residual_blocks(config) for layer in (config.pre_add_bn, "relu")]


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
