"""`mlflow run . -e compare`: block structure across analysed runs, by width, depth and data.

Reads every analysed model version, aggregates over seeds per (dataset, depth, width,
data_fraction), and logs a comparison run: the table as CSV and Markdown, block size against
width and against depth, and heatmap grids (rows depth, columns width) per data fraction.
"""

from __future__ import annotations

import argparse
import sys

from analysis.stages.compare import SOURCES, compare_stage, sql_database
from entrypoints.common import AUTO, Parser, require, run_main, unless, whole_number


def parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__)
    p.add_argument("--dataset", type=unless("all", ""), default="all", help="only this dataset (default: all)")
    p.add_argument("--data_fraction", type=unless("all", ""), default="all", help="only this data fraction (default: all)")
    p.add_argument("--min_epochs", type=whole_number, default=0, help="only models trained at least this long")
    p.add_argument("--source", default="api", choices=SOURCES, help="tracking API, or SQL on the tracking DB")
    p.add_argument("--database", type=AUTO, default="auto", help="source=sql behind an MLflow server: the server's backend store URI")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def fraction(text: str) -> float | None:
    try:
        return float(text) if text.strip() else None
    except ValueError:
        raise ValueError(f"data_fraction={text!r} is not a number; give e.g. 0.25, or all") from None


def main(args: argparse.Namespace) -> None:
    require(args.min_epochs >= 0, "min_epochs", args.min_epochs, "an integer >= 0")
    sql_database(args.source, args.database)  # checked before the run opens
    outcome = compare_stage(args.dataset, fraction(args.data_fraction), args.min_epochs, args.source, database=args.database)
    print(outcome.table.to_string(index=False))
    print(f"compared {len(outcome.rows)} analysed model(s) in {len(outcome.table)} cell(s): run {outcome.run_id}")


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(parse_args())))
