"""Queries over real tracking stores (SQLite in a temp dir, the PostgreSQL server): the API and
SQL routes agree, aggregates are right, partial data is marked, and `compare` logs its outputs."""

import math

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from analysis.store import queries
from entrypoints import analyze as analyze_entry
from entrypoints.common import run_main
from tests.conftest import REPO
from tests.fake_store import SYNTHETIC, populate, register_model, uri

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
    # The newest analysis of each version counts once (the older run logged 0.99).
    assert sorted(runs["tags.seed"]) == ["0", "1", "2"] and set(runs["tags.depth"]) == {"14"}
    assert sorted(runs["metrics.block_largest_frac"]) == [0.5, 0.6, 0.7]
    with sa.create_engine(f"sqlite:///{store / 'mlflow.db'}").connect() as conn:
        result = conn.execute(sa.text(readme_block("sql", heading))).fetchall()
    assert [tuple(r) for r in result] == [(14, 0.25, 3, pytest.approx(0.6))]


def test_readme_queries_run_on_a_store_with_nothing_to_find(store, capsys):
    heading = "## `compare` and querying results"
    exec(readme_block("python", heading), {})  # raised KeyError when the search found no run
    assert "no analysed model has a block" in capsys.readouterr().out
    with sa.create_engine(f"sqlite:///{store / 'mlflow.db'}").connect() as conn:
        assert conn.execute(sa.text(readme_block("sql", heading))).fetchall() == []


def test_the_sql_example_sorts_depth_as_a_number(store):
    populate([(8, 0.25, 0, 0.25, 0.5), (110, 0.25, 0, 0.25, 0.5), (20, 0.25, 0, 0.25, 0.5)])
    with sa.create_engine(f"sqlite:///{store / 'mlflow.db'}").connect() as conn:
        result = conn.execute(sa.text(readme_block("sql", "## `compare` and querying results"))).fetchall()
    assert [r[0] for r in result] == [8, 20, 110]  # as text: '110' < '20' < '8'


@pytest.mark.slow
@pytest.mark.postgres
def test_routes_agree_on_postgresql_with_a_real_analysis(pg_store):
    populate(SYNTHETIC[:3])
    v = register_model(8, 0.25, seed=5)
    args = analyze_entry.parse_args(["--models", uri(v), "--num_examples", "40",
                                     "--batch_size", "20", "--passes", "1", "--device", "cpu", "--analyses", "cka"])
    assert run_main(lambda: analyze_entry.main(args)) == 0
    rows = assert_routes_agree(pg_store)
    real = rows[rows.seed == 5].iloc[0]
    assert real["complete"] and 0 <= real["block_largest_frac"] <= 1


