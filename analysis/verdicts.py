"""Whether a study supports each of the paper's claims, contradicts it, or cannot test it, and why.

The report puts numbers beside every claim; a reader still has to decide what they say. These
rules decide it the same way every time, from the per-model numbers the report shows:
- only models that fit their training set (clean accuracy >= FITS_TRAINING_SET) count: an
  under-trained ResNet looks like one big block (Nguyen et al., 2021), so its numbers test nothing;
- a claim about the block is judged on the fitted models that have one, and holds when it holds
  for most of them (more than half);
- a claim that compares seeds or groups needs two or more of them.
They are deliberately simple, and each verdict says what it was decided on.
"""

from __future__ import annotations

import dataclasses
from math import comb
from typing import Callable

import numpy as np
import pandas as pd

from .config import BLOCK_THRESHOLD, FITS_TRAINING_SET
from .store import contract as c

__all__ = ["Verdict", "SUPPORTS", "CONTRADICTS", "CANNOT_TEST", "verdicts", "under_trained", "PROBE_FLAT"]

SUPPORTS, CONTRADICTS, CANNOT_TEST = "supports", "contradicts", "cannot test"
PROBE_FLAT = 0.05  # a probe gain across the block under this is "barely improves"
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: str  # SUPPORTS, CONTRADICTS or CANNOT_TEST
    reason: str  # what it was decided on, in one sentence


def under_trained(numbers: pd.DataFrame) -> pd.DataFrame:
    """The models that fit less than FITS_TRAINING_SET of their training set."""
    if c.TRAIN_ACCURACY not in numbers:
        return numbers.iloc[0:0]
    return numbers[numbers[c.TRAIN_ACCURACY] < FITS_TRAINING_SET]


def _most(held: pd.Series, what: str, of: str) -> Verdict:
    """SUPPORTS when `held` is true for more than half of the rows, else CONTRADICTS."""
    n, k = len(held), int(held.sum())
    return Verdict(SUPPORTS if k > n / 2 else CONTRADICTS, f"{what} in {k} of {n} {of}")


def _in_blocks(fitted: pd.DataFrame, columns: tuple[str, ...], test: Callable[[pd.DataFrame], pd.Series], what: str) -> Verdict:
    """A claim about the block, judged on the fitted models with a block that have `columns`."""
    with_block = fitted[fitted.get(c.BLOCK_COUNT, pd.Series(0, index=fitted.index)).fillna(0) >= 1]
    if with_block.empty:
        return Verdict(CANNOT_TEST, "no model that fits its training set has a block")
    measured = with_block.dropna(subset=[col for col in columns if col in with_block])
    if any(col not in with_block for col in columns) or measured.empty:
        return Verdict(CANNOT_TEST, "the analysis that measures it was not run on the models with a block")
    return _most(test(measured), what, "fitted models with a block")


def _block_contrast(fitted: pd.DataFrame) -> Verdict:
    """Blocks in the largest architecture (by depth x width^2, how its parameter count scales),
    not in the smallest: each judged by the share of its fitted seeds with a block. In most seeds
    of the large one and at most half of the small one's, it holds; no more often in the large one
    than in the small one, it does not; in between, the seeds cannot decide."""
    if c.BLOCK_COUNT not in fitted:
        return Verdict(CANNOT_TEST, "no model was analysed for blocks")
    arch = fitted.assign(capacity=fitted[c.DEPTH] * fitted[c.WIDTH] ** 2, has=fitted[c.BLOCK_COUNT].fillna(0) >= 1)
    share = arch.groupby([c.DEPTH, c.WIDTH, c.DATA_FRACTION, "capacity"])["has"].agg(["mean", "count"]).reset_index()
    if len(share) < 2:
        return Verdict(CANNOT_TEST, "one architecture only: there is no control to contrast")
    large, small = share.loc[share["capacity"].idxmax()], share.loc[share["capacity"].idxmin()]

    def said(row) -> str:
        return f"ResNet-{int(row[c.DEPTH])} w{row[c.WIDTH]:g} has a block in {row['mean']:.0%} of its {int(row['count'])} fitted seed(s)"

    reason = f"{said(large)}; {said(small)}"
    if large["mean"] > 0.5 >= small["mean"]:
        return Verdict(SUPPORTS, reason)
    if large["mean"] <= small["mean"]:
        return Verdict(CONTRADICTS, reason)
    return Verdict(CANNOT_TEST, f"{reason}: the contrast leans the paper's way but is not clear; more seeds would decide")


