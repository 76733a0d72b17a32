"""What every entry point shares: the run it logs to, and one-line errors that fail that run."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

import mlflow
from mlflow.entities import RunStatus

from analysis.config import PRESET_EPOCHS, TrainConfig, resolve_epochs
from analysis.tracking import reap_dead_runs

# Errors that mean "bad input or bad data": reported in one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, FloatingPointError, RuntimeError)


def run_main(main: Callable[[], None]) -> int:
    """Call `main`; on a user error print it in one line, mark the active run FAILED, exit 2.
    First, runs of this host whose process died without ending them are marked KILLED."""
    try:
        reap_dead_runs()
        main()
    except USER_ERRORS as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        if mlflow.active_run():
            mlflow.set_tag("error", message[:5000])
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        return 2
    return 0


def add_training_args(p: argparse.ArgumentParser) -> None:
    """The training settings that `train` and `sweep` share (defaults: analysis.config)."""
    d = TrainConfig()
    p.add_argument("--preset", default="quick", choices=sorted(PRESET_EPOCHS))
    p.add_argument("--epochs", type=int, default=0, help="0: the preset's count")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight_decay", type=float, default=d.weight_decay)
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--data_dir", default=d.data_dir)
    p.add_argument("--device", default=d.device)
    p.add_argument("--eval_every", type=int, default=d.eval_every, help="epochs between test evaluations")
    p.add_argument("--compile", default="false", choices=["true", "false"], help="torch.compile the training step")


def training_settings(args: argparse.Namespace) -> dict:
    """TrainConfig fields from the arguments of add_training_args."""
    return {
        "epochs": resolve_epochs(args.preset, args.epochs), "batch_size": args.batch_size, "lr": args.lr,
        "momentum": args.momentum, "weight_decay": args.weight_decay, "dataset": args.dataset, "data_dir": args.data_dir,
        "device": args.device, "eval_every": args.eval_every, "compile": args.compile == "true",
    }


def log_params_once(params: dict) -> None:
    """Log params not already on the run: `mlflow run` logs declared ones itself, as strings it
    chose, and logging a key again with another spelling ("1" vs "1.0") is an error."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)

