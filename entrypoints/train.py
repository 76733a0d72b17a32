"""`mlflow run . -e train`: train one ResNet and register it in the MLflow Model Registry."""

from __future__ import annotations

import argparse
import sys

import mlflow

from analysis import registry
from analysis.config import TrainConfig
from analysis.train_run import train_and_register
from analysis.tracking import start_run
from entrypoints.common import add_training_args, log_params_once, run_main, training_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--depth", type=int, default=d.depth, help="6n+2: 14, 20, 26, 32, 38, 44, 56, 110, 164")
    p.add_argument("--width", type=float, default=d.width, help="channel multiplier (16k, 32k, 64k)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data_fraction", type=float, default=d.data_fraction)
    p.add_argument("--subset_seed", type=int, default=d.subset_seed)
    add_training_args(p)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    with start_run():
        log_params_once(vars(args))
        mlflow.set_tag("widedeep.kind", "train")
        config = TrainConfig(depth=args.depth, width=args.width, seed=args.seed, data_fraction=args.data_fraction,
                             subset_seed=args.subset_seed, **training_settings(args))
        mlflow.log_param("epochs_resolved", config.epochs)
        result, version = train_and_register(config)
        print(
            f"registered models:/{version.name}/{version.version} (alias @{registry.NEWEST_ALIAS}): "
            f"test accuracy {result.final['test_accuracy']:.4f}, train accuracy {result.final['train_accuracy_clean']:.4f}"
        )


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
