"""Every training hyperparameter in one place, and the presets that set them.

The paper's CIFAR recipe (PAPER.md): SGD with momentum 0.9, lr 0.01 with cosine decay to 0,
batch 128, L2 1e-4 on conv and dense kernels (weight_decay 2e-4 in PyTorch's convention, since
Keras adds lambda * ||w||^2 to the loss and its gradient is 2 * lambda * w), 300 epochs,
reflect-pad-4 crops and flips, inputs in [0, 1]. Only the epoch count differs between presets:
`quick` finishes a ResNet-20 on the full training set in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from .data import DATASETS
from .models import ModelConfig

PRESET_EPOCHS = {"quick": 2, "paper": 300}
DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    depth: int = 20
    width: float = 1.0
    seed: int = 0
    data_fraction: float = 1.0
    epochs: int = PRESET_EPOCHS["quick"]
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    dataset: str = "cifar10"
    data_dir: str = ""  # "" means $WIDEDEEP_DATA_DIR, then the cache's data folder
    device: str = "auto"
    subset_seed: int = 0  # picks the data_fraction subset; shared by all seeds, as in the paper
    eval_batch_size: int = 1000
    eval_every: int = 1  # epochs between test-set evaluations; the last epoch is always evaluated
    val_fraction: float = 0.0  # > 0: hold out this share of the training subset and score it instead of the test set
    channels_last: bool = True  # measured faster on CPU and GPU alike (docs/performance.md)
    compile: bool = False  # torch.compile the training step; off by default: see docs/performance.md

    def __post_init__(self) -> None:
        ModelConfig(depth=self.depth, width=self.width)  # validates depth and width
        checks = [
            (0 < self.data_fraction <= 1, "data_fraction", "in (0, 1], e.g. 0.5 or 0.25"),
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 2, "batch_size", "an integer >= 2 (BatchNorm needs two examples)"),
            (self.lr > 0, "lr", "a positive float"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "a float >= 0"),
            (self.dataset in DATASETS, "dataset", f"one of {', '.join(DATASETS)}"),
            (self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}"),
            (self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1"),
            (self.eval_every >= 1, "eval_every", "an integer >= 1"),
            (0 <= self.val_fraction < 1, "val_fraction", "in [0, 1)"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; use {allowed}")

    def model_config(self, num_classes: int) -> ModelConfig:
        return ModelConfig(depth=self.depth, width=self.width, num_classes=num_classes)

    def fingerprint(self, *extra: str) -> str:
        """A hash of everything that determines the trained weights (device settings excluded)."""
        fields = dataclasses.asdict(self)
        for k in ("device", "eval_batch_size", "eval_every", "channels_last", "compile"):
            fields.pop(k)
        return hashlib.sha256(json.dumps([fields, *extra], sort_keys=True).encode()).hexdigest()[:20]


def resolve_epochs(preset: str, epochs: int) -> int:
    """`epochs` if given (> 0), else the preset's count."""
    if preset not in PRESET_EPOCHS:
        raise ValueError(f"preset={preset!r} is unknown; use one of {', '.join(PRESET_EPOCHS)}")
    return epochs if epochs > 0 else PRESET_EPOCHS[preset]
