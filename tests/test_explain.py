"""The explanation metrics (analysis/science/explain.py) on small reports whose answers are
worked out by hand, the training-fit guard, the probes' training set and cross-seed similarity."""

import numpy as np
import pytest
import torch

from analysis.config import FITS_TRAINING_SET
from analysis.data import indices_hash, subset_indices
from analysis.science.blocks import Block
from analysis.science.explain import (
    ModelReport, cross_seed_similarity, explanation_metrics, fit_to_training_set, probe_training_indices,
)

NAMES = ["stem.relu", "stage1.block1.bn2", "stage1.block1.relu", "stage1.block2.bn2", "stage1.block2.relu",
         "stage2.block1.bn2", "stage2.block1.relu", "stage2.block2.bn2", "stage2.block2.relu", "logits"]


def report_with_a_block() -> ModelReport:
    """A block over layers 2..6 (stage1.block1.relu .. stage2.block1.relu)."""
    n = len(NAMES)
    without = np.full((n, n), 0.3)
    np.fill_diagonal(without, 1.0)
    without[2:7, 2:7] = 0.6
    np.fill_diagonal(without, 1.0)
    block = Block(2, 6, NAMES[2], NAMES[6], 5, 0.5, 0.97)
    share = np.array([0.1, 0.2, 0.8, 0.7, 0.9, 0.6, 0.5, 0.2, 0.1, 0.3])
    probe_names = [n for n in NAMES if n.endswith((".bn2", ".relu")) and n != "stem.relu"]
    probe_acc = np.array([0.30, 0.40, 0.50, 0.52, 0.53, 0.55, 0.60, 0.70])
    return ModelReport(label="m-v1", names=NAMES, cka=np.eye(n), blocks=[block],
                       metrics={"analysis_test_accuracy": 0.8}, cka_without_pc1=without, pc1_share=share,
                       probe_names=probe_names, probe_outputs=[n for n in probe_names if n.endswith(".relu")],
                       probe_accuracy={"subset": probe_acc},
                       deletion={"stage1.block2": 0.78, "stage2.block2": 0.6})


def test_explanation_metrics_match_hand_computed_values():
    m = explanation_metrics(report_with_a_block())
    assert m["pc1_share_in_block"] == pytest.approx((0.8 + 0.7 + 0.9 + 0.6 + 0.5) / 5)
    assert m["pc1_share_outside"] == pytest.approx((0.1 + 0.2 + 0.2 + 0.1 + 0.3) / 5)
    assert m["block_mean_cka_without_pc1"] == pytest.approx(0.6)
    # block outputs inside the block: stage1.block1.relu (0.40), stage1.block2.relu (0.52), stage2.block1.relu (0.55)
    assert m["probe_gain_in_block"] == pytest.approx(0.55 - 0.40)
    assert m["deletion_drop_in_block"] == pytest.approx(0.8 - 0.78)
    assert m["deletion_drop_outside"] == pytest.approx(0.8 - 0.6)


def test_without_a_block_only_the_defined_metrics_are_given():
    report = report_with_a_block()
    report.blocks = []
    m = explanation_metrics(report)
    assert set(m) == {"pc1_share_outside", "deletion_drop_outside"}
    assert m["pc1_share_outside"] == pytest.approx(report.pc1_share.mean())


def test_a_model_that_does_not_fit_its_training_set_is_flagged_and_named():
    with pytest.warns(UserWarning, match=r"m-v1 fits only 12\.0% of its training set"):
        assert fit_to_training_set(0.12, "m-v1") == 0.0
    assert fit_to_training_set(FITS_TRAINING_SET, "m-v1") == 1.0
    assert fit_to_training_set(None, "m-v1") is None


def test_probe_training_set_is_the_models_own_subset_thinned_across_classes():
    labels = torch.arange(10).repeat_interleave(100)  # class-sorted, as an ImageFolder listing is
    subset = subset_indices(labels, 0.5, 0)
    index = probe_training_indices(labels, "subset", 0.5, 0, indices_hash(subset), limit=100, what="models:/m/1")
    assert set(index.tolist()) <= set(subset.tolist()) and len(index) == 100
    assert torch.bincount(labels[index], minlength=10).min() >= 8  # every class stays represented
    assert len(probe_training_indices(labels, "full", 1.0, 0, None, limit=0, what="x")) == 1000


def test_a_subset_that_is_not_in_this_data_is_refused_by_name():
    labels = torch.arange(10).repeat_interleave(10)
    with pytest.raises(ValueError, match=r"models:/m/1: its training subset \(deadbeef\) is not in this copy"):
        probe_training_indices(labels, "subset", 0.5, 0, "deadbeef", limit=0, what="models:/m/1")


def test_cross_seed_similarity_splits_the_diagonal_by_model_as_block():
    cross = np.diag([0.9, 0.9, 0.2, 0.3, 0.9]) + 0.01
    out = cross_seed_similarity(cross, [{"start": 2, "end": 3}])
    assert out["same_layer_cka_in_block"] == pytest.approx(0.26)
    assert out["same_layer_cka_outside"] == pytest.approx(0.91)
    assert np.isnan(cross_seed_similarity(cross, [])["same_layer_cka_in_block"])
