"""`mlflow run . -e study -P preset=cpu`: from data to the paper's figures in one command.

Sweeps the preset's grid, analyses every model (CKA within and across seeds, PC1, probes,
deletion), compares, contrasts the predictions of two architectures, and writes one
self-contained HTML report (also logged to the run). Rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import mlflow

from analysis import study
from analysis.report import write_report
from analysis.sweep import redact
from analysis.tracking import start_run
from entrypoints.common import log_params_once, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="cpu", help=", ".join(study.PRESETS))
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data_dir", default="")
    p.add_argument("--device", default="auto")
    p.add_argument("--storage", default="", help="Optuna storage (default $WIDEDEEP_OPTUNA_STORAGE, else sqlite:///optuna.db)")
    p.add_argument("--out", default="", help="report folder (default reports/<preset>)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    p = study.preset(args.preset)
    out = Path(args.out or f"reports/{p.name}")
    out.mkdir(parents=True, exist_ok=True)
    url = args.storage or os.environ.get("WIDEDEEP_OPTUNA_STORAGE") or "sqlite:///optuna.db"
    with start_run() as run:
        log_params_once({k: v for k, v in vars(args).items() if k != "storage"})
        mlflow.set_tags({"widedeep.kind": "study", "study.preset": p.name, "sweep.storage": redact(url)})
        result = study.run_study(p, args.dataset, args.data_dir, args.device, url, out,
                                 log=lambda line: print(line, file=sys.stderr, flush=True))
        report = write_report(p, result, out, run.info.run_id)
        mlflow.log_metrics({f"stage_seconds_{k}": v for k, v in result["timings"].items()})
        mlflow.log_metrics({f"predictions_{k}": v for k, v in result["predictions"].items()})
        mlflow.log_artifact(str(report), "report")
        mlflow.log_artifacts(str(out / "comparison"), "report/comparison")
        mlflow.log_artifacts(str(out / "predictions"), "report/predictions")
        print(f"report: {report} (and artifact report/report.html of run {run.info.run_id})")


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
