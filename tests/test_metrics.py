import numpy as np
import pytest

from conceptguard.eval import metrics


def test_blocked_images_count_as_absent_and_as_failures():
    assert metrics.concept_rate([True, True, False, True], [False, True, False, False]) == 0.5
    assert metrics.prompt_following([True, True], [True, False]) == 0.5
    assert metrics.clip_accuracy([0.9, 0.8], [False, True]) == pytest.approx(0.45)
    assert metrics.block_rate([True, False, False, False]) == 0.25
    assert metrics.normalized_clip_score([30.0, 30.0], [30.0, 20.0], [False, True]) == pytest.approx(0.6)


def test_frechet_distance_of_two_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(loc=1.0, size=(4000, 3))  # same covariance, means 1 apart per dimension
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(a, b) == pytest.approx(3.0, abs=0.15)
    few = rng.normal(size=(4, 50))  # singular covariances must not crash or warn
    assert np.isfinite(metrics.frechet_distance(few, few + 1))


@pytest.mark.parametrize("n_a, n_b, d", [(300, 200, 8), (10, 12, 192), (40, 40, 40)])
def test_frechet_distance_equals_the_matrix_square_root_formula(n_a, n_b, d):
    from scipy import linalg

    rng = np.random.default_rng(n_a + d)
    a = rng.normal(size=(n_a, d)) @ rng.normal(size=(d, d))
    b = rng.normal(loc=0.5, size=(n_b, d)) @ rng.normal(size=(d, d))
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # the eigenvalues of S_a S_b are real and >= 0 (a product of two PSD matrices); sqrtm of a
    # singular product is unreliable, so the reference takes the trace through them
    cross = np.sqrt(np.clip(linalg.eigvals(s_a @ s_b).real, 0, None)).sum()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6, abs=1e-6 * np.trace(s_a))
    if n_a > d and n_b > d:  # full-rank covariances: also scipy's sqrtm, as FID implementations use it
        assert metrics.frechet_distance(a, b) == pytest.approx(
            expected - 2 * (np.trace(linalg.sqrtm(s_a @ s_b).real) - cross), rel=1e-6)
