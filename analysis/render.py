"""Files that runs log: similarity matrices as .npy and labelled CSV, heatmaps and curves as PNG,
JSON summaries; one model's analysis and the comparison across models, written to a folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import plots
from .config import short_number
from .science.blocks import layers_in_blocks, mask_spans
from .science.dominant import Dominant
from .science.explain import ModelReport
from .science.predictions import GroupComparison
from .store import contract as c
from .store.summary import DominantSummary, ModelSummary

__all__ = ["write_matrix", "write_heatmap", "write_json", "write_model_report", "write_dominant", "write_history",
           "write_comparison", "write_predictions"]


def write_matrix(directory: Path, stem: str, matrix: np.ndarray, names_y: Sequence[str], names_x: Sequence[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / f"{stem}.npy", matrix)
    pd.DataFrame(matrix, index=list(names_y), columns=list(names_x)).to_csv(directory / f"{stem}.csv")


def write_heatmap(directory: Path, stem: str, matrix: np.ndarray, names_y: Sequence[str], names_x: Sequence[str] | None = None,
                  title: str = "", subtitle: str = "", blocks: Sequence[tuple[int, int]] = (), bar_label: str = "CKA") -> None:
    _save(plots.heatmap(matrix, names_y, names_x, title=title, subtitle=subtitle, blocks=blocks, bar_label=bar_label),
          directory / f"{stem}.png")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)


def _save(fig, path: Path) -> None:
    fig.savefig(path)
    plots.close(fig)


def write_model_report(directory: Path, report: ModelReport, summary: ModelSummary, train_accuracy: float | None) -> None:
    """Every file of one model's analysis under `directory`: matrices, heatmaps, PC1, probe and
    deletion curves, and summary.json (`summary`, given what was analysed and how, completed with
    what the report found)."""
    names, label = report.names, report.label
    spans = [(b.start, b.end) for b in report.blocks]
    accuracy = report.metrics.get(c.ANALYSIS_ACCURACY)
    tested = "?" if accuracy is None else f"{accuracy:.3f}"
    trained = "?" if train_accuracy is None else f"{train_accuracy:.3f}"
    subtitle = (f"test acc {tested} · train acc {trained} · {len(report.blocks)} block(s) · "
                f"BatchNorm: {summary.batchnorm or 'running'} statistics")
    if report.metrics.get(c.FITS_TRAINING_SET_METRIC) == 0:
        subtitle += " · UNDER-TRAINED"
    write_matrix(directory, c.MATRIX, report.cka, names, names)
    write_heatmap(directory, c.HEATMAP, report.cka, names, title=label, subtitle=subtitle, blocks=spans)
    for measure, matrix in report.measures.items():  # the linear CKA's blocks outlined, for comparison
        write_matrix(directory / c.MEASURES_DIR, measure, matrix, names, names)
        write_heatmap(directory / c.MEASURES_DIR, measure, matrix, names, title=f"{label}: {measure}",
                      subtitle="outlined: the blocks of linear CKA", blocks=spans, bar_label=measure)
    summary = dataclasses.replace(summary, layer_names=names, metrics=report.metrics, blocks=[b.as_dict() for b in report.blocks])
    if report.pc1_share is not None:
        write_matrix(directory, c.MATRIX_WITHOUT_PC1, report.cka_without_pc1, names, names)
        write_matrix(directory, c.MATRIX_PC1_ONLY, report.cka_pc1_only, names, names)
        _save(plots.heatmap_pair(report.cka, report.cka_without_pc1, names, ("CKA", "CKA with each layer's PC1 removed"),
                                 f"{label}: {subtitle}", blocks=spans), directory / c.HEATMAP_WITHOUT_PC1_FILE)
        _save(plots.curves(names, {"PC1 share of variance": report.pc1_share}, spans, "share of variance",
                           f"{label}: first principal component per layer"), directory / c.PC1_SHARE_FILE)
        summary.pc1_share = dict(zip(names, report.pc1_share.tolist()))
        summary.pc1_residual_max = float(np.max(report.pc1_residual))
    if report.probe_accuracy:
        outputs = report.probe_names[1::2]  # probe_layers: each block's BN before the add, then its output
        series = {}
        for train_set, acc in report.probe_accuracy.items():
            series[f"block output ({train_set} train)"] = list(acc[1::2])
            series[f"BN before add ({train_set} train)"] = list(acc[0::2])
        _save(plots.curves([o.removesuffix(".relu") for o in outputs], series, mask_spans(layers_in_blocks(report.blocks, names, outputs)),
                           "test accuracy", f"{label}: linear probes (pool {summary.probe_pool}x)",
                           hline=(accuracy, "model")), directory / c.PROBES_FILE)
        summary.probe_accuracy = {k: dict(zip(report.probe_names, v.tolist())) for k, v in report.probe_accuracy.items()}
    if report.deletion is not None:
        deleted = list(report.deletion)
        mask = layers_in_blocks(report.blocks, names, [f"{b}.relu" for b in deleted])
        _save(plots.curves(deleted, {"accuracy with the block deleted": list(report.deletion.values())}, mask_spans(mask),
                           "test accuracy", f"{label}: deleting one residual block at a time",
                           hline=(accuracy, "intact model")), directory / c.DELETION_FILE)
        summary.deletion_accuracy = report.deletion
    if report.dominant is not None:
        summary.dominant = write_dominant(directory / c.DOMINANT_DIR, report.dominant, names, spans, label)
    if report.cka_without_dominant is not None:
        out = directory / c.DOMINANT_DIR
        write_matrix(out, c.MATRIX_WITHOUT_DOMINANT, report.cka_without_dominant, names, names)
        write_matrix(out, c.MATRIX_WITHOUT_RANDOM, report.cka_without_random, names, names)
        _save(plots.heatmap_pair(report.cka_without_dominant, report.cka_without_random, names,
                                 (f"without the blocks' {report.dominant_removed} dominant images",
                                  f"without {report.dominant_removed} random images (control)"),
                                 f"{label}: the follow-up's causal test", blocks=spans), out / c.HEATMAP_WITHOUT_DOMINANT_FILE)
    summary.write(directory / c.SUMMARY_FILE)


def write_dominant(directory: Path, found: Dominant, names: Sequence[str], spans: Sequence[tuple[int, int]],
                   label: str) -> DominantSummary:
    """overlap.npy/.png (Jaccard of the layers' top-k sets), shares.npy (layers x examples),
    top.csv, statistics.csv and one image grid per block; returns what summary.json keeps."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = found.example_ids
    np.save(directory / f"{c.DOMINANT_OVERLAP}.npy", found.overlap)
    np.save(directory / c.DOMINANT_SHARES_FILE, found.shares.astype(np.float32))
    write_heatmap(directory, c.DOMINANT_OVERLAP, found.overlap, names, title=f"{label}: dominant examples shared between layers",
                  subtitle=f"Jaccard overlap of each layer's top {found.k} examples by share of PC1 variance", blocks=spans,
                  bar_label=f"overlap of the top {found.k}")
    shares = np.take_along_axis(found.shares, found.top, axis=1)  # (layers, k), largest first
    pd.DataFrame({"layer": np.repeat(list(names), found.k), "rank": np.tile(np.arange(1, found.k + 1), len(names)),
                  "test_index": ids[found.top].ravel(), "share": shares.ravel()}).to_csv(directory / c.DOMINANT_TOP_FILE, index=False)
    pd.DataFrame(found.statistics).T.to_csv(directory / c.DOMINANT_STATISTICS_FILE, index_label="images")
    for group in found.groups:
        captions = [f"#{ids[e]}\n{share:.1%}" for e, share in zip(group.examples, group.shares)]
        _save(plots.image_grid(group.images, captions, f"{label}, {group.label}: its {found.k} dominant test images "
                                                       "(share of PC1 variance, averaged over its layers)"),
              directory / c.dominant_grid_file(group.label))
    return DominantSummary(found.k, {n: ids[t].tolist() for n, t in zip(names, found.top)},
                           [{"label": g.label, "test_index": ids[g.examples].tolist(), "share": g.shares.tolist()} for g in found.groups],
                           found.statistics)


def write_history(directory: Path, history: Sequence[tuple[int, ModelReport]], label: str, batchnorm: str) -> None:
    """heatmaps.png (one heatmap per snapshot, blocks outlined), metrics.png (the block and PC1
    over epochs), epoch-NNNN.npy (each snapshot's CKA) and summary.json (its metrics and blocks)."""
    directory.mkdir(parents=True, exist_ok=True)
    for epoch, report in history:
        np.save(directory / c.history_matrix_file(epoch), report.cka)
    captions = [f"epoch {e}: " + (f"{r.metrics[c.BLOCK_LARGEST_FRAC]:.0%} in a block" if r.blocks else "no block") for e, r in history]
    _save(plots.heatmap_strip([r.cka for _, r in history], captions, f"{label}: CKA over training (BatchNorm: {batchnorm} statistics)",
                              [[(b.start, b.end) for b in r.blocks] for _, r in history]), directory / c.HISTORY_HEATMAPS_FILE)
    series = {"largest block (share of layers)": [r.metrics[c.BLOCK_LARGEST_FRAC] for _, r in history]}
    if history[0][1].pc1_share is not None:
        series["PC1 share of variance, mean over layers"] = [float(np.mean(r.pc1_share)) for _, r in history]
    if history[0][1].dominant is not None:
        k = history[0][1].dominant.k
        series[f"share of PC1 held by each layer's top {k} examples"] = [float(r.dominant.top_share.mean()) for _, r in history]
    _save(plots.curves([f"epoch {e}" for e, _ in history], series, (), "share",
                       f"{label}: block structure and PC1 over training"), directory / c.HISTORY_METRICS_FILE)
    write_json(directory / c.SUMMARY_FILE, {"label": label, "snapshots": [
        {"epoch": e, "metrics": r.metrics, "blocks": [b.as_dict() for b in r.blocks],
         **({"pc1_share": r.pc1_share.tolist()} if r.pc1_share is not None else {})} for e, r in history]})


def write_comparison(rows: pd.DataFrame, table: pd.DataFrame, cells: dict[float, dict], out: Path) -> None:
    """models.csv, table.csv/.md (aggregated over seeds), block_vs_width/depth.png and one heatmap
    grid per data fraction (rows depth, columns width; `cells[fraction]` from results.heatmap_cells)."""
    out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / c.COMPARISON_MODELS_FILE, index=False)
    table.to_csv(out / f"{c.COMPARISON_TABLE}.csv", index=False)
    (out / f"{c.COMPARISON_TABLE}.md").write_text(table.to_markdown(index=False, floatfmt=".3f"))
    complete = table[table["seeds"] > 0]
    if not complete.empty:
        for x, panel in (("width", "depth"), ("depth", "width")):
            _save(plots.trend(complete, x, panel, c.BLOCK_LARGEST_FRAC, f"largest block (share of layers) against {x}"),
                  out / c.trend_file(x))
    for fraction, found in cells.items():
        if found:
            group = rows[rows[c.DATA_FRACTION] == fraction]
            _save(plots.heatmap_grid(found, sorted(group[c.DEPTH].unique()), sorted(group[c.WIDTH].unique()),
                                     f"CKA heatmaps, data fraction {short_number(fraction)} (lowest seed per cell)"),
                  out / c.heatmap_grid_file(short_number(fraction)))


