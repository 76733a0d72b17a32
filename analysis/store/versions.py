"""A registered version's tags as one typed record: parsed once, formatted once.

`train` writes a version's tags with `VersionInfo.to_tags()`; every reader (queries, analysis,
predictions, sweeps, the report) reads them with `VersionInfo.from_tags()`, which also applies the
defaults of versions registered before a tag existed, here and nowhere else:
- `arch`: absent before the ResNet-50 family existed, so such a version is the CIFAR family;
- `image_size`: absent before resizing existed, so such a version was trained as stored (0).
Numbers are written as they always were ('1' for width 1.0, '0.25', accuracies to 6 significant
digits), so registry filters such as tags.width='0.25' keep matching old and new versions.
This module needs no torch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from ..config import FITS_TRAINING_SET, short_number
from . import contract as c

__all__ = ["VersionInfo", "tag_value", "version_description", "trained_summary"]

LEGACY_ARCH = "resnet"
LEGACY_IMAGE_SIZE = 0


def tag_value(value: float) -> str:
    """Tags are strings; keep numbers short and parseable."""
    return f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def _number(kind, text: str | None):
    """A tag's number, or None when absent or not a number (a version registered by hand)."""
    try:
        return None if text is None else kind(float(text)) if kind is int else kind(text)
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """What a version's tags say: its training's config cell, its data and its scores."""

    dataset: str | None = None
    arch: str = LEGACY_ARCH
    depth: int | None = None
    width: float | None = None
    seed: int | None = None
    data_fraction: float | None = None
    epochs: int | None = None
    image_size: int = LEGACY_IMAGE_SIZE
    train_size: int | None = None
    subset_hash: str | None = None
    test_accuracy: float | None = None
    train_accuracy: float | None = None  # clean accuracy on the training subset
    train_run_id: str | None = None
    lineage: str | None = None
    fingerprint: str | None = None

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "VersionInfo":
        return cls(
            dataset=tags.get(c.DATASET),
            arch=tags.get(c.ARCH, LEGACY_ARCH),
            depth=_number(int, tags.get(c.DEPTH)),
            width=_number(float, tags.get(c.WIDTH)),
            seed=_number(int, tags.get(c.SEED)),
            data_fraction=_number(float, tags.get(c.DATA_FRACTION)),
            epochs=_number(int, tags.get(c.EPOCHS)),
            image_size=_number(int, tags.get(c.IMAGE_SIZE)) or LEGACY_IMAGE_SIZE,
            train_size=_number(int, tags.get(c.TRAIN_SIZE)),
            subset_hash=tags.get(c.SUBSET_HASH),
            test_accuracy=_number(float, tags.get(c.TEST_ACCURACY)),
            train_accuracy=_number(float, tags.get(c.TRAIN_ACCURACY)),
            train_run_id=tags.get(c.TRAIN_RUN_ID),
            lineage=tags.get(c.LINEAGE),
            fingerprint=tags.get(c.FINGERPRINT),
        )

    def to_tags(self, keys: tuple[str, ...] | None = None) -> dict[str, str]:
        """The tags (those named in `keys`, or all that are known), each number written once, here."""
        spelled = {
            c.DATASET: self.dataset, c.DEPTH: self.depth, c.WIDTH: _short(self.width), c.SEED: self.seed,
            c.DATA_FRACTION: _short(self.data_fraction), c.ARCH: self.arch, c.IMAGE_SIZE: self.image_size,
            c.EPOCHS: self.epochs, c.TRAIN_SIZE: self.train_size, c.SUBSET_HASH: self.subset_hash,
            c.TEST_ACCURACY: _score(self.test_accuracy), c.TRAIN_ACCURACY: _score(self.train_accuracy),
            c.TRAIN_RUN_ID: self.train_run_id, c.LINEAGE: self.lineage, c.FINGERPRINT: self.fingerprint,
        }
        return {k: str(v) for k, v in spelled.items() if v is not None and (keys is None or k in keys)}

    @property
    def config_tags(self) -> dict[str, str]:
        """The tags that say which training this is (contract.VERSION_CONFIG): what an analysis run carries."""
        return self.to_tags(c.VERSION_CONFIG)

    @property
    def label(self) -> str:
        """'ResNet-56 w2 · data 0.25 · seed 3', for figures and the report."""
        return f"ResNet-{self.depth} w{_short(self.width)} · data {_short(self.data_fraction)} · seed {self.seed}"


def _short(value: float | None) -> str | None:
    return None if value is None else short_number(value)


def _score(value: float | None) -> str | None:
    return None if value is None else tag_value(value)


def trained_summary(info: VersionInfo) -> str:
    """What a version is and how it was trained, in a sentence or two."""
    family = "ResNet-50 family" if info.arch == "resnet50" else "CIFAR ResNet"
    what = (f"{info.label} ({family}, depth {info.depth}, width {_short(info.width)}) trained on {_short(info.data_fraction)} "
            f"of {info.dataset}'s training set ({info.train_size or '?'} images) for {info.epochs} epochs, seed {info.seed}.")
    if info.test_accuracy is not None and info.train_accuracy is not None:
        what += f" Test accuracy {info.test_accuracy:.1%}, training accuracy (clean) {info.train_accuracy:.1%}."
    return what


def version_description(info: VersionInfo, metrics: Mapping[str, float] | None = None, analysis_run_id: str = "") -> str:
    """A version's description in the registry: what it is, how it was trained, and, once
    analysed (`metrics` of its newest analysis), the paper's question answered: has it a block?"""
    what = trained_summary(info)
    if metrics is None or c.BLOCK_COUNT not in metrics:
        return what + " Not analysed yet: `mlflow run . -e analyze -P models=models:/NAME/VERSION`."
    count = int(metrics[c.BLOCK_COUNT])
    verdict = (f" Block structure: {count} block{'s' if count > 1 else ''}, the largest over "
               f"{metrics[c.BLOCK_LARGEST_FRAC]:.0%} of its layers (mean CKA {metrics[c.BLOCK_MEAN_CKA]:.3f})"
               if count else " Block structure: none")
    if info.train_accuracy is not None and info.train_accuracy < FITS_TRAINING_SET:
        verdict += (f"; it fits under {FITS_TRAINING_SET:.0%} of its training set, and an under-trained ResNet "
                    "looks like one big block, so this says little")
    return what + verdict + (f" (analysis run {analysis_run_id})." if analysis_run_id else ".")
