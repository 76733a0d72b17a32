"""`mlflow run . -e predictions`: do two groups of models (e.g. wide and deep, every seed of
each) make different errors, beyond the variation between seeds of one architecture?

Each model's test-set logits are computed once, logged as an artifact and recorded on the
model version (tag `test_logits`), then reused by later comparisons.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient

from analysis import plots, registry
from analysis.data import load_dataset
from analysis.evaluation import predict_logits
from analysis.predictions import compare_groups
from analysis.queries import search_versions
from analysis.runtime import resolve_device
from entrypoints.common import log_params_once, run_main

LOGITS_TAG = "test_logits"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--group_a", required=True, help="registry filter (\"name='cifar10-resnet20-w4'\") or comma-separated models:/ URIs")
    p.add_argument("--group_b", required=True)
    p.add_argument("--alpha", type=float, default=0.05, help="false discovery rate for per-class tests")
    p.add_argument("--permutations", type=int, default=9999)
    p.add_argument("--device", default="auto")
    p.add_argument("--data_dir", default="")
    return p.parse_args(argv)


def group_uris(spec: str, which: str) -> list[str]:
    spec = spec.strip()
    if not spec:
        raise ValueError(f"{which} is empty; give a registry filter such as \"name='cifar10-resnet20-w4'\" or models:/ URIs")
    if spec.startswith("models:/"):
        return [u.strip() for u in spec.split(",") if u.strip()]
    found = search_versions(spec)
    if not found:
        raise ValueError(f"{which}={spec!r} matches no registered model version")
    return [f"models:/{v.name}/{v.version}" for v in found]


def cached_logits(uri: str, device: torch.device, data, run_id: str, out: Path) -> np.ndarray:
    """The version's test logits: reused from the artifact its tag points at, else computed,
    written under `out` (logged with this run) and recorded on the version."""
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
    np.save(out / name, logits)
    MlflowClient().set_model_version_tag(version.name, version.version, LOGITS_TAG, f"runs:/{run_id}/logits/{name}")
    return logits


def main(args: argparse.Namespace) -> None:
    with mlflow.start_run() as run:
        log_params_once(vars(args))
        mlflow.set_tag("widedeep.kind", "predictions")
        a, b = group_uris(args.group_a, "group_a"), group_uris(args.group_b, "group_b")
        if set(a) & set(b):
            raise ValueError(f"groups share models {sorted(set(a) & set(b))}; the groups must be disjoint")
        versions = [registry.resolve_version(u) for u in a + b]
        datasets = {v.tags.get("dataset") for v in versions}
        if len(datasets) != 1:
            raise ValueError(f"the models were trained on different datasets {sorted(map(str, datasets))}")
        data = load_dataset(datasets.pop(), args.data_dir or None)
        device = resolve_device(args.device)
        with tempfile.TemporaryDirectory() as tmp:
            logits_dir = Path(tmp) / "logits"
            logits_dir.mkdir()
            preds = np.stack([cached_logits(u, device, data, run.info.run_id, logits_dir).argmax(1) for u in a + b])
            if any(logits_dir.iterdir()):
                mlflow.log_artifacts(str(logits_dir), "logits")
        labels = data.test_y.numpy()
        result = compare_groups(preds[: len(a)], preds[len(a):], labels, data.num_classes, args.alpha, args.permutations)
        mlflow.set_tags({"group_a": ",".join(a), "group_b": ",".join(b)})
        mlflow.log_metrics({**result.metrics(), "accuracy_a_mean": float(result.accuracy[: len(a)].mean()),
                            "accuracy_b_mean": float(result.accuracy[len(a):].mean())})
        labels_ab = [f"A:{u.removeprefix('models:/')}" for u in a] + [f"B:{u.removeprefix('models:/')}" for u in b]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            pd.DataFrame({"model": labels_ab, "accuracy": result.accuracy}).to_csv(out / "accuracy.csv", index=False)
            pd.DataFrame(result.agreement, index=labels_ab, columns=labels_ab).to_csv(out / "agreement.csv")
            pd.DataFrame({
                "class": data.classes, "accuracy_a": result.class_accuracy[: len(a)].mean(0),
                "accuracy_b": result.class_accuracy[len(a):].mean(0), "difference_b_minus_a": result.class_difference,
                "ci_low": result.class_ci[:, 0], "ci_high": result.class_ci[:, 1], "hedges_g": result.class_effect_size,
                "p_value": result.class_p_value, "q_value_bh": result.class_q_value,
            }).to_csv(out / "per_class.csv", index=False)
            pd.DataFrame({"label": labels, "accuracy_a": result.example_accuracy_a,
                          "accuracy_b": result.example_accuracy_b}).to_csv(out / "per_example.csv", index_label="example")
            for name, fig in (
                ("per_example.png", plots.example_accuracy_map(result.example_accuracy_a, result.example_accuracy_b, len(a), len(b), "group A", "group B")),
                ("per_class.png", plots.class_differences(list(data.classes), result.class_difference, result.class_ci,
                                                          list(result.significant_classes),
                                                          f"per-class accuracy, B - A ({1 - args.alpha:.0%} CI; * BH q < {args.alpha})")),
                ("agreement.png", plots.agreement_heatmap(result.agreement, labels_ab, len(a))),
            ):
                fig.savefig(out / name)
                plots.close(fig)
            mlflow.log_artifacts(tmp, "predictions")
        m = result.metrics()
        print(f"cross-group disagreement {m['cross_disagreement']:.4f} vs within {m['within_disagreement']:.4f} "
              f"(p = {m['disagreement_p_value']:.3g}); {int(m['n_significant_classes'])} class(es) differ: run {run.info.run_id}")


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
