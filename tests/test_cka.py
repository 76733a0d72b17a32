"""The estimator against a float64 NumPy reference written from PAPER.md's trace formula, and the
invariants CKA must satisfy."""

import numpy as np
import pytest
import torch

from analysis.cka import MinibatchCKA, cka


def hsic1(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC, term by term: zero the diagonals, then
    [tr(KL) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'KL1] / (n(n-3))."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def reference_minibatch_cka(xs_batches, ys_batches) -> float:
    grams = lambda a: a.reshape(len(a), -1).astype(np.float64) @ a.reshape(len(a), -1).astype(np.float64).T  # noqa: E731
    xy = sum(hsic1(grams(x), grams(y)) for x, y in zip(xs_batches, ys_batches))
    xx = sum(hsic1(grams(x), grams(x)) for x in xs_batches)
    yy = sum(hsic1(grams(y), grams(y)) for y in ys_batches)
    return xy / np.sqrt(xx * yy)


def reference_biased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), linear CKA via feature space: ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F), centred."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


rng = np.random.default_rng(0)


def correlated(n, d1, d2, offset=0.0, scale=1.0):
    base = rng.normal(size=(n, 5))
    x = base @ rng.normal(size=(5, d1)) + 0.5 * rng.normal(size=(n, d1))
    y = base @ rng.normal(size=(5, d2)) + 0.5 * rng.normal(size=(n, d2))
    return scale * x + offset, y


@pytest.mark.parametrize("offset,scale", [(0.0, 1.0), (1e3, 1.0), (0.0, 1e-4), (50.0, 1e4)])
def test_full_batch_matches_reference_whatever_the_offset_and_scale(offset, scale):
    # CKA is invariant to a mean offset and an isotropic scale, so the true value is the
    # reference's on the plain features. (The reference itself, run on the offset features,
    # loses ~1e-5 to cancellation in float64: the pitfall that centring first avoids.)
    x, y = correlated(40, 30, 12)
    assert cka(scale * x + offset, y) == pytest.approx(reference_minibatch_cka([x], [y]), abs=1e-6)


def test_relu_like_float32_activations_with_large_means_stay_within_1e_6():
    # ReLU outputs: non-negative, large mean, float32 as a network produces them.
    x, y = correlated(256, 4096, 1024)
    x, y = np.maximum(x + 3, 0).astype(np.float32) + 30, np.maximum(y + 5, 0).astype(np.float32) + 100
    centred = lambda a: a.astype(np.float64) - a.astype(np.float64).mean(0)  # noqa: E731  (exact invariance)
    ref = reference_minibatch_cka([centred(x)], [centred(y)])
    assert cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(ref, abs=1e-6)


def test_biased_variant_matches_kornblith():
    x, y = correlated(50, 20, 8, offset=3.0)
    assert cka(x, y, debiased=False, dtype=torch.float64) == pytest.approx(reference_biased_cka(x, y), abs=1e-9)
    assert cka(x, y, debiased=False) == pytest.approx(reference_biased_cka(x, y), abs=1e-6)  # float32 Grams, the default


def test_minibatch_accumulation_matches_reference_not_the_mean_of_batches():
    layers = [rng.normal(size=(60, 3, 4, 4)), rng.normal(size=(60, 10)), None]
    layers[2] = layers[0].reshape(60, -1)[:, :20] * 2 + rng.normal(size=(60, 20))
    batches = [slice(0, 20), slice(20, 40), slice(40, 60)]
    acc, fast = MinibatchCKA(dtype=torch.float64), MinibatchCKA()  # the float64 path, and the default float32 Grams
    for b in batches:
        acc.update([torch.from_numpy(l[b]) for l in layers])
        fast.update([torch.from_numpy(l[b]) for l in layers])
    got = acc.compute()
    for i in range(3):
        for j in range(3):
            ref = reference_minibatch_cka([layers[i][b] for b in batches], [layers[j][b] for b in batches])
            assert got[i, j] == pytest.approx(ref, abs=1e-9)
            assert fast.compute()[i, j] == pytest.approx(ref, abs=1e-6)
    mean_of_batches = np.mean([reference_minibatch_cka([layers[0][b]], [layers[2][b]]) for b in batches])
    assert abs(got[0, 2] - mean_of_batches) > 1e-4  # a different estimator, and we are not it


