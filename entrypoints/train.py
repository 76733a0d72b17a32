"""`mlflow run . -e train`: train one ResNet and register it in the MLflow Model Registry; with
`-P seeds=0,1,2,3`, train those seeds at once as one pack, each registered as `train` registers it."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from analysis.config import TrainConfig, parse_values
from analysis.device import resolve_device
from analysis.nets import all_families, family
from analysis.stages.pack import train_pack_stage
from analysis.stages.train import TrainOutcome, TrainRequest, follow_stage, launch_stage, train_stage
from analysis.store.contract import NEWEST_ALIAS
from analysis.training import distributed, settings as checks
from entrypoints.common import (Parser, add_training_args, auto_or, check_where, given_params, left_to_preset, number, require,
                                run_main, training_settings, unless, whole_number)


def parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = Parser(description=__doc__)
    p.add_argument("--depth", type=auto_or(whole_number), default="auto",
                   help="; ".join(f"{f.name}: {f.depth_rule}, auto: {f.default_depth}" for f in all_families()))
    p.add_argument("--width", type=number, default=d.width, help="channel multiplier (the stages it scales: see arch)")
    p.add_argument("--seed", type=whole_number, default=d.seed)
    p.add_argument("--seeds", type=unless("none", ""), default="none",
                   help="a comma list: train these seeds at once as one pack (instead of --seed); none: one model")
    p.add_argument("--data_fraction", type=number, default=d.data_fraction)
    p.add_argument("--subset_seed", type=whole_number, default=d.subset_seed)
    p.add_argument("--nproc", type=whole_number, default=1,
                   help="data-parallel processes on this machine, started by torchrun (one per GPU; gloo on the CPU); "
                        "under your own torchrun it is ignored")
    add_training_args(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def requested(args: argparse.Namespace) -> TrainRequest:
    """The training the arguments ask for, every setting resolved and checked before any work."""
    settings = training_settings(args)
    arch = settings.get("arch", TrainConfig.arch)
    config = TrainConfig(depth=family(arch).default_depth if args.depth is None else args.depth, width=args.width,
                         seed=args.seed, data_fraction=args.data_fraction, subset_seed=args.subset_seed, **settings)
    checks.check(config)
    check_where(config.device, config.data_dir)
    require(args.nproc >= 1, "nproc", args.nproc, "an integer >= 1 (1: one process)")
    require(config.batch_size % args.nproc == 0, "batch_size", config.batch_size, f"a multiple of nproc={args.nproc} (it is the global batch)")
    return TrainRequest(config, given_params(args), left_to_preset(args) + (("depth",) if args.depth is None else ()))


def pack_of(args: argparse.Namespace, config: TrainConfig) -> list[TrainConfig]:
    """The trainings of `--seeds` (`config` once per seed), checked before any work; [] without it."""
    if not args.seeds:
        return []
    seeds = parse_values(args.seeds, int, "seeds")
    require(len(seeds) >= 2, "seeds", args.seeds, f"two or more seeds, e.g. 0,1,2,3 (one model: seed={seeds[0]})")
    require(all(s >= 0 for s in seeds), "seeds", args.seeds, "whole numbers >= 0")
    require(args.seed == 0, "seed", args.seed, f"0 with seeds={args.seeds} (give seed or seeds, not both)")
    require(args.nproc == 1, "nproc", args.nproc, "1 with seeds (a pack trains in one process)")
    return [dataclasses.replace(config, seed=s) for s in seeds]


def main(args: argparse.Namespace) -> None:
    handed = TrainRequest.handed_over()  # a data-parallel process started by launch_stage
    request = handed or requested(args)
    pack = [] if handed else pack_of(args, request.config)
    if pack:
        for outcome in train_pack_stage(pack, params=request.params, from_preset=request.from_preset):
            report(outcome)
        return
    if args.nproc > 1 and handed is None and not distributed.in_worker():
        launch_stage(request, args.nproc, __spec__.name)
        return
    shard = distributed.init(resolve_device(request.config.device))
    try:
        if not shard.main:
            follow_stage(request.config)
            return
        outcome = train_stage(request.config, params={**request.params, "nproc": shard.world}, from_preset=request.from_preset)
    finally:
        distributed.close()
    report(outcome)


def report(outcome: TrainOutcome) -> None:
    print(f"registered {outcome.uri} (alias @{NEWEST_ALIAS}): test accuracy {outcome.result.final['test_accuracy']:.4f}, "
          f"train accuracy {outcome.result.final['train_accuracy_clean']:.4f}")


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(parse_args())))
