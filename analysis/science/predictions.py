"""How two groups of models err differently (for example every seed of a wide model against every
seed of a deep one), with tests that respect the variation between seeds.

Input: predicted classes (models x examples) and labels. The unit of replication is the model
(a seed), never the example, since examples are shared by all models.

- Disagreement: for every pair of models, the share of examples whose argmax differs. The
  statistic is mean cross-group disagreement minus mean within-group disagreement; under the null
  "the groups are exchangeable seeds of one population" its distribution comes from reassigning
  models to groups: scipy.stats.permutation_test, exact when the number of splits is small.
  The statistic is symmetric in the groups, so the smallest attainable p is 2 / C(nA+nB, nA):
  0.1 with 3 seeds per group, 0.029 with 4, 0.008 with 5. Use 4 or more seeds per group.
- Per class: each model's accuracy on each class; Welch's t-test (scipy.stats.ttest_ind) per
  class on the per-seed accuracies of the two groups, with its confidence interval for the
  difference, and Benjamini-Hochberg (scipy.stats.false_discovery_control) across classes.
"""

from __future__ import annotations

import dataclasses
from itertools import combinations

import numpy as np
from scipy import stats

from ..store import contract as c

__all__ = ["agreement_matrix", "per_class_accuracy", "GroupComparison", "compare_groups"]


def agreement_matrix(predictions: np.ndarray) -> np.ndarray:
    """Share of examples on which each pair of models predicts the same class (models x models)."""
    p = np.asarray(predictions)
    return (p[:, None, :] == p[None, :, :]).mean(axis=2)


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """models x classes."""
    correct = np.asarray(predictions) == np.asarray(labels)[None, :]
    return np.stack([correct[:, labels == c].mean(axis=1) for c in range(num_classes)], axis=1)


def _cross_minus_within(disagreement: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    cross = disagreement[np.ix_(a, b)].mean()
    within = [disagreement[i, j] for group in (a, b) for i, j in combinations(group, 2)]
    return float(cross - np.mean(within))


@dataclasses.dataclass
class GroupComparison:
    accuracy: np.ndarray  # per model
    agreement: np.ndarray  # models x models
    within_disagreement: float
    cross_disagreement: float
    disagreement_p_value: float
    example_accuracy_a: np.ndarray  # per example: share of group A models that got it right
    example_accuracy_b: np.ndarray
    class_accuracy: np.ndarray  # models x classes
    class_difference: np.ndarray  # mean(B) - mean(A) per class
    class_ci: np.ndarray  # classes x 2, confidence interval of the difference
    class_p_value: np.ndarray
    class_q_value: np.ndarray  # Benjamini-Hochberg adjusted
    class_effect_size: np.ndarray  # Hedges' g of the difference
    alpha: float

    @property
    def significant_classes(self) -> np.ndarray:
        return np.flatnonzero(self.class_q_value < self.alpha)

    def metrics(self) -> dict[str, float]:
        return {
            c.WITHIN_DISAGREEMENT: self.within_disagreement,
            c.CROSS_DISAGREEMENT: self.cross_disagreement,
            c.CROSS_VS_WITHIN_DISAGREEMENT: self.cross_disagreement - self.within_disagreement,
            c.DISAGREEMENT_P_VALUE: self.disagreement_p_value,
            c.N_SIGNIFICANT_CLASSES: float(len(self.significant_classes)),
        }


def compare_groups(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray, num_classes: int,
                   alpha: float = 0.05, permutations: int = 9999, seed: int = 0) -> GroupComparison:
    """pred_a, pred_b: predicted classes, (models in group, examples). At least 2 models per group."""
    pred_a, pred_b, labels = np.asarray(pred_a), np.asarray(pred_b), np.asarray(labels)
    if len(pred_a) < 2 or len(pred_b) < 2:
        raise ValueError(f"each group needs at least 2 models (seeds) to estimate seed-to-seed variation; got {len(pred_a)} and {len(pred_b)}")
    if pred_a.shape[1] != pred_b.shape[1] or pred_a.shape[1] != len(labels):
        raise ValueError("both groups must be scored on the same examples")
    preds = np.concatenate([pred_a, pred_b])
    a, b = np.arange(len(pred_a)), np.arange(len(pred_a), len(preds))
    agreement = agreement_matrix(preds)
    disagreement = 1 - agreement
    test = stats.permutation_test(
        (a, b), lambda x, y: _cross_minus_within(disagreement, x, y), permutation_type="independent",
        alternative="greater", n_resamples=permutations, vectorized=False, rng=np.random.default_rng(seed),
    )
    within = [disagreement[i, j] for group in (a, b) for i, j in combinations(group, 2)]
    correct = preds == labels[None, :]
    class_acc = per_class_accuracy(preds, labels, num_classes)
    ca, cb = class_acc[a], class_acc[b]
    welch = stats.ttest_ind(cb, ca, axis=0, equal_var=False)
    p = np.nan_to_num(welch.pvalue, nan=1.0)  # a class both groups get identically right: no evidence
    ci = welch.confidence_interval(confidence_level=1 - alpha)
    pooled = np.sqrt(((len(ca) - 1) * ca.var(axis=0, ddof=1) + (len(cb) - 1) * cb.var(axis=0, ddof=1)) / (len(ca) + len(cb) - 2))
    correction = 1 - 3 / (4 * (len(ca) + len(cb)) - 9)  # Hedges' small-sample correction
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(pooled > 0, (cb.mean(0) - ca.mean(0)) / pooled * correction, 0.0)
    return GroupComparison(
        accuracy=correct.mean(axis=1),
        agreement=agreement,
        within_disagreement=float(np.mean(within)),
        cross_disagreement=float(disagreement[np.ix_(a, b)].mean()),
        disagreement_p_value=float(test.pvalue),
        example_accuracy_a=correct[a].mean(axis=0),
        example_accuracy_b=correct[b].mean(axis=0),
        class_accuracy=class_acc,
        class_difference=cb.mean(0) - ca.mean(0),
        class_ci=np.stack([np.nan_to_num(ci.low), np.nan_to_num(ci.high)], axis=1),
        class_p_value=p,
        class_q_value=stats.false_discovery_control(p, method="bh"),
        class_effect_size=effect,
        alpha=alpha,
    )