def test_within_matrix_is_symmetric_with_unit_diagonal():
    acc = MinibatchCKA()
    for _ in range(3):
        acc.update([torch.randn(16, 7) * s + 5 for s in (1, 10, 100, 0.1)])
    m = acc.compute()
    assert np.array_equal(m, m.T)
    assert np.all(np.diag(m) == 1.0)


def test_invariant_to_rotation_and_isotropic_scaling():
    x, y = correlated(64, 16, 9)
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    f64 = torch.float64
    assert cka(x @ q * 37.0, y, dtype=f64) == pytest.approx(cka(x, y, dtype=f64), abs=1e-10)
    assert cka(x @ q * 37.0, y) == pytest.approx(cka(x, y), abs=1e-6)


def test_independent_features_are_near_zero_and_identical_are_one():
    x = rng.normal(size=(2000, 20))
    y = rng.normal(size=(2000, 20))
    assert abs(cka(x, y)) < 0.01
    assert cka(x, x, dtype=torch.float64) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, x) == pytest.approx(1.0, abs=1e-6)


def test_no_drift_with_batch_size():
    # The unbiased estimator's expectation does not depend on n: accumulated over many small
    # batches it agrees with one big batch (the biased one would drift upward for small n).
    x, y = correlated(4096, 40, 30)
    full = cka(x, y)
    for size in (16, 64, 256):
        acc = MinibatchCKA()
        for s in range(0, 4096, size):
            acc.update([torch.from_numpy(x[s : s + size])], [torch.from_numpy(y[s : s + size])])
        assert acc.compute()[0, 0] == pytest.approx(full, abs=0.02)


def test_cross_model_equals_off_diagonal_block_of_joint_matrix():
    a = [torch.randn(32, 12) for _ in range(3)]
    b = [a[0] @ torch.randn(12, 5) + torch.randn(32, 5), torch.randn(32, 4)]
    joint, cross = MinibatchCKA(), MinibatchCKA()
    joint.update(a + b)
    cross.update(a, b)
    np.testing.assert_allclose(cross.compute(), joint.compute()[:3, 3:], atol=1e-12)


def test_batches_smaller_than_four_are_refused():
    with pytest.raises(ValueError, match="minibatch of 3 examples"):
        MinibatchCKA().update([torch.randn(3, 5)])


def test_constant_layer_is_reported_by_name():
    acc = MinibatchCKA(["stem.conv", "stage1.block1.relu"])
    acc.update([torch.randn(8, 4), torch.zeros(8, 4)])
    with pytest.raises(ValueError, match="stage1.block1.relu"):
        acc.compute()


def test_mismatched_batches_across_models_are_refused():
    with pytest.raises(ValueError, match="same batch"):
        MinibatchCKA().update([torch.randn(8, 4)], [torch.randn(9, 4)])


def test_the_analysis_options_refuse_the_batches_the_estimator_refuses():
    from analysis.config import MIN_HSIC_BATCH, AnalysisOptions

    AnalysisOptions(batch_size=MIN_HSIC_BATCH)
    with pytest.raises(ValueError, match="batch_size"):
        AnalysisOptions(batch_size=MIN_HSIC_BATCH - 1)
    MinibatchCKA().update([torch.randn(MIN_HSIC_BATCH, 4)])
    with pytest.raises(ValueError, match="too small for unbiased HSIC"):
        MinibatchCKA().update([torch.randn(MIN_HSIC_BATCH - 1, 4)])
