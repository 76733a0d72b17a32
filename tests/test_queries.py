"""Queries over real tracking stores (SQLite in a temp dir, the PostgreSQL server): the API and
SQL routes agree, aggregates are right, partial data is marked, and `compare` logs its outputs."""

import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import torch
from mlflow import MlflowClient

from analysis import queries, registry
from analysis.models import ModelConfig, build_model
from entrypoints import analyze as analyze_entry
from entrypoints import compare as compare_entry
from entrypoints.common import run_main
from tests.conftest import REPO

# (depth, width, seed, fraction, block_largest_frac); None: an analysis without block metrics.
SYNTHETIC = [
    (8, 0.25, 0, 1.0, 0.10), (8, 0.25, 1, 1.0, 0.30),
    (8, 0.5, 0, 1.0, 0.40), (8, 0.5, 1, 1.0, None),
    (14, 0.25, 0, 0.25, 0.50), (14, 0.25, 1, 0.25, 0.70), (14, 0.25, 2, 0.25, 0.60),
]  # fmt: skip


def populate(synthetic=SYNTHETIC) -> None:
    """Registered tiny models with synthetic analysis runs as `analyze` logs them, one failed
    analysis, and an older analysis of one version (the newest must win)."""
    client = MlflowClient()
    for depth, width, seed, fraction, largest in synthetic:
        torch.manual_seed(seed)
        model = build_model(ModelConfig(depth, width))
        name = registry.registered_name("cifar10", depth, width)
        with mlflow.start_run() as train_run:
            tags = {"dataset": "cifar10", "depth": str(depth), "width": f"{width:g}", "seed": str(seed),
                    "data_fraction": f"{fraction:g}", "epochs": "3", "test_accuracy": "0.5", "train_accuracy": "0.9",
                    "lineage": f"{depth}-{width}-{seed}-{fraction}"}
            version = registry.register(model, model.config, name, train_run.info.run_id, tags, {"dataset": "cifar10"})
        for attempt, status in (("old", "FINISHED"), ("failed", "FAILED"), ("new", "FINISHED")):
            with mlflow.start_run() as run:
                mlflow.set_tags({"analysis.model_uri": f"models:/{name}/{version.version}", "model_name": name,
                                 "model_version": str(version.version),
                                 **{k: tags[k] for k in ("dataset", "depth", "width", "seed", "data_fraction")}})
                if largest is not None:
                    value = largest if attempt == "new" else 0.99
                    mlflow.log_metrics({"block_largest_frac": value, "block_count": 1.0, "block_mean_cka": 0.95})
            if status == "FAILED":
                client.set_terminated(run.info.run_id, "FAILED")


def assert_routes_agree(url: str) -> pd.DataFrame:
    api = queries.analysed_models_api()
    sql = queries.analysed_models_sql(url)
    pd.testing.assert_frame_equal(api, sql)
    return api


def test_api_and_sql_agree_and_take_the_newest_finished_analysis(store):
    populate()
    rows = assert_routes_agree(f"sqlite:///{store / 'mlflow.db'}")
    assert len(rows) == len(SYNTHETIC)
    assert list(rows.columns) == queries.COLUMNS
    assert rows["depth"].dtype == "Int64" and rows["width"].dtype == float
    expected = sorted(x[4] for x in SYNTHETIC if x[4] is not None)
    assert sorted(rows["block_largest_frac"].dropna()) == expected  # never the old 0.99
    assert rows["complete"].sum() == len(expected)


def test_aggregate_over_seeds_and_marks_incomplete_cells(store):
    populate()
    table = queries.aggregate(queries.analysed_models_api())
    cell = table[(table.depth == 14)].iloc[0]
    assert cell["seeds"] == 3 and cell["block_largest_frac_mean"] == pytest.approx(0.6)
    assert cell["block_largest_frac_std"] == pytest.approx(np.std([0.5, 0.7, 0.6], ddof=1))
    wide = table[(table.depth == 8) & (table.width == 0.5)].iloc[0]
    assert wide["seeds"] == 1 and wide["incomplete"] == 1 and wide["block_largest_frac_mean"] == pytest.approx(0.4)
    assert math.isnan(wide["block_largest_frac_std"])  # one seed: no spread, and not a made-up 0


def test_empty_store_gives_empty_frames(store):
    assert queries.analysed_models_api().empty
    assert queries.analysed_models_sql(f"sqlite:///{store / 'mlflow.db'}").empty
    assert queries.aggregate(queries.analysed_models_api()).empty


