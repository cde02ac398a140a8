"""The quality gates measured on a small sample (the full measurement is `world check`).

On 200 renders the oracle and CLIP gates are held to their thresholds; the generation gates use
8-24 images each here, so one image is worth up to 12 points: they are held to their threshold
minus 0.15 (the full-size numbers are in README, measured by `conceptguard world check`).
"""

import pytest

from conceptguard.miniworld.gates import QUICK, check

SAMPLE_MARGIN = 0.15


@pytest.fixture(scope="module")
def quick():
    return check(seed=1, sizes=QUICK, save=False)


@pytest.mark.slow
def test_every_gate_is_measured(quick):
    names = set(quick["gates"])
    assert len(names) == 10 + 12 + 17
    assert {"oracle.texture", "clip.velmora.heldout", "sd.following.heldout", "sd.zorbo.indirect"} <= names


@pytest.mark.slow
def test_oracle_and_clip_gates_hold(quick):
    failed = {n: g for n, g in quick["gates"].items() if n.startswith(("oracle.", "clip.")) and not g["passed"]}
    assert not failed, failed


@pytest.mark.slow
def test_generation_gates_hold_on_a_small_sample(quick):
    low = {n: g for n, g in quick["gates"].items()
           if n.startswith("sd.") and g["value"] < g["threshold"] - SAMPLE_MARGIN}
    assert not low, low
