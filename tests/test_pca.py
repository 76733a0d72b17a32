"""PC1 by streaming power iteration (analysis/science/pca.py) on activations of known spectrum."""

import pytest
import torch

from analysis.science.cka import gram, u_center
from analysis.science.pca import estimate_pc1
from analysis.science.similarity import batch_reductions
from tests.synthetic import Lookup, index_images, known_spectrum


def remove_direction(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The paper's PC removal written out: centre x (n, d) over examples, subtract its component
    along unit vector v."""
    xc = x - x.mean(0, keepdim=True)
    return xc - torch.outer(xc @ v, v)


def test_pc1_share_and_direction_on_a_known_spectrum():
    singular = [10.0, 4.0, 3.0, 2.0, 1.0, 1.0, 0.5]
    x, v0 = known_spectrum(600, 40, singular)
    model = Lookup({"layer": x})
    pc = estimate_pc1(model, ["layer"], index_images(600), batch_size=128, iterations=8, progress=False)
    assert pc.share[0] == pytest.approx(100 / sum(s * s for s in singular), abs=1e-5)
    assert abs(float(pc.directions[0].double() @ v0)) == pytest.approx(1.0, abs=1e-5)
    assert pc.residual[0] < 1e-4


def test_removal_is_orthogonal_and_matches_the_gram_identity():
    x, v0 = known_spectrum(50, 12, [5.0, 2.0, 1.0])
    removed = remove_direction(x, v0)
    assert torch.allclose(removed @ v0, torch.zeros(50, dtype=torch.float64), atol=1e-10)
    # batch_reductions gives Grams K and projections q; K - q q^T is the Gram of the removed features.
    model = Lookup({"layer": x})
    k, q, _ = batch_reductions(model, ["layer"], index_images(50), directions=[v0])
    k, q = k.double(), q.double()  # float32 products, as the analysis computes them
    expected = u_center(gram(removed)[None])
    got = u_center(k - q[:, :, None] * q[:, None, :])
    assert (got - expected).abs().max() <= 1e-6 * k.abs().max()  # float32 rounding of K, nothing more
