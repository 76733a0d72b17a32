"""The compare stage: the table and figures it logs, from synthetic and from real analyses."""

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis.store import contract as c
from entrypoints import analyze as analyze_entry
from entrypoints import compare as compare_entry
from entrypoints.common import run_main
from tests.fake_store import SYNTHETIC, populate, register_model, runs_of, uri


def run_compare(*argv: str) -> int:
    return run_main(lambda: compare_entry.main(compare_entry.parse_args(list(argv))))


def test_compare_logs_table_and_figures(store):
    populate()
    assert run_compare("--source", "sql") == 0
    (run,) = runs_of("compare")
    files = {f.path.split("/")[-1] for f in MlflowClient().list_artifacts(run.info.run_id, c.COMPARISON_DIR)}
    assert {"models.csv", "table.csv", "table.md", "block_vs_width.png", "block_vs_depth.png"} <= files
    assert not any(f.startswith("heatmaps") for f in files)  # synthetic runs logged no matrices: no empty grids
    assert run.data.metrics["models"] == len(SYNTHETIC) and run.data.metrics["incomplete"] == 1


def test_compare_with_nothing_analysed_fails_with_a_clear_message(store, capsys):
    assert run_compare() == 2
    assert "no analysed model version matches" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_run_compare_assembles_heatmap_grid_from_real_analyses(store):
    from tests.conftest import mlflow_cli

    for width in (0.25, 0.5):
        v = register_model(8, width)
        args = analyze_entry.parse_args(["--models", uri(v), "--num_examples", "40",
                                         "--batch_size", "20", "--passes", "1", "--device", "cpu", "--analyses", "cka"])
        assert run_main(lambda: analyze_entry.main(args)) == 0
    proc = mlflow_cli("-e", "compare", cwd=store)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = runs_of("compare")
    files = {f.path.split("/")[-1] for f in MlflowClient().list_artifacts(run.info.run_id, c.COMPARISON_DIR)}
    assert "heatmaps_fraction_1.png" in files and "block_vs_width.png" in files
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="comparison/table.csv"))
    assert list(table["width"]) == [0.25, 0.5] and list(table["seeds"]) == [1, 1]


def test_sql_behind_a_server_without_its_database_is_refused_before_the_run(store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: refused before contacting it
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    assert run_compare("--source", "sql") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass the server's backend store as -P database=" in err


@pytest.mark.slow
def test_sql_reads_the_database_while_the_run_goes_through_the_server(tmp_path, monkeypatch):
    """The README's scale-out setup: workers log through `mlflow server`; compare reads the
    server's database with SQL (-P database=) and logs its run and artifacts through the server."""
    from tests.conftest import mlflow_server

    database = f"sqlite:///{tmp_path / 'server.db'}"
    with mlflow_server(database, tmp_path, "--artifacts-destination", str(tmp_path / "artifacts")) as server_uri:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server_uri)
        mlflow.set_tracking_uri(server_uri)
        populate()
        assert run_compare("--source", "sql", "--database", database) == 0
        (run,) = runs_of("compare")
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        files = {f.path.split("/")[-1] for f in MlflowClient().list_artifacts(run.info.run_id, c.COMPARISON_DIR)}
        assert "models.csv" in files
        assert list((tmp_path / "artifacts").rglob("models.csv"))  # written through the server, into its store
    mlflow.set_tracking_uri(None)
