"""Reading logged results back: the matrices and summaries `analyze` logged, the files of a
comparison or predictions run. Readers for the comparison and the study report."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from . import contract as c
from .summary import ModelSummary

__all__ = ["download", "model_analysis", "cross_matrix", "heatmap_cells"]


def download(run_id: str, path: str) -> Path | None:
    """A run's artifact (file or folder) as a local path, or None when it was never logged."""
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))
    except (MlflowException, OSError):
        return None


def model_analysis(analysis_run_id: str) -> tuple[np.ndarray, ModelSummary] | None:
    """(CKA matrix, summary) of one model's analysis run, or None when they are missing."""
    local = download(analysis_run_id, c.CKA_DIR)
    try:
        return np.load(local / c.MATRIX_FILE), ModelSummary.read(local / c.SUMMARY_FILE)
    except (TypeError, OSError, ValueError, KeyError):
        return None


def cross_matrix(group_run_id: str, label_a: str, label_b: str) -> tuple[np.ndarray, Path] | None:
    """The cross-model CKA of two models analysed together (A on the y axis) and the folder of
    its files, from the group's analysis run; None if they were not analysed together."""
    for a, b, flip in ((label_a, label_b, False), (label_b, label_a, True)):
        local = download(group_run_id, c.cross_dir(a, b))
        if local and (local / c.MATRIX_FILE).exists():
            matrix = np.load(local / c.MATRIX_FILE)
            return (matrix.T if flip else matrix), local
    return None


def heatmap_cells(group: pd.DataFrame) -> dict:
    """(depth, width) -> (CKA matrix, layer names, caption) from the lowest seed whose analysis
    run has its matrix; cells with none are left out (blank in a grid)."""
    cells = {}
    for (depth, width), cell in group.sort_values("seed").groupby(["depth", "width"]):
        for row in cell.itertuples():
            found = model_analysis(getattr(row, c.ANALYSIS_RUN_ID))
            if found is None:
                continue  # no matrix logged (an interrupted or synthetic run): try the next seed
            matrix, summary = found
            caption = f"seed {row.seed}, test {row.test_accuracy:.2f}, train {row.train_accuracy:.2f}"
            cells[(depth, width)] = (matrix, summary.layer_names, caption)
            break
    return cells
