"""Benchmark: the comparison table over many runs, through the tracking API and through SQL.

Logs `--runs` synthetic analysed models into a fresh SQLite store through the MLflow API (a
registered version per model, with the tags `train` sets, and an analysis run with the tags and
block metrics `analyze` logs), then times analysis.store.queries.analysed_models_api and
analysed_models_sql (and the aggregate over seeds) side by side, checking they agree.

    python benchmarks/queries.py                 # 2,000 runs (~5 minutes to populate on 2 cores)
    python benchmarks/queries.py --runs 200
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import mlflow
import pandas as pd
from mlflow import MlflowClient

from analysis.store import queries


def populate(n: int) -> None:
    client = MlflowClient()
    experiment = client.create_experiment("bench")
    cells = itertools.cycle(itertools.product((20, 56, 110), (1, 2, 4, 8), (1.0, 0.25)))
    names = set()
    for i in range(n):
        depth, width, fraction = next(cells)
        name = f"cifar10-resnet{depth}-w{width}"
        if name not in names:
            client.create_registered_model(name)
            names.add(name)
        train = client.create_run(experiment)
        tags = {"dataset": "cifar10", "depth": str(depth), "width": str(width), "seed": str(i // 24),
                "data_fraction": f"{fraction:g}", "epochs": "300", "test_accuracy": "0.9", "train_accuracy": "1.0"}
        version = client.create_model_version(name, f"runs:/{train.info.run_id}/model", run_id=train.info.run_id, tags=tags)
        client.set_terminated(train.info.run_id)
        run = client.create_run(experiment)
        for k, v in {"analysis.model_uri": f"models:/{name}/{version.version}", "model_name": name,
                     "model_version": str(version.version), **tags}.items():
            client.set_tag(run.info.run_id, k, v)
        for k, v in {"block_count": 1.0, "block_largest_frac": (i % 10) / 10, "block_mean_cka": 0.95}.items():
            client.log_metric(run.info.run_id, k, v)
        client.set_terminated(run.info.run_id)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(url)
        start = time.perf_counter()
        populate(args.runs)
        t_populate = time.perf_counter() - start
        api_t, sql_t = [], []
        for _ in range(args.repeats):  # alternating, so that noise hits both
            start = time.perf_counter()
            api = queries.aggregate(queries.analysed_models_api())
            api_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            sql = queries.aggregate(queries.analysed_models_sql(url))
            sql_t.append(time.perf_counter() - start)
        pd.testing.assert_frame_equal(api, sql)
        print(f"\n{args.runs} analysed models ({2 * args.runs} runs, {args.runs} registered versions) in SQLite; "
              f"populating through the API took {t_populate:.0f} s\n")
        print(f"{'route':<28}{'best s':>9}{'median s':>10}")
        for name, ts in (("tracking API (search_runs)", api_t), ("SQL (SQLAlchemy)", sql_t)):
            print(f"{name:<28}{min(ts):>9.2f}{sorted(ts)[len(ts) // 2]:>10.2f}")
        print(f"\nSQL is {min(api_t) / min(sql_t):.1f}x faster; both give the same {len(api)}-row table")


if __name__ == "__main__":
    main()
