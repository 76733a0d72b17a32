"""`mlflow run . -e compare`: block structure across analysed runs, by width, depth and data.

Reads every analysed model version (analysis/queries.py), aggregates over seeds per (dataset,
depth, width, data_fraction), and logs a comparison run: the table as CSV and Markdown, block
size against width and against depth, and heatmap grids (rows depth, columns width) per data
fraction, assembled from the matrices `analyze` logged.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from analysis import plots, queries
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
    with mlflow.start_run() as run:
        log_params_once(vars(args))
        mlflow.set_tag("widedeep.kind", "compare")
        fraction = float(args.data_fraction) if args.data_fraction else None
        rows = queries.filter_rows(load_rows(args.source), args.dataset, fraction, args.min_epochs)
        if rows.empty:
            raise ValueError(
                f"no analysed model version matches dataset={args.dataset or 'any'}, data_fraction={args.data_fraction or 'any'}, "
                f"min_epochs={args.min_epochs}; train models and run `analyze` on them first"
            )
        table = queries.aggregate(rows)
        mlflow.log_metrics({"models": len(rows), "cells": len(table), "incomplete": int((~rows["complete"]).sum())})
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            rows.to_csv(out / "models.csv", index=False)
            table.to_csv(out / "table.csv", index=False)
            (out / "table.md").write_text(table.to_markdown(index=False, floatfmt=".3f"))
            complete = table[table["seeds"] > 0]
            if not complete.empty:
                for x, panel in (("width", "depth"), ("depth", "width")):
                    fig = plots.trend(complete, x, panel, "block_largest_frac", f"largest block (share of layers) against {x}")
                    fig.savefig(out / f"block_vs_{x}.png")
                    plots.close(fig)
            for fraction, group in rows[rows["complete"]].groupby("data_fraction"):
                cells = heatmap_cells(group)
                if not cells:
                    continue
                fig = plots.heatmap_grid(cells, sorted(group["depth"].unique()), sorted(group["width"].unique()),
                                         f"CKA heatmaps, data fraction {fraction:g} (lowest seed per cell)")
                fig.savefig(out / f"heatmaps_fraction_{fraction:g}.png")
                plots.close(fig)
            mlflow.log_artifacts(tmp, "comparison")
        print(table.to_string(index=False))
        print(f"compared {len(rows)} analysed model(s) in {len(table)} cell(s): run {run.info.run_id}")


def heatmap_cells(group) -> dict:
    """(depth, width) -> (CKA matrix, layer names, caption) from the lowest seed whose analysis
    run has its matrix; cells with none are left out (blank in the grid)."""
    cells = {}
    for (depth, width), cell in group.sort_values("seed").groupby(["depth", "width"]):
        for row in cell.itertuples():
            try:
                local = Path(mlflow.artifacts.download_artifacts(run_id=row.analysis_run_id, artifact_path="cka"))
                names = json.loads((local / "summary.json").read_text())["layer_names"]
                matrix = np.load(local / "cka.npy")
            except (MlflowException, OSError, KeyError, ValueError):
                continue  # no matrix logged (an interrupted or synthetic run): try the next seed
            caption = f"seed {row.seed}, test {row.test_accuracy:.2f}, train {row.train_accuracy:.2f}"
            cells[(depth, width)] = (matrix, names, caption)
            break
    return cells


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
