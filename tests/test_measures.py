"""The similarity measures besides linear CKA (science/measures.py) against float64 references
written out term by term, and the invariances each should and should not have, on planted data."""

import numpy as np
import pytest
import torch

from analysis.science.cka import gram
from analysis.science.measures import MEASURES, MeasureAccumulator, kernel

N, D = 120, 24


def features(seed: int, n: int = N, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) * np.linspace(0.5, 3.0, d)  # anisotropic, like activations


def reference_linear_biased(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. 5, in feature space: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def reference_rbf_gram(x: np.ndarray, fraction: float) -> np.ndarray:
    """Kornblith et al.'s gram_rbf: the bandwidth from the median squared distance, diagonal included."""
    x = x - x.mean(0)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-sq / (2 * fraction**2 * np.median(sq)))


def reference_hsic_biased(k: np.ndarray, l_: np.ndarray) -> float:
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l_ @ h)) / (n - 1) ** 2


def reference_rbf(xs: list[np.ndarray], ys: list[np.ndarray], fraction: float) -> float:
    """Summed over batches, then the ratio (the engine's minibatch estimator)."""
    kx = [reference_rbf_gram(x, fraction) for x in xs]
    ky = [reference_rbf_gram(y, fraction) for y in ys]
    cross = sum(reference_hsic_biased(a, b) for a, b in zip(kx, ky))
    return cross / np.sqrt(sum(reference_hsic_biased(a, a) for a in kx) * sum(reference_hsic_biased(b, b) for b in ky))


def reference_mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Huh et al. (2024): the mean share of each example's k nearest neighbours (cosine, itself
    excluded) that the two representations have in common; on batch-centred features here."""
    def neighbours(z: np.ndarray) -> list[set]:
        z = z - z.mean(0)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        sim = z @ z.T
        np.fill_diagonal(sim, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k]) for row in sim]

    return float(np.mean([len(a & b) / k for a, b in zip(neighbours(x), neighbours(y))]))


def measured(measure: str, xs: list[np.ndarray], ys: list[np.ndarray], **kwargs) -> float:
    """The engine's value for layers x and y over the batches: both layers' Grams stacked, as the engine does."""
    acc = MeasureAccumulator(measure, ["x", "y"], **kwargs)
    for x, y in zip(xs, ys):
        acc.update_grams(torch.stack([gram(x, torch.float64), gram(y, torch.float64)]))
    out = acc.compute()
    assert out.shape == (2, 2) and np.allclose(np.diag(out), 1.0)
    return float(out[0, 1])


def test_linear_biased_matches_the_feature_space_formula():
    x, y = features(0), features(1)
    y[:, :5] += 2 * x[:, :5]  # related, not identical
    assert measured("linear_cka_biased", [x], [y]) == pytest.approx(reference_linear_biased(x, y), abs=1e-10)


@pytest.mark.parametrize("fraction", [0.2, 0.8])
def test_rbf_matches_the_published_gram_rbf_over_minibatches(fraction):
    x, y = features(0), np.tanh(features(0)) + 0.3 * features(2)
    halves = [slice(0, 60), slice(60, 120)]
    expected = reference_rbf([x[h] for h in halves], [y[h] for h in halves], fraction)
    assert measured("rbf_cka", [x[h] for h in halves], [y[h] for h in halves], rbf_fraction=fraction) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_mutual_knn_matches_the_neighbour_sets_and_averages_over_batches(k):
    x, y = features(0), features(0) + 0.8 * features(3)
    halves = [slice(0, 60), slice(60, 120)]
    expected = np.mean([reference_mutual_knn(x[h], y[h], k) for h in halves])
    assert measured("mutual_knn", [x[h] for h in halves], [y[h] for h in halves], knn_k=k) == pytest.approx(expected, abs=1e-12)


def rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


@pytest.mark.parametrize("measure", MEASURES)
def test_what_each_measure_is_invariant_to(measure):
    x = features(0)
    mixing = np.random.default_rng(9).normal(size=(D, D)) * np.linspace(0.05, 5, D)  # invertible, far from orthogonal
    values = {
        "identical": measured(measure, [x], [x.copy()]),
        "rotated": measured(measure, [x], [x @ rotation(D, 4)]),
        "scaled": measured(measure, [x], [7.5 * x]),
        "shifted": measured(measure, [x], [x + 100.0]),
        "mixed": measured(measure, [x], [x @ mixing]),
        "independent": measured(measure, [x], [features(5)]),
    }
    for case in ("identical", "rotated", "scaled", "shifted"):
        assert values[case] == pytest.approx(1.0, abs=1e-9), (measure, case, values)
    assert values["mixed"] < 0.98, values  # none is invariant to an arbitrary invertible linear map
    chance = {"linear_cka": 0.05, "linear_cka_biased": 0.35, "rbf_cka": 0.35, "mutual_knn": 0.2}[measure]
    assert values["independent"] < chance, values  # the biased estimators sit above 0 for independent data (d/n)


@pytest.mark.parametrize("measure,kwargs,published", [
    ("linear_cka_biased", {}, 0.55761),
    ("rbf_cka", {"rbf_fraction": 0.5}, 0.65483),
    ("linear_cka", {}, 0.51346),  # their "debiased" CKA: the unbiased HSIC of Song et al. (2012), as here
])
def test_the_values_kornblith_et_al_publish_in_their_demo(measure, kwargs, published):
    """Kornblith et al. (2019)'s demo notebook (google-research/google-research,
    representation_similarity/Demo.ipynb) prints these values, to 5 decimals, for X = randn(100, 10)
    and Y = randn(100, 10) + X drawn after np.random.seed(1337)."""
    rng = np.random.RandomState(1337)
    x = rng.randn(100, 10)
    y = rng.randn(100, 10) + x
    assert round(measured(measure, [x], [y], **kwargs), 5) == published


def test_the_unbiased_estimator_is_near_zero_for_independent_data_where_the_biased_is_not():
    x, y = features(0), features(5)
    assert abs(measured("linear_cka", [x], [y])) < 0.05 < measured("linear_cka_biased", [x], [y])


def test_the_callers_grams_are_left_as_they_were():
    grams = torch.stack([gram(features(s), torch.float64) for s in (0, 1)])
    before = grams.clone()
    for measure in MEASURES:
        acc = MeasureAccumulator(measure, ["a", "b"])
        acc.update_grams(grams)
    assert torch.equal(grams, before)


@pytest.mark.parametrize("measure,kwargs,fragment", [
    ("cosine", {}, "measure='cosine' is unknown; use one of linear_cka, linear_cka_biased, rbf_cka, mutual_knn"),
    ("rbf_cka", {"rbf_fraction": 0.0}, "rbf_fraction=0.0 is not allowed"),
])
def test_bad_settings_are_named(measure, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        MeasureAccumulator(measure, **kwargs)
    with pytest.raises(ValueError, match="knn_k=60 is not allowed for batches of 60"):
        kernel("mutual_knn", gram(features(0, n=60), torch.float64)[None], knn_k=60)
