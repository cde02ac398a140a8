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
