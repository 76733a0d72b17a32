"""What data a run used, as MLflow datasets (`mlflow.log_input`): the UI's Dataset column and
each run's inputs say which images trained or were analysed, by name, digest and source.

- training: `<dataset>-f<fraction>` (e.g. cifar10-f0.25), digest = the subset's hash (the same
  hash the version's `subset_hash` tag holds), context "training";
- analysis: `<dataset>-test-n<examples>`, digest = the hash of the analysed test examples,
  context "analysis".
The source is the data folder, or torchvision's download URL. Only shapes are recorded, never
the images, so MLflow is handed zero-stride stand-ins of the right shape and type, not a copy
of the subset (150 MB for CIFAR-10's training set).
"""

from __future__ import annotations

import warnings

import mlflow
import torch

from ..data import ImageData, indices_hash

__all__ = ["log_training_data", "log_analysed_examples"]


def _log(images: torch.Tensor, labels: torch.Tensor, count: int, source: str, name: str, digest: str,
         context: str) -> mlflow.data.Dataset:
    """Log `count` examples shaped like `images` and `labels` (whose values are never read); returns the dataset."""
    def stand_in(t: torch.Tensor):
        return torch.zeros((), dtype=t.dtype).expand(count, *t.shape[1:]).numpy()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_numpy(stand_in(images), targets=stand_in(labels), source=source or None, name=name,
                                         digest=digest)
    mlflow.log_input(dataset, context=context)
    return dataset


def log_training_data(data: ImageData, fraction: float, subset: torch.Tensor) -> None:
    """The training subset of the active run."""
    _log(data.train_x, data.train_y, len(subset), data.source, f"{data.name}-f{fraction:g}", indices_hash(subset), "training")


def log_analysed_examples(data: ImageData, index: torch.Tensor) -> mlflow.data.Dataset:
    """The test examples the active run analysed (the dataset its metrics are measured on)."""
    return _log(data.test_x, data.test_y, len(index), data.source, f"{data.name}-test-n{len(index)}", indices_hash(index), "analysis")
