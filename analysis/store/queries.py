"""The tracking DB as DataFrames: one row per analysed model version, by two routes that agree.

- `analysed_models_api()` goes through the tracking API (`mlflow.search_runs`,
  `MlflowClient.search_model_versions`) and works with any tracking URI, servers included.
- `analysed_models_sql(url)` reads the tracking DB's tables with SQLAlchemy (runs, tags,
  latest_metrics, model_versions, model_version_tags); the same SQL runs on SQLite and
  PostgreSQL, and is much faster on large stores (benchmarks/queries.py).

A row is a model version's latest FINISHED analysis run (tag contract.ANALYSIS_MODEL_URI), with the
version's own tags (architecture, data, accuracies) and the analysis run's metrics. Rows of an
analysis that logged no block metrics are kept and marked `complete = False`; failed or
deleted runs are left out. This module needs no torch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..config import short_number
from . import contract as c
from .lookup import search_versions
from .versions import VersionInfo

__all__ = ["COLUMNS", "METRIC_COLUMNS", "GROUP", "analysed_models_api", "analysed_models_sql", "aggregate", "filter_rows",
           "is_database_uri"]

ID_COLUMNS = [c.MODEL_NAME, c.MODEL_VERSION, c.TRAIN_RUN_ID, c.ANALYSIS_RUN_ID, "analysis_time"]
CONFIG_COLUMNS = [c.DATASET, c.ARCH, c.DEPTH, c.WIDTH, c.SEED, c.DATA_FRACTION, c.EPOCHS]  # VersionInfo's fields
ACCURACY_COLUMNS = list(c.VERSION_ACCURACY)
METRIC_COLUMNS = list(c.ANALYSIS_METRICS)
COLUMNS = ID_COLUMNS + CONFIG_COLUMNS + ACCURACY_COLUMNS + METRIC_COLUMNS + ["complete"]
GROUP = [c.DATASET, c.ARCH, c.DEPTH, c.WIDTH, c.DATA_FRACTION]
INTEGER_COLUMNS = [f.name for f in dataclasses.fields(VersionInfo) if f.name in CONFIG_COLUMNS and f.type.startswith("int")]
DATABASE_SCHEMES = ("sqlite:", "postgresql", "mysql", "mssql")


def is_database_uri(uri: str) -> bool:
    """Whether a tracking URI names a database that SQL can read (not a server or a folder)."""
    return uri.startswith(DATABASE_SCHEMES)


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Typed, ordered columns; newest analysis per model version; stable row order."""
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "complete"])
    for col in INTEGER_COLUMNS:
        df[col] = df[col].astype("Int64")
    for col in [c.WIDTH, c.DATA_FRACTION, *ACCURACY_COLUMNS, *METRIC_COLUMNS]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df[c.MODEL_VERSION] = df[c.MODEL_VERSION].astype(str)
    df["analysis_time"] = pd.to_numeric(df["analysis_time"]).astype("int64")
    df["complete"] = df[c.BLOCK_COUNT].notna()
    df = df.sort_values("analysis_time").drop_duplicates([c.MODEL_NAME, c.MODEL_VERSION], keep="last")
    return df.sort_values([*GROUP, "seed", c.MODEL_NAME, c.MODEL_VERSION]).reset_index(drop=True)


def _version_fields(tags: dict[str, str]) -> dict:
    """The version's config and accuracy columns, from its tags parsed once (VersionInfo)."""
    info = dataclasses.asdict(VersionInfo.from_tags(tags))
    return {k: info[k] for k in [*CONFIG_COLUMNS, *ACCURACY_COLUMNS]}


