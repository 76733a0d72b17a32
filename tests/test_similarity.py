"""CKA of whole models over shared batches (analysis/science/similarity.py), with and without PC1."""

import numpy as np
import pytest
import torch

from analysis.data import load_dataset
from analysis.nets import ModelConfig, as_input, batch_statistics, build_model, layer_names
from analysis.science.pca import estimate_pc1
from analysis.science.similarity import float64_cka, model_cka, pass_batches
from tests.synthetic import Lookup, index_images, shared_pc_layers


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


def test_float32_grams_stay_within_1e_7_of_float64_on_real_activations(tiny_data, cache_root, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache_root))
    images = load_dataset("cifar10", tiny_data).test_x  # real CIFAR-10 images when the shared copy exists
    torch.manual_seed(0)
    config = ModelConfig(14, 0.5)
    model = build_model(config).eval()
    names = layer_names(config)
    got = model_cka([model], [names], images, torch.zeros(len(images), dtype=torch.long), batch_size=25, passes=2,
                    progress=False)
    expected = float64_cka(model, names, images, pass_batches(len(images), 25, 2, 0))
    assert np.abs(got.within(0) - expected).max() <= 1e-7


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e4])
def test_float32_grams_stay_within_1e_7_with_large_activation_offsets(offset):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(200, 64, generator=g)
    tables = {"a": base + offset, "b": (base @ torch.randn(64, 64, generator=g)).relu() + offset,
              "c": torch.randn(200, 64, generator=g) * 0.1 + offset}
    model = Lookup({k: v.float() for k, v in tables.items()})
    images, names = index_images(200), list(tables)
    got = model_cka([model], [names], images, torch.zeros(200, dtype=torch.long), batch_size=50, passes=1, progress=False)
    expected = float64_cka(model, names, images, pass_batches(200, 50, 1, 0))
    assert np.abs(got.within(0) - expected).max() <= 1e-7


def test_batch_statistics_recover_the_heatmap_that_wrong_running_statistics_distort(tiny_data, cache_root, monkeypatch):
    """A network whose stored BatchNorm statistics are its initial ones (mean 0, variance 1), as a
    young snapshot's are: in inference mode its heatmap is distorted; with batch statistics it is
    (close to) the heatmap of the same network with statistics fitted to the data, and the stored
    statistics are left as they were."""
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache_root))
    data = load_dataset("cifar10", tiny_data)
    images, targets = data.train_x, data.train_y  # 300 images
    config = ModelConfig(8, 0.5)
    torch.manual_seed(0)
    model = build_model(config)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:  # the population statistics of these images: a cumulative average over one pass
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(as_input(images, torch.device("cpu")))
    model.eval()
    names = layer_names(config)

    def heatmap() -> np.ndarray:
        return model_cka([model], [names], images, targets, batch_size=150, passes=1).within(0)

    right = heatmap()
    for m in norms:  # planted: the statistics of initialisation
        m.reset_running_stats()
    wrong = heatmap()
    with batch_statistics(model):
        batch = heatmap()
    # measured: 0.38 and 0.004
    assert np.abs(wrong - right).max() > 0.2
    assert np.abs(batch - right).max() < 0.02
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) and torch.equal(m.running_var, torch.ones_like(m.running_var))
               and int(m.num_batches_tracked) == 0 for m in norms)
