"""`mlflow run . -e train`: train one ResNet and register it in the MLflow Model Registry."""

from __future__ import annotations

import argparse
import sys

from analysis.config import FAMILY_DEPTH, TrainConfig
from analysis.device import resolve_device
from analysis.stages.train import follow_stage, launch_stage, train_stage
from analysis.store.contract import NEWEST_ALIAS
from analysis.training import distributed
from entrypoints.common import Parser, add_training_args, as_argv, auto_or, settings_params, check_where, number, require, run_main, training_settings, whole_number


def parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = Parser(description=__doc__)
    p.add_argument("--depth", type=auto_or(whole_number), default="auto",
                   help="resnet: 6n+2 (14, 20, 26, 32, 38, 44, 56, 110, 164); resnet50: 50+3k (50, 53, 56, ...); "
                        "auto: 20, or 50 for resnet50")
    p.add_argument("--width", type=number, default=d.width, help="channel multiplier: every stage (resnet), stage 3 (resnet50)")
    p.add_argument("--seed", type=whole_number, default=d.seed)
    p.add_argument("--data_fraction", type=number, default=d.data_fraction)
    p.add_argument("--subset_seed", type=whole_number, default=d.subset_seed)
    p.add_argument("--nproc", type=whole_number, default=1,
                   help="data-parallel processes on this machine, started by torchrun (one per GPU; gloo on the CPU); "
                        "under your own torchrun it is ignored")
    add_training_args(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(args: argparse.Namespace) -> None:
    settings = training_settings(args)
    depth = args.depth if args.depth is not None else FAMILY_DEPTH.get(settings.get("arch", "resnet"), 20)  # a bad arch is named below
    config = TrainConfig(depth=depth, width=args.width, seed=args.seed, data_fraction=args.data_fraction,
                         subset_seed=args.subset_seed, **settings)
    check_where(config.device, config.data_dir)
    require(args.nproc >= 1, "nproc", args.nproc, "an integer >= 1 (1: one process)")
    require(config.batch_size % args.nproc == 0, "batch_size", config.batch_size, f"a multiple of nproc={args.nproc} (it is the global batch)")
    if args.nproc > 1 and not distributed.in_worker():
        # The processes learn their number from torchrun; --nproc itself would clash with torchrun's --nproc-per-node.
        launch_stage(config, args.nproc, __spec__.name, as_argv(args, leave_out=("nproc",)))
        return
    shard = distributed.init(resolve_device(config.device))
    try:
        if not shard.main:
            follow_stage(config)
            return
        outcome = train_stage(config, params={**vars(args), **settings_params(config), "depth": config.depth, "nproc": shard.world})
    finally:
        distributed.close()
    print(f"registered {outcome.uri} (alias @{NEWEST_ALIAS}): test accuracy {outcome.result.final['test_accuracy']:.4f}, "
          f"train accuracy {outcome.result.final['train_accuracy_clean']:.4f}")


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(parse_args())))