def analysed_models_api(experiment_ids: list[str] | None = None) -> pd.DataFrame:
    """Through the tracking API: analysis runs by tag, joined to the registry's version tags."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=experiment_ids,
        search_all_experiments=experiment_ids is None,
        filter_string=f"tags.`{c.ANALYSIS_MODEL_URI}` LIKE 'models:/%' and attributes.status = 'FINISHED'",
        output_format="list",
    )
    versions = {}
    for name in {r.data.tags.get(c.MODEL_NAME) for r in runs}:
        for v in search_versions(f"name = '{name}'"):
            versions[(v.name, str(v.version))] = v
    rows = []
    for r in runs:
        key = (r.data.tags.get(c.MODEL_NAME), r.data.tags.get(c.MODEL_VERSION))
        v = versions.get(key)
        if v is None:
            continue  # the version was deleted from the registry
        rows.append({
            c.MODEL_NAME: key[0], c.MODEL_VERSION: key[1], c.TRAIN_RUN_ID: v.run_id, c.ANALYSIS_RUN_ID: r.info.run_id,
            "analysis_time": r.info.start_time, **_version_fields(v.tags),
            **{m: r.data.metrics.get(m) for m in METRIC_COLUMNS},
        })
    return _frame(rows)


def analysed_models_sql(url: str, experiment_ids: list[str] | None = None) -> pd.DataFrame:
    """Straight from the tracking DB's tables (an SQLAlchemy URL: sqlite:///..., postgresql+psycopg2://...)."""
    engine = sa.create_engine(url)
    experiments = "" if experiment_ids is None else "AND r.experiment_id IN :experiments"
    runs_sql = sa.text(f"""
        SELECT r.run_uuid, r.start_time, t.value AS model_uri,
               name.value AS model_name, version.value AS model_version
        FROM runs r
        JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = :analysis_tag
        JOIN tags name ON name.run_uuid = r.run_uuid AND name.key = :name_tag
        JOIN tags version ON version.run_uuid = r.run_uuid AND version.key = :version_tag
        WHERE r.status = 'FINISHED' AND r.lifecycle_stage = 'active' {experiments}
    """)
    params = {"analysis_tag": c.ANALYSIS_MODEL_URI, "name_tag": c.MODEL_NAME, "version_tag": c.MODEL_VERSION}
    if experiment_ids is not None:
        runs_sql = runs_sql.bindparams(sa.bindparam("experiments", expanding=True))
        params["experiments"] = [int(e) for e in experiment_ids]
    metrics_sql = sa.text("""
        SELECT m.run_uuid, m.key, m.value FROM latest_metrics m
        JOIN tags t ON t.run_uuid = m.run_uuid AND t.key = :analysis_tag
    """)
    versions_sql = sa.text("""
        SELECT mv.name, mv.version, mv.run_id, vt.key, vt.value
        FROM model_versions mv LEFT JOIN model_version_tags vt ON vt.name = mv.name AND vt.version = mv.version
        WHERE mv.current_stage != 'Deleted_Internal'
    """)
    with engine.connect() as conn:
        runs = pd.read_sql(runs_sql, conn, params=params)
        metrics = pd.read_sql(metrics_sql, conn, params={"analysis_tag": c.ANALYSIS_MODEL_URI})
        versions = pd.read_sql(versions_sql, conn)
    engine.dispose()
    metric_map = {(r, k): v for r, k, v in metrics.itertuples(index=False)}
    version_tags: dict[tuple[str, str], dict] = {}
    version_run: dict[tuple[str, str], str] = {}
    for name, version, run_id, key, value in versions.itertuples(index=False):
        version_tags.setdefault((name, str(version)), {})[key] = value
        version_run[(name, str(version))] = run_id
    rows = []
    for r in runs.itertuples(index=False):
        key = (r.model_name, str(r.model_version))
        if key not in version_tags:
            continue
        rows.append({
            c.MODEL_NAME: key[0], c.MODEL_VERSION: key[1], c.TRAIN_RUN_ID: version_run[key], c.ANALYSIS_RUN_ID: r.run_uuid,
            "analysis_time": r.start_time, **_version_fields(version_tags[key]),
            **{m: metric_map.get((r.run_uuid, m)) for m in METRIC_COLUMNS},
        })
    return _frame(rows)


def aggregate(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation and count over seeds per (dataset, depth, width, data_fraction).

    Only complete rows enter the statistics; `incomplete` counts the others, so a cell whose
    analyses lacked block metrics shows up instead of silently shrinking its average."""
    metrics = metrics or [c.BLOCK_LARGEST_FRAC, c.BLOCK_COUNT, c.BLOCK_MEAN_CKA, c.TEST_ACCURACY, c.TRAIN_ACCURACY]
    if df.empty:
        return pd.DataFrame(columns=[*GROUP, "seeds", "incomplete"])
    complete = df[df["complete"]]
    grouped = complete.groupby(GROUP, dropna=False)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [f"{m}_{stat}" for m, stat in out.columns]
    out["seeds"] = grouped.size()
    incomplete = df[~df["complete"]].groupby(GROUP, dropna=False).size()
    out = out.join(incomplete.rename("incomplete"), how="outer")
    out["seeds"] = out["seeds"].fillna(0).astype(int)
    out["incomplete"] = out["incomplete"].fillna(0).astype(int)
    return out.reset_index().sort_values(GROUP).reset_index(drop=True)


def filter_rows(df: pd.DataFrame, dataset: str = "", data_fraction: float | None = None, min_epochs: int = 0) -> pd.DataFrame:
    """The rows of one dataset, data fraction (as its tag spells it) and minimum training length."""
    mask = np.ones(len(df), dtype=bool)
    if dataset:
        mask &= (df[c.DATASET] == dataset).to_numpy()
    if data_fraction is not None:
        mask &= (df[c.DATA_FRACTION].map(short_number) == short_number(data_fraction)).to_numpy()
    if min_epochs:
        mask &= (df[c.EPOCHS].fillna(0) >= min_epochs).to_numpy()
    return df[mask].reset_index(drop=True)
