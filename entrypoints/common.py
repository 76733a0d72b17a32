"""What every entry point shares: one-line errors that fail the run, and the training arguments
of `train` and `sweep`."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from analysis.config import PRESET_EPOCHS, TrainConfig, resolve_epochs
from analysis.store.tracking import fail_run, first_line, reap_dead_runs

# Errors that mean "bad input or bad data": reported in one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, FloatingPointError, RuntimeError)


def run_main(main: Callable[[], None]) -> int:
    """Call `main`; on a user error print it in one line, mark the run FAILED, exit 2. First, runs
    of this host whose process died without ending them are marked KILLED."""
    try:
        reap_dead_runs()
        main()
    except USER_ERRORS as err:
        message = first_line(err)
        print(f"error: {message}", file=sys.stderr)
        fail_run(message)
        return 2
    return 0


def whole_number(text: str) -> int:
    """argparse type for counts, which MLproject declares as floats: '8' and '8.0' give 8; '8.5'
    and 'abc' are refused, naming the value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer value: {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"invalid integer value: {text!r} (give a whole number)")
    return int(value)


def add_training_args(p: argparse.ArgumentParser) -> None:
    """The training settings that `train` and `sweep` share (defaults: analysis.config)."""
    d = TrainConfig()
    p.add_argument("--preset", default="quick", choices=sorted(PRESET_EPOCHS))
    p.add_argument("--epochs", type=whole_number, default=0, help="0: the preset's count")
    p.add_argument("--batch_size", type=whole_number, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight_decay", type=float, default=d.weight_decay)
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--data_dir", default=d.data_dir)
    p.add_argument("--device", default=d.device)
    p.add_argument("--eval_every", type=whole_number, default=d.eval_every, help="epochs between test evaluations")
    p.add_argument("--compile", default="false", choices=["true", "false"], help="torch.compile the training step")


def training_settings(args: argparse.Namespace) -> dict:
    """TrainConfig fields from the arguments of add_training_args."""
    return {
        "epochs": resolve_epochs(args.preset, args.epochs), "batch_size": args.batch_size, "lr": args.lr,
        "momentum": args.momentum, "weight_decay": args.weight_decay, "dataset": args.dataset, "data_dir": args.data_dir,
        "device": args.device, "eval_every": args.eval_every, "compile": args.compile == "true",
    }