def verdicts(numbers: pd.DataFrame, cross: pd.DataFrame, predictions: dict[str, float], seeds_per_group: int) -> dict[str, Verdict]:
    """The verdict on each claim of report.SECTIONS that has one. `numbers`: per model (config,
    accuracies, metrics); `cross`: per pair of seeds analysed together; `predictions`: the
    predictions stage's metrics; `seeds_per_group`: the smaller of its two groups."""
    fitted = numbers.drop(under_trained(numbers).index)
    if fitted.empty:
        nothing = Verdict(CANNOT_TEST, f"no model fits {FITS_TRAINING_SET:.0%} of its training set; train longer")
        out = {key: nothing for key in ("block-structure", "pc1", "without-pc1", "probes", "deletion", "cross-seed",
                                        "dominant", "without-dominant")}
    else:
        out = {
            "block-structure": _block_contrast(fitted),
            "pc1": _in_blocks(fitted, (c.PC1_SHARE_IN_BLOCK, c.PC1_SHARE_OUTSIDE),
                              lambda m: m[c.PC1_SHARE_IN_BLOCK] > m[c.PC1_SHARE_OUTSIDE],
                              "PC1 explains more of the variance inside the block than outside"),
            "without-pc1": _in_blocks(fitted, (c.BLOCK_MEAN_CKA_WITHOUT_PC1,),
                                      lambda m: m[c.BLOCK_MEAN_CKA_WITHOUT_PC1] < BLOCK_THRESHOLD,
                                      f"the block falls under the detector's CKA {BLOCK_THRESHOLD} without PC1"),
            "probes": _in_blocks(fitted, (c.PROBE_GAIN_IN_BLOCK,), lambda m: m[c.PROBE_GAIN_IN_BLOCK].abs() < PROBE_FLAT,
                                 f"probe accuracy changes by under {PROBE_FLAT} across the block"),
            "deletion": _in_blocks(fitted, (c.DELETION_DROP_IN_BLOCK, c.DELETION_DROP_OUTSIDE),
                                   lambda m: m[c.DELETION_DROP_IN_BLOCK] < m[c.DELETION_DROP_OUTSIDE],
                                   "deleting a block inside costs less accuracy than outside"),
            "dominant": _in_blocks(fitted, (c.DOMINANT_OVERLAP_IN_BLOCK, c.DOMINANT_OVERLAP_OUTSIDE),
                                   lambda m: m[c.DOMINANT_OVERLAP_IN_BLOCK] > m[c.DOMINANT_OVERLAP_OUTSIDE],
                                   "the same dominant images top the block's layers more than other layers'"),
            "without-dominant": _in_blocks(
                fitted, (c.BLOCK_MEAN_CKA_WITHOUT_DOMINANT, c.BLOCK_MEAN_CKA_WITHOUT_RANDOM),
                lambda m: (m[c.BLOCK_MEAN_CKA_WITHOUT_DOMINANT] < BLOCK_THRESHOLD) & (m[c.BLOCK_MEAN_CKA_WITHOUT_RANDOM] >= BLOCK_THRESHOLD),
                f"the block falls under CKA {BLOCK_THRESHOLD} without its dominant images and not without random ones"),
            "cross-seed": _cross_seed(cross),
        }
    out["predictions"] = _predictions(predictions, seeds_per_group)
    return out


def _cross_seed(cross: pd.DataFrame) -> Verdict:
    columns = (c.SAME_LAYER_CKA_IN_BLOCK, c.SAME_LAYER_CKA_OUTSIDE)
    if cross.empty or any(col not in cross for col in columns):
        return Verdict(CANNOT_TEST, "needs two or more seeds of one architecture analysed together")
    pairs = cross.dropna(subset=list(columns))
    if pairs.empty:
        return Verdict(CANNOT_TEST, "no pair of seeds where one has a block")
    return _most(pairs[c.SAME_LAYER_CKA_OUTSIDE] > pairs[c.SAME_LAYER_CKA_IN_BLOCK],
                 "the same layer of two seeds is more similar outside the block than inside", "pairs of seeds")


def _predictions(metrics: dict[str, float], seeds_per_group: int) -> Verdict:
    p = metrics.get(c.DISAGREEMENT_P_VALUE)
    if p is None or np.isnan(p):
        return Verdict(CANNOT_TEST, "the predictions stage did not run")
    floor = 2 / comb(2 * seeds_per_group, seeds_per_group) if seeds_per_group else 1.0  # the two extreme splits
    if floor > ALPHA:
        return Verdict(CANNOT_TEST, f"with {seeds_per_group} seeds per group the exact permutation test cannot go below "
                                    f"p = {floor:.2g} (observed {p:.2g}); use 4 or more seeds per group")
    if p < ALPHA:
        return Verdict(SUPPORTS, f"cross-architecture disagreement exceeds within-architecture disagreement (p = {p:.2g})")
    return Verdict(CONTRADICTS, f"cross-architecture disagreement does not exceed the seed-to-seed level (p = {p:.2g})")
