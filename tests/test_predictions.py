"""Prediction comparisons on synthetic predictions with known answers."""

import numpy as np
import pytest

from analysis.science.predictions import agreement_matrix, compare_groups, per_class_accuracy


def test_agreement_by_hand():
    preds = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 0, 0]])
    expected = np.array([[1, 0.75, 0.25], [0.75, 1, 0.5], [0.25, 0.5, 1]])
    np.testing.assert_allclose(agreement_matrix(preds), expected)
    labels = np.array([0, 1, 2, 0])
    np.testing.assert_allclose(per_class_accuracy(preds, labels, 3), [[0.5, 1, 1], [1, 1, 1], [0.5, 1, 0]])


def noisy_models(rng, n_models, labels, num_classes, error=0.3, class_error=None):
    """Models that err independently at random: per example, wrong with probability `error`
    (or class_error[c] for examples of class c)."""
    rates = np.full(len(labels), error) if class_error is None else np.asarray(class_error)[labels]
    out = []
    for _ in range(n_models):
        wrong = rng.random(len(labels)) < rates
        out.append(np.where(wrong, (labels + rng.integers(1, num_classes, len(labels))) % num_classes, labels))
    return np.array(out)


def test_two_groups_from_one_population_show_nothing():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    a, b = noisy_models(rng, 4, labels, 10), noisy_models(rng, 4, labels, 10)
    result = compare_groups(a, b, labels, 10)
    assert result.disagreement_p_value > 0.05
    assert len(result.significant_classes) == 0
    assert result.metrics()["n_significant_classes"] == 0


def test_a_planted_class_difference_is_found_with_the_right_sign():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 5000)
    worse_on_cats = np.full(10, 0.2)
    worse_on_cats[3] = 0.6  # group B errs far more on class 3
    a = noisy_models(rng, 4, labels, 10, error=0.2)
    b = noisy_models(rng, 4, labels, 10, class_error=worse_on_cats)
    result = compare_groups(a, b, labels, 10)
    assert list(result.significant_classes) == [3]
    assert result.class_difference[3] == pytest.approx(-0.4, abs=0.05)  # B minus A: lower accuracy
    assert result.class_ci[3, 1] < 0 and result.class_effect_size[3] < -2


def test_systematically_different_errors_beat_seed_variation():
    # Group B shares a set of 'hard' examples it always gets wrong; A errs at random.
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 3000)
    a = noisy_models(rng, 4, labels, 10, error=0.25)
    b = noisy_models(rng, 4, labels, 10, error=0.1)
    hard = rng.random(3000) < 0.15
    b[:, hard] = (labels[hard] + 1) % 10
    result = compare_groups(a, b, labels, 10)
    assert result.cross_disagreement > result.within_disagreement
    # Exact test over the C(8,4) = 70 splits; the statistic is symmetric in A and B, so the
    # observed split and its mirror are the two most extreme: p = 2/70, the smallest possible.
    assert result.disagreement_p_value == pytest.approx(2 / 70)


def test_groups_of_one_model_are_refused():
    labels = np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match="at least 2 models"):
        compare_groups(labels[None], np.stack([labels, labels]), labels, 2)
