"""PC1, PC1 removal, linear probes and block deletion, on synthetic features with known answers."""

import numpy as np
import pytest
import torch
from torch import nn

from analysis.cka import gram, u_center
from analysis.deletion import deleted, deletion_accuracy
from analysis.evaluation import predict_logits
from analysis.features import batch_reductions
from analysis.model_cka import model_cka
from analysis.models import ModelConfig, build_model, residual_blocks
from analysis.pca import estimate_pc1, remove_direction
from analysis.pipeline import FITS_TRAINING_SET, training_fit
from analysis.probes import fit_probes, probe_accuracy
from analysis.registry import LoadedModel


class Lookup(nn.Module):
    """A 'model' whose named layers return rows of fixed feature tables, the row index encoded in
    the first two pixels of each uint8 image: synthetic activations with known structure."""

    def __init__(self, tables: dict[str, torch.Tensor]):
        super().__init__()
        self.names = list(tables)
        for name, table in tables.items():
            self.register_buffer(f"table_{name}", table)
            self.add_module(name, nn.Identity())
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        idx = (x[:, 0, 0, 0] * 255).round().long() + 256 * (x[:, 0, 0, 1] * 255).round().long()
        out = None
        for name in self.names:
            out = getattr(self, name)(getattr(self, f"table_{name}")[idx] * self.scale)
        return out


def index_images(n: int) -> torch.Tensor:
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    return images


def known_spectrum(n: int, d: int, singular: list[float], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(singular), generator=g, dtype=torch.float64))
    u = u - u.mean(0)  # centred over examples
    u, _ = torch.linalg.qr(u)
    v, _ = torch.linalg.qr(torch.randn(d, len(singular), generator=g, dtype=torch.float64))
    x = u @ torch.diag(torch.tensor(singular, dtype=torch.float64)) @ v.T + 5.0  # plus a mean offset
    return x, v[:, 0]


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
    expected = u_center(gram(removed)[None])
    assert torch.allclose(u_center((k - q[:, :, None] * q[:, None, :])), expected, atol=1e-8)


def shared_pc_layers(n: int = 512, d: int = 30, seed: int = 0):
    """Three layers sharing one dominant direction of large variance, plus independent noise."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, 1, generator=g) * 20
    return {f"l{i}": common @ torch.randn(1, d, generator=g) + torch.randn(n, d, generator=g) for i in range(3)}


def test_removing_a_shared_pc1_breaks_the_block_and_pc1_alone_keeps_it():
    tables = shared_pc_layers()
    model = Lookup(tables)
    names = list(tables)
    images = index_images(512)
    pc = estimate_pc1(model, names, images, batch_size=128, iterations=6, progress=False)
    result = model_cka([model], [names], images, torch.zeros(512, dtype=torch.long), batch_size=128, passes=2,
                       directions=[pc.directions], progress=False)
    off = ~np.eye(3, dtype=bool)
    assert result.within(0)[off].min() > 0.9  # a block...
    assert np.abs(result.within(0, "without_pc1")[off]).max() < 0.1  # ...made of PC1 alone
    assert result.within(0, "pc1_only")[off].min() > 0.99
    assert (pc.share > 0.9).all()


def test_removing_pc1_leaves_cka_unchanged_where_pc1_carries_nothing_special():
    # y is a rotation of x with a flat spectrum: CKA is 1 before and after removing each PC1.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 20, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    model = Lookup({"x": x, "y": x @ q})
    images = index_images(400)
    pc = estimate_pc1(model, ["x", "y"], images, batch_size=100, iterations=30, block=8, progress=False)
    result = model_cka([model], [["x", "y"]], images, torch.zeros(400, dtype=torch.long), batch_size=100, passes=1,
                       directions=[pc.directions], progress=False)
    assert result.within(0)[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert result.within(0, "without_pc1")[0, 1] == pytest.approx(1.0, abs=1e-3)


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


def test_deleting_a_block_whose_residual_branch_is_zeroed_changes_no_logit():
    torch.manual_seed(0)
    config = ModelConfig(14, 0.5)
    model = build_model(config).eval()
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    block = model.get_submodule("stage1.block2")
    torch.nn.init.zeros_(block.bn2.weight)
    torch.nn.init.zeros_(block.bn2.bias)
    intact = predict_logits(model, images)
    with deleted(model, "stage1.block2"):
        assert torch.equal(predict_logits(model, images), intact)
    with deleted(model, "stage3.block2"):
        assert not torch.allclose(predict_logits(model, images), intact)
    accuracy = deletion_accuracy(model, config, images, torch.zeros(8, dtype=torch.long))
    assert list(accuracy) == residual_blocks(config, identity_only=True) == ["stage1.block1", "stage1.block2", "stage2.block2", "stage3.block2"]


def test_the_shared_forward_pass_gives_the_same_cka_as_separate_passes():
    tables = shared_pc_layers(n=256)
    model = Lookup(tables)
    other = Lookup({k: v.flip(1) * 2 for k, v in tables.items()})
    names = list(tables)
    images, targets = index_images(256), torch.zeros(256, dtype=torch.long)
    pc = estimate_pc1(model, names, images, batch_size=64, iterations=2, progress=False)
    pc_other = estimate_pc1(other, names, images, batch_size=64, iterations=2, progress=False)
    together = model_cka([model, other], [names, names], images, targets, batch_size=64, passes=2,
                         directions=[pc.directions, pc_other.directions], progress=False)
    alone = model_cka([model], [names], images, targets, batch_size=64, passes=2, progress=False)
    np.testing.assert_allclose(together.within(0), alone.within(0), atol=1e-12)
    alone_other = model_cka([other], [names], images, targets, batch_size=64, passes=2,
                            directions=[pc_other.directions], progress=False)
    np.testing.assert_allclose(together.within(1, "without_pc1"), alone_other.within(0, "without_pc1"), atol=1e-12)


def test_a_model_that_does_not_fit_its_training_set_is_flagged_and_named():
    config = ModelConfig(depth=8, width=0.25)

    def loaded(tags: dict) -> LoadedModel:
        return LoadedModel(build_model(config), config, "models:/m/1", "m", "1", tags, None, {})

    with pytest.warns(UserWarning, match=r"m-v1 fits only 12\.0% of its training set"):
        assert training_fit(loaded({"train_accuracy": "0.12"})) == 0.0
    assert training_fit(loaded({"train_accuracy": str(FITS_TRAINING_SET)})) == 1.0
    assert training_fit(loaded({})) is None
