"""`mlflow run . -e sweep`: train a width x depth x seed x data-fraction grid, or search lr and
weight decay, with Optuna; on one machine (`workers`) or many (same `storage` and `study`).

Modes: grid (default), search (TPE + median pruning on a validation split), setup (create the
study and exit: run it once before starting workers on several machines against a fresh DB).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import mlflow
import optuna
import torch

from analysis import sweep
from analysis.config import TrainConfig
from analysis.tracking import start_run
from entrypoints.common import add_training_args, log_params_once, run_main, training_settings

STORAGE_ENV = "WIDEDEEP_OPTUNA_STORAGE"
WORKER_PARENT_ENV = "WIDEDEEP_SWEEP_PARENT"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", default="grid", choices=["grid", "search", "setup"])
    p.add_argument("--depths", default=str(d.depth))
    p.add_argument("--widths", default=f"{d.width:g}")
    p.add_argument("--seeds", default=str(d.seed))
    p.add_argument("--data_fractions", default=f"{d.data_fraction:g}")
    p.add_argument("--storage", default="", help=f"Optuna storage URL (default ${STORAGE_ENV}, else sqlite:///optuna.db)")
    p.add_argument("--study", default="", help="study name (default: derived from the grid and settings)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--n_trials", type=int, default=20, help="search mode: trials for this worker")
    p.add_argument("--val_fraction", type=float, default=0.1, help="search mode: held-out share of the training subset")
    add_training_args(p)
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    grid = sweep.Grid.parse(args.depths, args.widths, args.seeds, args.data_fractions)
    base = TrainConfig(depth=grid.depths[0], width=grid.widths[0], data_fraction=grid.data_fractions[0], **training_settings(args))
    url = args.storage or os.environ.get(STORAGE_ENV) or "sqlite:///optuna.db"
    name = args.study or sweep.default_study_name(grid, base)
    parent = os.environ.get(WORKER_PARENT_ENV)
    if parent:  # a worker process started by another sweep process: cells nest under its run
        work(args, grid, base, url, name, parent)
        return
    with start_run() as run:
        log_params_once({k: v for k, v in vars(args).items() if k != "storage"})
        mlflow.set_tags({"widedeep.kind": "sweep", "sweep.study": name, "sweep.storage": sweep.redact(url),
                         "sweep.mode": args.mode, "sweep.grid_size": str(grid.size)})
        if args.mode == "setup":
            sweep.grid_study(url, name, grid)
            print(f"study {name!r} ready in {sweep.redact(url)}; start workers with -P study={name}")
            return
        if args.mode == "grid":
            sweep.grid_study(url, name, grid)  # created once here, before any worker starts
        helpers = start_helpers(args.workers - 1, run.info.run_id)
        try:
            work(args, grid, base, url, name, run.info.run_id)
        finally:
            failed = [p.args for p in helpers if p.wait() != 0]
        if failed:
            raise RuntimeError(f"{len(failed)} worker process(es) failed; rerun the same command to finish the grid")
        summarise(url, name if args.mode == "grid" else f"{name}-search")


def start_helpers(count: int, parent_run_id: str) -> list[subprocess.Popen]:
    """count more worker processes of this same command, sharing the cores between all."""
    if count < 0:
        raise ValueError(f"workers={count + 1} must be >= 1")
    threads = max(1, (os.cpu_count() or 1) // (count + 1))
    torch.set_num_threads(threads)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env.update({WORKER_PARENT_ENV: parent_run_id, "OMP_NUM_THREADS": str(threads)})
    return [subprocess.Popen([sys.executable, "-m", "entrypoints.sweep", *sys.argv[1:]], env=env) for _ in range(count)]


def work(args: argparse.Namespace, grid: sweep.Grid, base: TrainConfig, url: str, name: str, parent: str) -> None:
    if args.mode == "grid":
        sweep.run_grid(sweep.grid_study(url, name, grid), grid, base, parent)
    else:
        study = sweep.open_study(f"{url}", f"{name}-search", sampler=optuna.samplers.TPESampler(seed=None),
                                 pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
        study.optimize(sweep.search_objective(base, parent, args.val_fraction), n_trials=args.n_trials)


def summarise(url: str, name: str) -> None:
    study = optuna.load_study(study_name=name, storage=url)
    states = [t.state.name for t in study.trials]
    counts = {s: states.count(s) for s in sorted(set(states))}
    mlflow.log_metrics({f"trials_{s.lower()}": float(c) for s, c in counts.items()})
    print(f"study {name}: {counts}")


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
