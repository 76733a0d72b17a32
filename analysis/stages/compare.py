"""The compare stage: block structure across analysed models, by width, depth and data fraction.

Reads every analysed model version (store/queries.py, by the tracking API or by SQL on the
tracking DB), aggregates over seeds per (dataset, depth, width, data_fraction), and logs the table
as CSV and Markdown, block size against width and against depth, and heatmap grids (rows depth,
columns width) per data fraction, assembled from the matrices `analyze` logged.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Collection

import mlflow
import numpy as np
import pandas as pd

from ..render import write_comparison
from ..store import contract as c
from ..store import queries
from ..store.results import heatmap_cells
from ..store.studies import redact
from ..store.tracking import describe, stage_run

__all__ = ["CompareOutcome", "compare_stage", "load_rows"]
SOURCES = ("api", "sql")


@dataclasses.dataclass
class CompareOutcome:
    run_id: str
    rows: pd.DataFrame  # one row per analysed model version
    table: pd.DataFrame  # aggregated over seeds


def sql_database(source: str, database: str = "") -> str | None:
    """The database that source=sql reads: `database`, else the tracking URI when it is one (None
    for source=api). Behind an MLflow server, give the server's database: SQL reads it directly
    while the compare run and its artifacts still go through the server."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {', '.join(SOURCES)}")
    if source == "api":
        return None
    uri = database or mlflow.get_tracking_uri()
    if not queries.is_database_uri(uri):
        raise ValueError(f"source=sql needs a database, and the tracking URI is {redact(uri)!r}; pass the server's "
                         "backend store as -P database=postgresql+psycopg2://..., or use source=api")
    return uri


def load_rows(source: str, database: str = "") -> pd.DataFrame:
    uri = sql_database(source, database)
    return queries.analysed_models_api() if uri is None else queries.analysed_models_sql(uri)


def compare_stage(dataset: str = "", data_fraction: float | None = None, min_epochs: int = 0, source: str = "api",
                  versions: Collection[tuple[str, str]] | None = None, run_name: str = "compare",
                  database: str = "") -> CompareOutcome:
    """Compare the analysed versions that match the filters (and are in `versions`, (name,
    version) pairs, when given), in a run of kind compare."""
    params = {"dataset": dataset, "data_fraction": "" if data_fraction is None else data_fraction,
              "min_epochs": min_epochs, "source": source, "database": redact(database)}
    with stage_run("compare", run_name, params) as run:
        rows = queries.filter_rows(load_rows(source, database), dataset, data_fraction, min_epochs)
        if versions is not None:
            keep = {(n, str(v)) for n, v in versions}
            rows = rows[[(n, str(v)) in keep for n, v in zip(rows[c.MODEL_NAME], rows[c.MODEL_VERSION])]]
            rows = rows.reset_index(drop=True)
        if rows.empty:
            raise ValueError(
                f"no analysed model version matches dataset={dataset or 'any'}, data_fraction="
                f"{'any' if data_fraction is None else data_fraction}, min_epochs={min_epochs}; "
                "train models and run `analyze` on them first"
            )
        table = queries.aggregate(rows)
        complete = rows[rows["complete"]]
        cells = {fraction: heatmap_cells(group) for fraction, group in complete.groupby("data_fraction")}
        with tempfile.TemporaryDirectory() as tmp:
            write_comparison(rows, table, cells, Path(tmp))
            mlflow.log_artifacts(tmp, c.COMPARISON_DIR)
        mlflow.log_metrics({"models": len(rows), "cells": len(table), "incomplete": int(np.sum(~rows["complete"]))})
        with_block = int((rows.get(c.BLOCK_COUNT, 0) >= 1).sum())
        describe(f"Block structure across {len(rows)} analysed model versions in {len(table)} cells (depth x width x data "
                 f"fraction) of {dataset or 'any dataset'}: {with_block} have a block. The table and the heatmap grids are "
                 f"under {c.COMPARISON_DIR}/; each version's newest FINISHED analysis counts.")
    return CompareOutcome(run.info.run_id, rows, table)
