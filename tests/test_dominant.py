"""Dominant examples (analysis/science/dominant.py) on activations with planted answers."""

import numpy as np
import pytest
import torch

from analysis.science.blocks import Block, mean_off_diagonal
from analysis.science.dominant import example_shares, find_dominant, image_statistics, jaccard, region_overlaps, removal_sets
from analysis.science.explain import ModelReport, explanation_metrics
from analysis.science.pca import estimate_pc1
from analysis.science.similarity import model_cka
from tests.synthetic import Lookup, index_images

N, D, K = 120, 16, 3
PLANTED = [4, 9, 17]  # the dominant examples of the planted block
BLOCK = Block(1, 3, "b1", "b3", 3, 0.5, 0.99)  # layers 1-3 of 6


def planted_tables(seed: int = 0) -> dict[str, torch.Tensor]:
    """Six layers of Gaussian noise; in layers 1-3 the PLANTED examples also sit far out along one
    shared direction, so they carry those layers' PC1, as the follow-up paper describes."""
    g = torch.Generator().manual_seed(seed)
    tables = {}
    for layer in range(6):
        x = torch.randn(N, D, generator=g, dtype=torch.float64)
        if 1 <= layer <= 3:
            direction = torch.randn(D, generator=g, dtype=torch.float64)
            x[PLANTED] += 25 * direction / direction.norm() * torch.tensor([1.0, 1.2, 0.9], dtype=torch.float64)[:, None]
        tables[f"l{layer}"] = x.float()
    return tables


def planted_images() -> torch.Tensor:
    """The images the statistics read: the planted examples white, the rest dark grey."""
    images = torch.full((N, 3, 4, 4), 40, dtype=torch.uint8)
    images[PLANTED] = 255
    return images


def test_shares_sum_to_one_per_layer_and_are_squared_scores():
    scores = np.array([[3.0, -4.0, 0.0], [1.0, 1.0, 1.0]])
    shares = example_shares(scores)
    np.testing.assert_allclose(shares, [[9 / 25, 16 / 25, 0], [1 / 3, 1 / 3, 1 / 3]])


def test_jaccard_of_known_sets():
    top = np.array([[0, 1, 2, 3], [0, 1, 2, 3], [2, 3, 4, 5], [6, 7, 8, 9]])
    overlap = jaccard(top)
    assert overlap[0, 1] == 1.0 and overlap[0, 3] == 0.0
    assert overlap[0, 2] == pytest.approx(2 / 6)  # {2, 3} of {0..5}
    np.testing.assert_allclose(overlap, overlap.T)
    np.testing.assert_allclose(jaccard(top[:2], top[2:]), [[2 / 6, 0], [2 / 6, 0]])


def test_region_overlaps_average_pairs_inside_blocks_and_within_each_outside_stretch():
    overlap = np.eye(7)
    overlap[2:5, 2:5] = 0.8  # the block's three layers
    overlap[0, 1] = overlap[1, 0] = 0.3  # the stretch before it
    overlap[5, 6] = overlap[6, 5] = 0.1  # and the one after
    overlap[0, 6] = overlap[6, 0] = 1.0  # two layers in different stretches: never paired
    np.fill_diagonal(overlap, 1.0)
    inside, outside = region_overlaps(overlap, [Block(2, 4, "a", "b", 3, 3 / 7, 0.99)])
    assert inside == pytest.approx(0.8)
    assert outside == pytest.approx((0.3 + 0.1) / 2)
    assert np.isnan(region_overlaps(overlap, [])[0])


