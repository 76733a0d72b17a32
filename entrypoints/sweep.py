"""`mlflow run . -e sweep`: train a width x depth x seed x data-fraction grid, or search lr and
weight decay, with Optuna; on one machine (`workers`) or many (same `storage` and `study`).

Modes: grid (default), search (TPE + median pruning on a validation split), setup (create the
study and exit: run it once before starting workers on several machines against a fresh DB).
"""

from __future__ import annotations

import argparse
import sys

from analysis.config import Grid, TrainConfig
from analysis.store.studies import DEFAULT_STORAGE, STORAGE_ENV, storage_url
from analysis.stages.sweep import MODES, default_study_name, sweep_stage
from analysis.training import auto_pack_size
from analysis.training.settings import check_grid
from entrypoints.common import (AUTO, Parser, add_training_args, auto_or, settings_params, check_where, number, require, run_main,
                                training_settings, whole_number)


def parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = Parser(description=__doc__)
    p.add_argument("--mode", default="grid", choices=MODES)
    p.add_argument("--depths", default=str(d.depth))
    p.add_argument("--widths", default=f"{d.width:g}")
    p.add_argument("--seeds", default=str(d.seed))
    p.add_argument("--data_fractions", default=f"{d.data_fraction:g}")
    p.add_argument("--storage", type=AUTO, default="auto",
                   help=f"Optuna storage URL (auto: ${STORAGE_ENV}, else {DEFAULT_STORAGE}, a journal file here)")
    p.add_argument("--study", type=AUTO, default="auto", help="study name (auto: derived from the grid and settings)")
    p.add_argument("--workers", type=whole_number, default=1, help="worker processes on this machine")
    p.add_argument("--pack", type=auto_or(whole_number), default="auto",
                   help="grid mode: seeds of a cell trained together as one pack (1: one at a time; auto: on CUDA as "
                        "many as fit in memory, on the CPU what measured fastest)")
    p.add_argument("--n_trials", type=whole_number, default=20, help="search mode: trials for this worker")
    p.add_argument("--val_fraction", type=number, default=0.1, help="search mode: held-out share of the training subset")
    add_training_args(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(args: argparse.Namespace) -> None:
    settings = training_settings(args)
    grid = Grid.parse(args.depths, args.widths, args.seeds, args.data_fractions)
    base = TrainConfig(depth=grid.depths[0], width=grid.widths[0], data_fraction=grid.data_fractions[0], **settings)
    check_grid(grid, base)
    check_where(base.device, base.data_dir)
    require(args.workers >= 1, "workers", args.workers, "an integer >= 1")
    require(args.pack is None or args.pack >= 1, "pack", args.pack, "auto or an integer >= 1 (1: no packs)")
    if args.mode == "search":
        require(args.n_trials >= 1, "n_trials", args.n_trials, "an integer >= 1")
        require(0 < args.val_fraction < 1, "val_fraction", args.val_fraction, "a share in (0, 1), e.g. 0.1")
    url = storage_url(args.storage)
    pack = 1 if args.mode != "grid" else args.pack or auto_pack_size(grid, base, args.workers)
    name = args.study or default_study_name(grid, base, pack)
    params = {**{k: v for k, v in vars(args).items() if k != "storage"}, "pack": args.pack or "auto", **settings_params(base)}
    sweep_stage(args.mode, grid, base, url, name, args.workers, args.n_trials, args.val_fraction, params=params, pack=pack)


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(parse_args())))
