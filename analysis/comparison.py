"""The comparison across analysed models: tables and figures from the rows of analysis/queries.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots, queries


def write_comparison(rows: pd.DataFrame, out: Path) -> pd.DataFrame:
    """models.csv, table.csv/.md (aggregated over seeds), block_vs_width/depth.png and one heatmap
    grid per data fraction (rows depth, columns width) under `out`. Returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    table = queries.aggregate(rows)
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
    return table


def heatmap_cells(group: pd.DataFrame) -> dict:
    """(depth, width) -> (CKA matrix, layer names, caption) from the lowest seed whose analysis
    run has its matrix; cells with none are left out (blank in the grid)."""
    import mlflow
    from mlflow.exceptions import MlflowException

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