def test_planted_dominant_examples_are_found_through_the_streaming_pc1():
    model = Lookup(planted_tables())
    pc = estimate_pc1(model, model.names, index_images(N), batch_size=50, iterations=6, progress=False)
    # The scores are the centred activations projected on PC1, exactly (float64 reference).
    for i, table in enumerate(model.names):
        x = getattr(model, f"table_{table}").double()
        expected = (x - x.mean(0)) @ pc.directions[i].double()
        np.testing.assert_allclose(pc.scores[i], expected.numpy(), atol=1e-4 * float(expected.abs().max()))

    found = find_dominant(pc.scores, [BLOCK], planted_images(), np.arange(1000, 1000 + N), K)
    for layer in (1, 2, 3):
        assert set(found.top[layer]) == set(PLANTED)
        assert found.shares[layer, PLANTED].sum() > 0.9  # three of 120 examples carry the layer's PC1
    assert set(found.groups[0].examples) == set(PLANTED) and found.groups[0].label == "block 1-3"
    assert found.groups[0].images.shape == (K, 3, 4, 4)
    assert found.statistics["dominant"]["brightness"] == pytest.approx(1.0)
    assert found.statistics["others"]["brightness"] == pytest.approx(40 / 255)
    assert found.statistics["others"]["contrast"] == pytest.approx(0.0)

    metrics = explanation_metrics(ModelReport("m", model.names, np.eye(6), [BLOCK], {}, dominant=found))
    assert metrics["dominant_overlap_in_block"] == 1.0
    assert metrics["dominant_overlap_outside"] < 0.3  # noise layers pick unrelated top-3 sets
    assert metrics["dominant_share_in_block"] > 0.9
    assert metrics["dominant_share_in_block"] > metrics["dominant_share_top3"]


def test_without_a_block_the_whole_model_is_one_group_and_in_block_metrics_are_left_out():
    model = Lookup(planted_tables(seed=1))
    pc = estimate_pc1(model, model.names, index_images(N), batch_size=60, iterations=4, progress=False)
    found = find_dominant(pc.scores, [], planted_images(), np.arange(N), K)
    assert [g.label for g in found.groups] == ["all layers"]
    metrics = explanation_metrics(ModelReport("m", model.names, np.eye(6), [], {}, dominant=found))
    assert "dominant_overlap_in_block" not in metrics and "dominant_share_in_block" not in metrics
    assert 0 < metrics["dominant_overlap_outside"] < 1


def test_image_statistics_of_known_images():
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[0, 0] = 255  # pure red
    images[1, :, 0] = 255  # top half white, bottom half black
    stats = image_statistics(images)
    assert stats["red"] == pytest.approx(0.75) and stats["green"] == pytest.approx(0.25)
    assert stats["brightness"] == pytest.approx((0.299 + 0.5) / 2)
    assert stats["contrast"] == pytest.approx(np.std([1, 1, 0, 0], ddof=1) / 2)
    assert stats["saturation"] == pytest.approx(0.5)  # pure red 1, white and black 0


def test_a_top_k_as_large_as_the_example_count_is_refused():
    with pytest.raises(ValueError, match="dominant_top=5 must be between 1"):
        find_dominant(np.ones((2, 5)), [], torch.zeros(5, 3, 2, 2, dtype=torch.uint8), np.arange(5), 5)


def test_removing_the_planted_dominant_examples_removes_the_block_and_removing_random_ones_does_not():
    """The follow-up's causal test on a planted answer: layers 1-3 are alike only through the three
    PLANTED examples, so CKA without them falls to noise, while CKA without three random examples
    keeps the block."""
    model = Lookup(planted_tables())
    images, targets = index_images(N), torch.zeros(N, dtype=torch.long)
    pc = estimate_pc1(model, model.names, images, batch_size=60, iterations=6, progress=False)
    found = find_dominant(pc.scores, [BLOCK], planted_images(), np.arange(N), K)
    dominant, control = removal_sets(found, [BLOCK], seed=0)
    assert sorted(dominant) == PLANTED and len(control) == K and not set(control) & set(PLANTED)

    def block_cka(removed: np.ndarray) -> float:
        keep = torch.from_numpy(np.setdiff1d(np.arange(N), removed))
        matrix = model_cka([model], [model.names], images[keep], targets[keep], batch_size=len(keep), passes=1).within(0)
        return mean_off_diagonal(matrix, BLOCK.start, BLOCK.end)

    # measured: 0.78 with every example, 0.78 without three random ones, 0.002 without the planted three
    assert block_cka(np.array([], dtype=int)) > 0.7  # the planted block (noise layers are near 0)
    assert block_cka(control) > 0.7
    assert abs(block_cka(dominant)) < 0.05
    assert removal_sets(found, [], seed=0)[0].size == 0  # no block, nothing to remove
