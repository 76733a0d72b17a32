"""`mlflow run . -e predictions`: do two groups of models (e.g. wide and deep, every seed of
each) make different errors, beyond the variation between seeds of one architecture?

Each model's test-set logits are computed once, logged as an artifact and recorded on the
model version (tag `test_logits`), then reused by later comparisons.
"""

from __future__ import annotations

import argparse
import sys

from analysis.stages.predictions import predictions_stage
from entrypoints.common import Parser, add_data_dir, check_where, number, run_main, whole_number


def parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__)
    p.add_argument("--group_a", required=True, help="registry filter (\"name='cifar10-resnet20-w4'\") or comma-separated models:/ URIs")
    p.add_argument("--group_b", required=True)
    p.add_argument("--alpha", type=number, default=0.05, help="false discovery rate for per-class tests")
    p.add_argument("--permutations", type=whole_number, default=9999)
    p.add_argument("--device", default="auto")
    add_data_dir(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(args: argparse.Namespace) -> None:
    check_where(args.device, args.data_dir)
    outcome = predictions_stage(args.group_a, args.group_b, args.alpha, args.permutations, args.device, args.data_dir)
    m = outcome.metrics
    print(f"cross-group disagreement {m['cross_disagreement']:.4f} vs within {m['within_disagreement']:.4f} "
          f"(p = {m['disagreement_p_value']:.3g}); {int(m['n_significant_classes'])} class(es) differ: run {outcome.run_id}")


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(parse_args())))
