"""What every entry point shares: a parser whose errors are user errors, one-line errors that fail
the run, and the training arguments of `train` and `sweep`.

Every entry point parses and checks all of its parameters before it touches data, the tracking
store or a study: a bad value costs nothing but one line naming it (docs/bad-inputs.md lists them).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from typing import Callable, NoReturn

from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from analysis.config import PRESET_FIELDS, TRAIN_PRESETS, TrainConfig, require, resolve_preset
from analysis.data import CACHE_DIR_ENV, DATASETS, check_data_dir
from analysis.device import resolve_device
from analysis.nets import all_families
from analysis.store.tracking import fail_run, first_line

# Errors that mean "bad input, bad data or an unusable store": reported in one line, no traceback
# (WIDEDEEP_TRACEBACK=1 shows it). MlflowException and SQLAlchemyError are how a malformed filter
# or an unreachable tracking store reach us.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, FloatingPointError, RuntimeError, MlflowException,
               SQLAlchemyError)
TRACEBACK_ENV = "WIDEDEEP_TRACEBACK"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are raised, so a bad value fails the run in one line like any other
    user error (argparse itself prints its usage and exits before the run can be marked)."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message.replace("argument --", "parameter "))


def run_main(main: Callable[[], None]) -> int:
    """Call `main` (which parses and checks its arguments first); on a user error print it in one
    line, mark the run FAILED with the line as tag `error`, exit 2."""
    try:
        main()
    except USER_ERRORS as err:
        if os.environ.get(TRACEBACK_ENV):
            raise
        return _failed(first_line(err))
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or os.environ.get(TRACEBACK_ENV):
            raise
        return _failed(f"no space left on the device writing {err.filename or 'a file'}; free space there (or point "
                       f"{CACHE_DIR_ENV}, the tracking store or its artifacts at another disk) and rerun the same command")
    return 0


def _failed(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    fail_run(message)
    return 2


def check_where(device: str, data_dir: str = "", dataset: str = "") -> None:
    """The settings every computing entry point shares, checked before any work: the device exists,
    the dataset is known, a data folder the user names exists (it is never created)."""
    resolve_device(device)
    require(not dataset or dataset in DATASETS, "dataset", dataset, f"one of {', '.join(DATASETS)}")
    check_data_dir(data_dir)


def unless(*words: str) -> Callable[[str], str]:
    """argparse type for an optional setting: these words (MLproject's defaults, since `mlflow
    run` would log an empty default as the literal '') mean "not set", given as ""."""

    def parse(text: str) -> str:
        return "" if text.strip() in words else text

    return parse


AUTO = unless("auto", "")  # derived when not given: a data folder, a storage, a name


def auto_or(kind: Callable[[str], object]) -> Callable[[str], object]:
    """argparse type for a setting a preset may choose: 'auto' (MLproject's default) gives None."""

    def parse(text: str) -> object:
        return None if text.strip() in ("auto", "") else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in its errors
    return parse


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


def number(text: str) -> float:
    """argparse type for real-valued parameters: 'inf' and 'nan' are refused, naming the value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid number: {text!r} (give a finite number)")
    return value


def add_data_dir(p: argparse.ArgumentParser) -> None:
    """`--data_dir`, which every entry point that reads images takes."""
    p.add_argument("--data_dir", type=AUTO, default="auto", help="auto: $WIDEDEEP_DATA_DIR, else the cache's data folder")


def add_training_args(p: argparse.ArgumentParser) -> None:
    """The training settings that `train` and `sweep` share (defaults: analysis.config)."""
    d = TrainConfig()
    p.add_argument("--preset", default="quick", choices=sorted(TRAIN_PRESETS),
                   help="quick, paper: the CIFAR recipe at 2 or 300 epochs; imagenet: the ResNet-50 family's recipe "
                        "(what you leave at auto comes from it)")
    p.add_argument("--arch", type=auto_or(str), default="auto",
                   help="; ".join(f"{f.name}: {f.summary}" for f in all_families()) + " (auto: the preset's, else resnet)")
    p.add_argument("--image_size", type=whole_number, default=d.image_size,
                   help="resize images to this side (0: as stored; the resnet50 family: its crop side, 0: 224)")
    p.add_argument("--epochs", type=whole_number, default=0, help="0: the preset's count")
    p.add_argument("--batch_size", type=auto_or(whole_number), default="auto", help="global batch (auto: the preset's, else 128)")
    p.add_argument("--lr", type=auto_or(number), default="auto", help="auto: the preset's, else 0.01")
    p.add_argument("--momentum", type=number, default=d.momentum)
    p.add_argument("--weight_decay", type=auto_or(number), default="auto", help="auto: the preset's, else 2e-4")
    p.add_argument("--dataset", type=auto_or(str), default="auto", help="auto: the preset's, else cifar10")
    add_data_dir(p)
    p.add_argument("--device", default=d.device)
    p.add_argument("--eval_every", type=whole_number, default=d.eval_every, help="epochs between test evaluations")
    p.add_argument("--compile", default="false", choices=["true", "false"], help="torch.compile the training step")
    p.add_argument("--snapshot_every", type=whole_number, default=d.snapshot_every,
                   help="keep the weights every this many epochs, for analyze -P history=true (0: none)")
    p.add_argument("--pc1_penalty", type=number, default=d.pc1_penalty,
                   help="weight of the penalty on the PC1 share of the penalised layers (0: none)")
    p.add_argument("--pc1_penalty_layers", default=d.pc1_penalty_layers,
                   help="residual block outputs penalised: all, or names / prefixes such as stage3")


def left_to_preset(args: argparse.Namespace) -> tuple[str, ...]:
    """The settings of add_training_args left at auto (epochs at 0), which the preset chooses."""
    return tuple(k for k in PRESET_FIELDS if getattr(args, k) is None or (k == "epochs" and args.epochs == 0))


def given_params(args: argparse.Namespace) -> dict:
    """The parameters as the user gave them, for the run's params (settings left at auto are left out:
    the run logs their resolved values)."""
    return {k: v for k, v in vars(args).items() if v is not None and not (k == "epochs" and v == 0)}


def training_settings(args: argparse.Namespace) -> dict:
    """TrainConfig fields from the arguments of add_training_args, the preset filling what was left at auto."""
    recipe = resolve_preset(args.preset, {k: getattr(args, k) for k in PRESET_FIELDS})
    return {
        **recipe, "momentum": args.momentum, "data_dir": args.data_dir, "device": args.device, "eval_every": args.eval_every,
        "compile": args.compile == "true", "snapshot_every": args.snapshot_every, "pc1_penalty": args.pc1_penalty,
        "pc1_penalty_layers": args.pc1_penalty_layers, "image_size": args.image_size,
    }


def settings_params(config: TrainConfig) -> dict:
    """The preset-resolved settings as run params (what was given as auto is logged as chosen)."""
    return {k: getattr(config, k) for k in PRESET_FIELDS}
