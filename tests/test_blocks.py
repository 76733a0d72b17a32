import numpy as np
import pytest

from analysis.science.blocks import block_metrics, find_blocks, in_block_mask, mean_off_diagonal


def planted(n: int, blocks: list[tuple[int, int]], inside: float = 0.97, outside: float = 0.4, noise: float = 0.03, seed: int = 0):
    rng = np.random.default_rng(seed)
    m = np.full((n, n), outside)
    for s, e in blocks:
        m[s : e + 1, s : e + 1] = inside
    m = m + rng.normal(scale=noise, size=(n, n))
    m = np.clip((m + m.T) / 2, 0, 1)
    np.fill_diagonal(m, 1.0)
    return m


def test_finds_a_planted_block_exactly():
    found = find_blocks(planted(60, [(30, 49)]))
    assert [(b.start, b.end) for b in found] == [(30, 49)]
    assert found[0].length == 20 and found[0].fraction == pytest.approx(20 / 60)
    assert found[0].mean_cka == pytest.approx(0.97, abs=0.02)


def test_finds_two_blocks_in_order_with_names():
    names = [f"l{i}" for i in range(80)]
    found = find_blocks(planted(80, [(5, 20), (40, 70)]), names)
    assert [(b.first_layer, b.last_layer) for b in found] == [("l5", "l20"), ("l40", "l70")]


def test_a_few_dissimilar_layers_do_not_split_a_block():
    m = planted(60, [(20, 55)], inside=0.99)
    for odd in (30, 41):  # e.g. a projection shortcut inside the block
        m[odd, 20:56] = m[20:56, odd] = 0.7
        m[odd, odd] = 1
    found = find_blocks(m)
    assert len(found) == 1 and found[0].start == 20 and found[0].end == 55


def test_noise_has_no_block():
    rng = np.random.default_rng(1)
    m = rng.uniform(0.2, 0.8, size=(70, 70))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1)
    assert find_blocks(m) == []


def test_short_local_similarity_is_not_a_block():
    # conv -> bn -> relu triples, even a whole residual block, are similar; at 60 layers a block needs >= 12.
    assert find_blocks(planted(60, [(10, 12), (30, 38)])) == []


def test_metrics_and_mask():
    found = find_blocks(planted(50, [(10, 29)]))
    metrics = block_metrics(found, 50)
    assert metrics["block_count"] == 1 and metrics["block_largest_frac"] == pytest.approx(0.4)
    assert in_block_mask(found, 50).sum() == 20
    assert "block_mean_cka" not in block_metrics([], 50)


def test_nan_matrix_is_refused():
    m = planted(20, [])
    m[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        find_blocks(m)


def test_mean_off_diagonal_ignores_the_unit_diagonal_and_the_outside():
    m = np.full((6, 6), 0.1)
    m[1:5, 1:5] = 0.7
    np.fill_diagonal(m, 1.0)
    assert mean_off_diagonal(m, 1, 4) == pytest.approx(0.7)
    found = find_blocks(m, min_frac=0.5, threshold=0.6)
    assert [(b.start, b.end, round(b.mean_cka, 6)) for b in found] == [(1, 4, 0.7)]
