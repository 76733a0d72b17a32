"""The sanity checks of every analysis (science/sanity.py): they pass on real matrices and fail
on planted broken ones; the shuffled baseline against a term-by-term float64 reference; seed
identification on copies and on a planted mismatch."""

import numpy as np
import pytest
import torch

from analysis.nets import ModelConfig, build_model, layer_names
from analysis.science.cka import gram, shuffled_hsic
from analysis.science.sanity import matrix_checks, seed_identification
from analysis.science.similarity import model_cka
from analysis.store import contract as c
from tests.test_cka import hsic1


def test_the_checks_pass_on_an_estimated_matrix_and_report_how_close_it_is():
    torch.manual_seed(0)
    model = build_model(ModelConfig(8, 0.25)).eval()
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    joint = model_cka([model], [layer_names(model.config)], images, torch.zeros(64, dtype=torch.long), batch_size=32, passes=2)
    assert joint.sanity[c.SANITY_DIAGONAL_ERROR] < 1e-12 and joint.sanity[c.SANITY_ASYMMETRY] < 1e-12
    assert joint.sanity[c.SANITY_RANGE_EXCESS] == 0
    # each layer with its own batch-permuted self: near 0, far below the layers' CKA with themselves (1)
    assert np.abs(joint.shuffled).max() < 0.2 and np.abs(joint.shuffled).mean() < 0.05


@pytest.mark.parametrize("plant, message", [
    (lambda m: m.__setitem__((2, 5), m[2, 5] + 1e-3), "not symmetric (by 0.001, at b and e)"),
    (lambda m: m.__setitem__((3, 3), 0.9), "CKA of a layer with itself is not 1 (by 0.1, at c)"),
    (lambda m: (m.__setitem__((1, 4), 1.2), m.__setitem__((4, 1), 1.2)), "outside [-1, 1] (by 0.2, at a and d)"),
])
def test_a_planted_broken_matrix_fails_the_checks_naming_the_layers(plant, message):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.9, (6, 6))
    matrix = (x + x.T) / 2
    np.fill_diagonal(matrix, 1.0)
    matrix_checks(matrix, list("zabcde"))  # whole, it passes
    plant(matrix)
    with pytest.raises(ValueError, match="CKA sanity check failed") as err:
        matrix_checks(matrix, list("zabcde"))
    assert message in str(err.value)


def test_the_shuffled_hsic_equals_a_term_by_term_float64_reference():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(12, 7, generator=g, dtype=torch.float64), torch.randn(12, 3, 2, generator=g, dtype=torch.float64)]
    grams = torch.stack([gram(f, torch.float64) for f in feats])
    cross, own = shuffled_hsic(grams, torch.Generator().manual_seed(5), chunk=1)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(5)).numpy()
    n = 12
    for i, k in enumerate(grams.numpy()):
        assert cross[i].item() / (n * (n - 3)) == pytest.approx(hsic1(k, k[perm][:, perm]), rel=1e-10)
        assert own[i].item() / (n * (n - 3)) == pytest.approx(hsic1(k, k), rel=1e-10)


def test_seed_identification_is_1_on_two_copies_of_a_model_and_0_on_a_shifted_match():
    torch.manual_seed(0)
    model = build_model(ModelConfig(8, 0.25)).eval()
    names = layer_names(model.config)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    joint = model_cka([model, model], [names, names], images, torch.zeros(64, dtype=torch.long), batch_size=32, passes=1)
    assert seed_identification(joint.cross(0, 1)) == 1.0
    shifted = np.roll(np.eye(10), 3, axis=1)  # layer i most similar to layer i + 3
    assert seed_identification(shifted) == 0.0
    assert seed_identification(np.roll(np.eye(10), 1, axis=1)) == 0.9  # within one position, but the last wraps to 0
