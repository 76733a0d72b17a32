"""Files that runs log: similarity matrices as .npy and labelled CSV, heatmaps as PNG, JSON summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import plots


def write_matrix(directory: Path, stem: str, matrix: np.ndarray, names_y: Sequence[str], names_x: Sequence[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / f"{stem}.npy", matrix)
    pd.DataFrame(matrix, index=list(names_y), columns=list(names_x)).to_csv(directory / f"{stem}.csv")


def write_heatmap(directory: Path, stem: str, matrix: np.ndarray, names_y: Sequence[str], names_x: Sequence[str] | None = None,
                  title: str = "", subtitle: str = "", blocks: Sequence[tuple[int, int]] = ()) -> None:
    fig = plots.heatmap(matrix, names_y, names_x, title=title, subtitle=subtitle, blocks=blocks)
    fig.savefig(directory / f"{stem}.png")
    plots.close(fig)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