def write_predictions(result: GroupComparison, a: Sequence[str], b: Sequence[str], classes: Sequence[str], labels: np.ndarray,
                      out: Path) -> None:
    """accuracy, agreement, per-class and per-example tables and their figures for groups A and B."""
    out.mkdir(parents=True, exist_ok=True)
    labels_ab = [f"A:{label}" for label in a] + [f"B:{label}" for label in b]
    accuracy_csv, agreement_csv, per_class_csv, per_example_csv = c.PREDICTIONS_TABLES
    pd.DataFrame({"model": labels_ab, "accuracy": result.accuracy}).to_csv(out / accuracy_csv, index=False)
    pd.DataFrame(result.agreement, index=labels_ab, columns=labels_ab).to_csv(out / agreement_csv)
    pd.DataFrame({
        "class": list(classes), "accuracy_a": result.class_accuracy[: len(a)].mean(0),
        "accuracy_b": result.class_accuracy[len(a):].mean(0), "difference_b_minus_a": result.class_difference,
        "ci_low": result.class_ci[:, 0], "ci_high": result.class_ci[:, 1], "hedges_g": result.class_effect_size,
        "p_value": result.class_p_value, "q_value_bh": result.class_q_value,
    }).to_csv(out / per_class_csv, index=False)
    pd.DataFrame({"label": labels, "accuracy_a": result.example_accuracy_a,
                  "accuracy_b": result.example_accuracy_b}).to_csv(out / per_example_csv, index_label="example")
    per_example_png, per_class_png, agreement_png = c.PREDICTIONS_FIGURES
    figures = {
        per_example_png: plots.example_accuracy_map(result.example_accuracy_a, result.example_accuracy_b, len(a), len(b),
                                                      "group A", "group B"),
        per_class_png: plots.class_differences(list(classes), result.class_difference, result.class_ci,
                                                 list(result.significant_classes),
                                                 f"per-class accuracy, B - A ({1 - result.alpha:.0%} CI; * BH q < {result.alpha})"),
        agreement_png: plots.agreement_heatmap(result.agreement, labels_ab, len(a)),
    }
    for name, fig in figures.items():
        _save(fig, out / name)
