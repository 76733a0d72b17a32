"""`mlflow run . -e compare`: block structure across analysed runs, by width, depth and data.

Reads every analysed model version (analysis/queries.py), aggregates over seeds per (dataset,
depth, width, data_fraction), and logs a comparison run: the table as CSV and Markdown, block
size against width and against depth, and heatmap grids (rows depth, columns width) per data
fraction, assembled from the matrices `analyze` logged.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import mlflow

from analysis import queries
from analysis.comparison import write_comparison
from analysis.tracking import start_run
from entrypoints.common import log_params_once, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="", help="only this dataset (default: all)")
    p.add_argument("--data_fraction", default="", help="only this data fraction (default: all)")
    p.add_argument("--min_epochs", type=int, default=0, help="only models trained at least this long")
    p.add_argument("--source", default="api", choices=["api", "sql"], help="tracking API, or SQL on the tracking DB")
    return p.parse_args(argv)


def load_rows(source: str):
    if source == "api":
        return queries.analysed_models_api()
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        raise ValueError(f"source=sql needs a database tracking URI, not {uri!r}; use source=api")
    return queries.analysed_models_sql(uri)


def main(args: argparse.Namespace) -> None:
    with start_run() as run:
        log_params_once(vars(args))
        mlflow.set_tag("widedeep.kind", "compare")
        fraction = float(args.data_fraction) if args.data_fraction else None
        rows = queries.filter_rows(load_rows(args.source), args.dataset, fraction, args.min_epochs)
        if rows.empty:
            raise ValueError(
                f"no analysed model version matches dataset={args.dataset or 'any'}, data_fraction={args.data_fraction or 'any'}, "
                f"min_epochs={args.min_epochs}; train models and run `analyze` on them first"
            )
        with tempfile.TemporaryDirectory() as tmp:
            table = write_comparison(rows, Path(tmp))
            mlflow.log_artifacts(tmp, "comparison")
        mlflow.log_metrics({"models": len(rows), "cells": len(table), "incomplete": int((~rows["complete"]).sum())})
        print(table.to_string(index=False))
        print(f"compared {len(rows)} analysed model(s) in {len(table)} cell(s): run {run.info.run_id}")


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
