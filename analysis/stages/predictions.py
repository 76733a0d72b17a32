"""The predictions stage: do two groups of models (e.g. every seed of a wide and of a deep
architecture, or this project's ResNets against torchvision's) make different errors, beyond the
variation between seeds of one architecture?

A group is a registry filter or a list of model sources (store/sources.py). Each model's test-set
logits are logged under this run's `logits/`. A registered version's are also recorded on the
version (tag contract.test_logits_tag, a runs:/ URI that resolves), keyed by the test set's digest
(every pixel and label, or the streamed file list) and, for a model from outside the project, by
the input it was fed; later comparisons on the same test set download them instead of running the
model again, and another folder recomputes. A built source (torchvision:, timm:, python:) is run
every time: its string does not pin its weights (a file or module can change under one name).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..data import ImageData
from ..device import resolve_device
from ..nets import predict_logits
from ..render import write_predictions
from ..nets.library import SCHEMES
from ..science.predictions import compare_groups
from ..store import contract as c
from ..store.lookup import resolve_version, split_uris, uris_matching
from ..store.model_files import LoadedModel
from ..store.sources import check_dataset, load_sources
from ..store.tracking import describe, stage_run

__all__ = ["PredictionsOutcome", "predictions_stage", "group_uris"]


@dataclasses.dataclass
class PredictionsOutcome:
    run_id: str
    group_a: list[str]
    group_b: list[str]
    metrics: dict[str, float]


def group_uris(spec: str, which: str) -> list[str]:
    """A registry filter ("name='cifar10-resnet20-w4'") or comma-separated model sources
    (models:/ URIs, torchvision:ARCH, ...)."""
    spec = spec.strip()
    return split_uris(spec) if spec.startswith(("models:/", *(f"{s}:" for s in SCHEMES))) else uris_matching(spec, which)


def predictions_stage(group_a: str, group_b: str, alpha: float = 0.05, permutations: int = 9999, device: str = "auto",
                      data_dir: str = "", run_name: str = "predictions", dataset: str = "") -> PredictionsOutcome:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} is not allowed; use a false discovery rate in (0, 1), e.g. 0.05")
    if permutations < 1:
        raise ValueError(f"permutations={permutations!r} is not allowed; use an integer >= 1 (the default: 9999)")
    for spec, which in ((group_a, "group_a"), (group_b, "group_b")):
        if not spec.strip():
            raise ValueError(f"{which} is empty; give a registry filter such as \"name='cifar10-resnet20-w4'\" or model sources")
    params = {"group_a": group_a, "group_b": group_b, "alpha": alpha, "permutations": permutations, "device": device,
              "dataset": dataset, "data_dir": data_dir}
    with stage_run("predictions", run_name, params) as run:
        a, b = group_uris(group_a, "group_a"), group_uris(group_b, "group_b")
        if set(a) & set(b):
            raise ValueError(f"groups share models {sorted(set(a) & set(b))}; the groups must be disjoint")
        loaded = load_sources([*a, *b], resolve_device(device))
        data = check_dataset(loaded, dataset).load(data_dir)
        for m in loaded:
            if m.num_classes != data.num_classes:
                raise ValueError(f"{m.uri} predicts {m.num_classes} classes but dataset {data.name!r} has {data.num_classes}; "
                                 "compare models that predict the dataset's classes (for a built network: num_classes="
                                 f"{data.num_classes} and weights trained on it)")
        digest = data.test_digest()
        mlflow.set_tag(c.TEST_DIGEST, digest)
        with tempfile.TemporaryDirectory() as tmp:
            logits = [_cached_logits(m, data, digest, run.info.run_id, Path(tmp) / c.LOGITS_DIR) for m in loaded]
            preds = np.stack([x.argmax(1) for x in logits])
            result = compare_groups(preds[: len(a)], preds[len(a):], data.test_y.numpy(), data.num_classes, alpha, permutations)
            write_predictions(result, [m.label for m in loaded[: len(a)]], [m.label for m in loaded[len(a):]], data.classes, data.test_y.numpy(), Path(tmp) / c.PREDICTIONS_DIR)
            mlflow.log_artifacts(tmp)
        mlflow.set_tags({c.GROUP_A: ",".join(a), c.GROUP_B: ",".join(b)})
        metrics = {**result.metrics(), "accuracy_a_mean": float(result.accuracy[: len(a)].mean()),
                   "accuracy_b_mean": float(result.accuracy[len(a):].mean())}
        mlflow.log_metrics(metrics)
        describe(f"Do {len(a)} models of group A and {len(b)} of group B make different errors? On {len(data.test_y)} test "
                 f"images: {metrics[c.CROSS_DISAGREEMENT]:.3f} disagreement across the groups against "
                 f"{metrics[c.WITHIN_DISAGREEMENT]:.3f} within them (exact permutation p = {metrics[c.DISAGREEMENT_P_VALUE]:.3g}); "
                 f"{int(metrics[c.N_SIGNIFICANT_CLASSES])} classes differ after Benjamini-Hochberg at {alpha}.")
    return PredictionsOutcome(run.info.run_id, a, b, metrics)


def _cached_logits(loaded: LoadedModel, data: ImageData, digest: str, run_id: str, out: Path) -> np.ndarray:
    """The model's logits on the test set of `digest`: a registered version's reused from the
    artifact its tag points at; else computed and written under `out` (logged as this run's
    logits/), and recorded on the version if it is one."""
    version = resolve_version(loaded.uri) if loaded.version else None
    tag = c.test_logits_tag(digest, loaded.input.fed() if loaded.input is not None else None)
    artifact = version.tags.get(tag) if version else None
    if artifact:
        try:
            logits = np.load(mlflow.artifacts.download_artifacts(artifact_uri=artifact))
            if logits.shape == (len(data.test_y), data.num_classes):
                return logits
        except (MlflowException, OSError, ValueError):
            pass  # missing or unreadable: recompute
    logits = predict_logits(loaded.model, data.test_x).cpu().numpy()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{loaded.label}.npy", logits)
    if version:
        MlflowClient().set_model_version_tag(version.name, version.version, tag, c.logits_artifact(run_id, loaded.label))
    return logits
