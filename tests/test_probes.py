"""Ridge linear probes (analysis/science/probes.py) on features whose separability is known."""

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
