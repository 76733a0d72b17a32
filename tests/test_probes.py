"""Ridge linear probes (analysis/science/probes.py) on features whose separability is known."""

import pytest
import torch

from analysis.science.probes import fit_probes, probe_accuracy
from tests.synthetic import Lookup, index_images


def test_probe_on_separable_features_is_near_perfect_and_on_random_labels_near_chance():
    g = torch.Generator().manual_seed(0)
    n, d, classes = 2000, 32, 5
    labels = torch.randint(0, classes, (n,), generator=g)
    means = torch.randn(classes, d, generator=g) * 4
    features = means[labels] + torch.randn(n, d, generator=g)
    model = Lookup({"feat": features})
    images = index_images(n)
    train, test = slice(0, 1500), slice(1500, n)
    probes = fit_probes(model, ["feat"], images[train], labels[train], classes, progress=False)
    assert probe_accuracy(model, probes, images[test], labels[test], progress=False)[0] > 0.98
    shuffled = labels[torch.randperm(n, generator=g)]
    probes = fit_probes(model, ["feat"], images[train], shuffled[train], classes, progress=False)
    assert abs(probe_accuracy(model, probes, images[test], shuffled[test], progress=False)[0] - 1 / classes) < 0.06


def reference_probe(x: torch.Tensor, y: torch.Tensor, classes: int, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ridge classifier written out in float64: centred features, ridge x mean variance."""
    x, onehot = x.double(), torch.nn.functional.one_hot(y, classes).double()
    mean, ymean = x.mean(0), onehot.mean(0)
    cov = (x - mean).T @ (x - mean) / len(x)
    w = torch.linalg.solve(cov + ridge * cov.diagonal().mean() * torch.eye(x.shape[1], dtype=torch.float64),
                           (x - mean).T @ (onehot - ymean) / len(x))
    return w, ymean - mean @ w


@pytest.mark.parametrize("n,d", [(300, 40), (60, 200)])  # primal (d <= n) and dual (d > n) solves
def test_probe_weights_match_a_float64_reference_in_both_solvers(n, d):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (n,), generator=g)
    features = torch.randn(4, d, generator=g)[labels] + torch.randn(n, d, generator=g) + 50.0  # a large mean
    model = Lookup({"feat": features.float()})
    probes = fit_probes(model, ["feat"], index_images(n), labels, 4, pool=1, ridge=1e-2, batch_size=64, progress=False)
    w, b = reference_probe(features.float(), labels, 4, 1e-2)
    assert torch.allclose(probes.weights[0].double(), w, rtol=1e-3, atol=1e-4 * w.abs().max())
    assert torch.allclose(probes.biases[0].double(), b, rtol=1e-3, atol=1e-3)


def test_fitting_in_groups_under_a_memory_bound_gives_the_same_probes():
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (200,), generator=g)
    tables = {f"l{i}": torch.randn(3, 30, generator=g)[labels] + torch.randn(200, 30, generator=g) for i in range(4)}
    model, images = Lookup(tables), index_images(200)
    one = fit_probes(model, list(tables), images, labels, 3, pool=1, progress=False)
    grouped = fit_probes(model, list(tables), images, labels, 3, pool=1, progress=False, memory_bytes=4 * 30 * 30)
    for a, b in zip(one.weights + one.biases, grouped.weights + grouped.biases):
        assert torch.allclose(a, b, atol=1e-6)
