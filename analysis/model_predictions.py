"""Prediction comparisons of registered model groups: cached test logits, statistics, files.

Each version's test-set logits are computed once, saved under the calling run's `logits/` and
recorded on the version (tag `test_logits`); later comparisons download them instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient

from . import plots, registry
from .data import ImageData
from .evaluation import predict_logits
from .predictions import GroupComparison, compare_groups

LOGITS_TAG = "test_logits"


def group_uris(spec: str, which: str) -> list[str]:
    """A registry filter ("name='cifar10-resnet20-w4'") or comma-separated models:/ URIs."""
    spec = spec.strip()
    if not spec:
        raise ValueError(f"{which} is empty; give a registry filter such as \"name='cifar10-resnet20-w4'\" or models:/ URIs")
    return registry.split_uris(spec) if spec.startswith("models:/") else registry.uris_matching(spec, which)


def cached_logits(uri: str, device: torch.device, data: ImageData, run_id: str, out: Path) -> np.ndarray:
    """The version's test logits: reused from the artifact its tag points at, else computed,
    written under `out` (to be logged as the run's `logits/`) and recorded on the version."""
    version = registry.resolve_version(uri)
    artifact = version.tags.get(LOGITS_TAG)
    if artifact:
        try:
            logits = np.load(mlflow.artifacts.download_artifacts(artifact_uri=artifact))
            if logits.shape == (len(data.test_y), data.num_classes):
                return logits
        except (mlflow.exceptions.MlflowException, OSError, ValueError):
            pass  # missing or unreadable: recompute
    loaded = registry.load_model(uri, device)
    logits = predict_logits(loaded.model, data.test_x).cpu().numpy()
    name = f"{loaded.label}.npy"
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / name, logits)
    MlflowClient().set_model_version_tag(version.name, version.version, LOGITS_TAG, f"runs:/{run_id}/logits/{name}")
    return logits


def group_dataset(uris: Sequence[str]) -> str:
    datasets = {registry.resolve_version(u).tags.get("dataset") for u in uris}
    if len(datasets) != 1:
        raise ValueError(f"the models were trained on different datasets {sorted(map(str, datasets))}")
    return datasets.pop()


def compare_registered(a: Sequence[str], b: Sequence[str], data: ImageData, device: torch.device, run_id: str,
                       logits_dir: Path, alpha: float = 0.05, permutations: int = 9999) -> GroupComparison:
    if set(a) & set(b):
        raise ValueError(f"groups share models {sorted(set(a) & set(b))}; the groups must be disjoint")
    preds = np.stack([cached_logits(u, device, data, run_id, logits_dir).argmax(1) for u in [*a, *b]])
    return compare_groups(preds[: len(a)], preds[len(a):], data.test_y.numpy(), data.num_classes, alpha, permutations)


def write_prediction_files(result: GroupComparison, a: Sequence[str], b: Sequence[str], data: ImageData, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    labels_ab = [f"A:{u.removeprefix('models:/')}" for u in a] + [f"B:{u.removeprefix('models:/')}" for u in b]
    pd.DataFrame({"model": labels_ab, "accuracy": result.accuracy}).to_csv(out / "accuracy.csv", index=False)
    pd.DataFrame(result.agreement, index=labels_ab, columns=labels_ab).to_csv(out / "agreement.csv")
    pd.DataFrame({
        "class": data.classes, "accuracy_a": result.class_accuracy[: len(a)].mean(0),
        "accuracy_b": result.class_accuracy[len(a):].mean(0), "difference_b_minus_a": result.class_difference,
        "ci_low": result.class_ci[:, 0], "ci_high": result.class_ci[:, 1], "hedges_g": result.class_effect_size,
        "p_value": result.class_p_value, "q_value_bh": result.class_q_value,
    }).to_csv(out / "per_class.csv", index=False)
    pd.DataFrame({"label": data.test_y.numpy(), "accuracy_a": result.example_accuracy_a,
                  "accuracy_b": result.example_accuracy_b}).to_csv(out / "per_example.csv", index_label="example")
    figures = {
        "per_example.png": plots.example_accuracy_map(result.example_accuracy_a, result.example_accuracy_b, len(a), len(b),
                                                      "group A", "group B"),
        "per_class.png": plots.class_differences(list(data.classes), result.class_difference, result.class_ci,
                                                 list(result.significant_classes),
                                                 f"per-class accuracy, B - A ({1 - result.alpha:.0%} CI; * BH q < {result.alpha})"),
        "agreement.png": plots.agreement_heatmap(result.agreement, labels_ab, len(a)),
    }
    for name, fig in figures.items():
        fig.savefig(out / name)
        plots.close(fig)


def summary_metrics(result: GroupComparison, n_a: int) -> dict[str, float]:
    return {**result.metrics(), "accuracy_a_mean": float(result.accuracy[:n_a].mean()),
            "accuracy_b_mean": float(result.accuracy[n_a:].mean())}