def readme_block(language: str, after: str) -> str:
    """The first ```language block after the heading `after` in the README."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(after):]
    start = section.index(f"```{language}\n") + len(language) + 4
    return section[start : section.index("```", start)]


def test_readme_queries_work_as_written(store, capsys):
    populate()
    heading = "## `compare` and querying results"
    namespace = {}
    exec(readme_block("python", heading), namespace)
    runs = namespace["runs"]
    # Every finished analysis run counts: 3 seeds, each analysed twice (the older run logged 0.99).
    assert sorted(runs["tags.seed"]) == ["0", "0", "1", "1", "2", "2"] and set(runs["tags.depth"]) == {"14"}
    with sa.create_engine(f"sqlite:///{store / 'mlflow.db'}").connect() as conn:
        result = conn.execute(sa.text(readme_block("sql", heading))).fetchall()
    assert [tuple(r) for r in result] == [("14", "0.25", 6, pytest.approx((0.5 + 0.7 + 0.6 + 3 * 0.99) / 6))]


def run_compare(*argv: str) -> int:
    return run_main(lambda: compare_entry.main(compare_entry.parse_args(list(argv))))


def test_compare_logs_table_and_figures(store):
    populate()
    assert run_compare("--source", "sql") == 0
    (run,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`widedeep.kind` = 'compare'", output_format="list")
    files = {f.path.split("/")[-1] for f in MlflowClient().list_artifacts(run.info.run_id, "comparison")}
    assert {"models.csv", "table.csv", "table.md", "block_vs_width.png", "block_vs_depth.png"} <= files
    assert not any(f.startswith("heatmaps") for f in files)  # synthetic runs logged no matrices: no empty grids
    assert run.data.metrics["models"] == len(SYNTHETIC) and run.data.metrics["incomplete"] == 1


def test_compare_with_nothing_analysed_fails_with_a_clear_message(store, capsys):
    assert run_compare() == 2
    assert "no analysed model version matches" in capsys.readouterr().err


@pytest.mark.postgres
def test_routes_agree_on_postgresql_with_a_real_analysis(pg_store):
    populate(SYNTHETIC[:3])
    torch.manual_seed(5)
    model = build_model(ModelConfig(8, 0.25))
    with mlflow.start_run() as run:
        v = registry.register(model, model.config, "cifar10-resnet8-w0.25", run.info.run_id,
                              {"dataset": "cifar10", "depth": "8", "width": "0.25", "seed": "5", "data_fraction": "1",
                               "epochs": "1", "test_accuracy": "0.1", "train_accuracy": "0.1", "lineage": "real"},
                              {"dataset": "cifar10"})
    args = analyze_entry.parse_args(["--models", f"models:/cifar10-resnet8-w0.25/{v.version}", "--num_examples", "40",
                                     "--batch_size", "20", "--passes", "1", "--device", "cpu", "--analyses", "cka"])
    assert run_main(lambda: analyze_entry.main(args)) == 0
    rows = assert_routes_agree(pg_store)
    real = rows[rows.seed == 5].iloc[0]
    assert real["complete"] and 0 <= real["block_largest_frac"] <= 1


@pytest.mark.slow
def test_mlflow_run_compare_assembles_heatmap_grid_from_real_analyses(store):
    from tests.conftest import mlflow_cli

    for width in (0.25, 0.5):
        torch.manual_seed(0)
        model = build_model(ModelConfig(8, width))
        with mlflow.start_run() as run:
            v = registry.register(model, model.config, registry.registered_name("cifar10", 8, width), run.info.run_id,
                                  {"dataset": "cifar10", "depth": "8", "width": f"{width:g}", "seed": "0", "data_fraction": "1",
                                   "epochs": "1", "test_accuracy": "0.1", "train_accuracy": "0.1", "lineage": str(width)},
                                  {"dataset": "cifar10"})
        args = analyze_entry.parse_args(["--models", f"models:/{v.name}/{v.version}", "--num_examples", "40",
                                         "--batch_size", "20", "--passes", "1", "--device", "cpu", "--analyses", "cka"])
        assert run_main(lambda: analyze_entry.main(args)) == 0
    proc = mlflow_cli("-e", "compare", cwd=store)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`widedeep.kind` = 'compare'", output_format="list")
    files = {f.path.split("/")[-1] for f in MlflowClient().list_artifacts(run.info.run_id, "comparison")}
    assert "heatmaps_fraction_1.png" in files and "block_vs_width.png" in files
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="comparison/table.csv"))
    assert list(table["width"]) == [0.25, 0.5] and list(table["seeds"]) == [1, 1]
