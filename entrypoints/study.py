"""`mlflow run . -e study -P preset=cpu`: from data to the paper's figures in one command.

Sweeps the preset's grid, analyses every model (CKA within and across seeds, PC1, probes,
deletion), compares, contrasts the predictions of two architectures, and writes one
self-contained HTML report (also logged to the run). Rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.config import STUDY_PRESETS, study_preset
from analysis.stages.study import study_stage
from analysis.store.studies import DEFAULT_STORAGE, STORAGE_ENV, storage_url
from entrypoints.common import AUTO, Parser, add_data_dir, check_where, run_main


def parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__)
    p.add_argument("--preset", default="cpu", help=", ".join(STUDY_PRESETS))
    p.add_argument("--dataset", default="cifar10")
    add_data_dir(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--storage", type=AUTO, default="auto",
                   help=f"Optuna storage URL (auto: ${STORAGE_ENV}, else {DEFAULT_STORAGE}, a journal file here)")
    p.add_argument("--out", type=AUTO, default="auto", help="report folder (auto: reports/<preset>)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(args: argparse.Namespace) -> None:
    preset = study_preset(args.preset)
    check_where(args.device, args.data_dir, args.dataset)
    url = storage_url(args.storage)
    report = study_stage(preset, args.dataset, args.data_dir, args.device, url, Path(args.out or f"reports/{preset.name}"),
                         log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"report: {report} (and artifact report/report.html of the study run)")


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(parse_args())))
