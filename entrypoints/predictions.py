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

from analysis.data import load_dataset
from analysis.model_predictions import compare_registered, group_dataset, group_uris, summary_metrics, write_prediction_files
from analysis.runtime import resolve_device
from analysis.tracking import start_run
from entrypoints.common import log_params_once, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--group_a", required=True, help="registry filter (\"name='cifar10-resnet20-w4'\") or comma-separated models:/ URIs")
    p.add_argument("--group_b", required=True)
    p.add_argument("--alpha", type=float, default=0.05, help="false discovery rate for per-class tests")
    p.add_argument("--permutations", type=int, default=9999)
    p.add_argument("--device", default="auto")
    p.add_argument("--data_dir", default="")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    with start_run() as run:
        log_params_once(vars(args))
        mlflow.set_tag("widedeep.kind", "predictions")
        a, b = group_uris(args.group_a, "group_a"), group_uris(args.group_b, "group_b")
        data = load_dataset(group_dataset([*a, *b]), args.data_dir or None)
        with tempfile.TemporaryDirectory() as tmp:
            result = compare_registered(a, b, data, resolve_device(args.device), run.info.run_id, Path(tmp) / "logits",
                                        args.alpha, args.permutations)
            write_prediction_files(result, a, b, data, Path(tmp) / "predictions")
            mlflow.log_artifacts(tmp)
        mlflow.set_tags({"group_a": ",".join(a), "group_b": ",".join(b)})
        metrics = summary_metrics(result, len(a))
        mlflow.log_metrics(metrics)
        print(f"cross-group disagreement {metrics['cross_disagreement']:.4f} vs within {metrics['within_disagreement']:.4f} "
              f"(p = {metrics['disagreement_p_value']:.3g}); {int(metrics['n_significant_classes'])} class(es) differ: "
              f"run {run.info.run_id}")


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
