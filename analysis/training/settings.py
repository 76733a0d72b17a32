"""A training's settings (config.TrainConfig) against what exists: its model family, the family's
depths and widths, the datasets, the penalised layers; and what follows from them, the network's
config and the data it trains on.

config.py holds values and imports nothing of the project; the checks that need the families and
datasets live here, where both are known. Entry points call `check` (or `check_grid`) before any
work, so a bad setting costs one line.
"""

from __future__ import annotations

from ..config import Grid, TrainConfig, require
from ..data import DATASETS, ImageData, load_dataset
from ..nets import ModelConfig, all_families, family, penalised_layers

__all__ = ["check", "check_grid", "model_config", "training_data"]


def model_config(config: TrainConfig, num_classes: int = 10) -> ModelConfig:
    """The network a training builds (checks the family, depth and width)."""
    return ModelConfig(depth=config.depth, width=config.width, num_classes=num_classes, arch=config.arch)


def check(config: TrainConfig) -> None:
    """Refuse, in one line naming the setting, a training whose family, depth, width, dataset or
    penalised layers do not exist."""
    model = model_config(config)
    require(config.dataset in DATASETS, "dataset", config.dataset, f"one of {', '.join(DATASETS)}")
    if config.dataset == "imagenet":
        streamed = " or ".join(f"arch={f.name}" for f in all_families() if f.streamed)
        require(model.family.streamed, "dataset", config.dataset,
                f"imagenet with {streamed} (ImageNet is streamed; arch={config.arch} trains in memory)")
    if config.pc1_penalty > 0:
        penalised_layers(model, config.pc1_penalty_layers)


def check_grid(grid: Grid, base: TrainConfig) -> None:
    """Every cell of a sweep's grid, checked as a training before anything runs."""
    for config in grid.configs(base):
        check(config)


def training_data(config: TrainConfig) -> ImageData:
    """The dataset a training reads, through its family's pipeline (streamed or decoded in memory)."""
    return load_dataset(config.dataset, config.data_dir or None, config.image_size, stream=family(config.arch).streamed)
