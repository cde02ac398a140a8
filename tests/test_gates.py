"""The quality gates measured on a small sample (the full measurement is `world check`).

Gates not met yet by the shipped (world-v4) weights, with every measured value in
docs/miniworld.md: the mini CLIP's zero-shot shape accuracy and its `shattered` accuracy
(0.87-0.88) and some of the mini SD's generation gates. Those are measured here and marked
xfail (strict: a gate that starts passing fails the test until its mark is removed); every
other gate is held to its threshold.
"""

import pytest

from conceptguard.miniworld.gates import QUICK, check

NOT_MET_YET = {"clip.shape", "clip.shattered.train", "clip.shattered.heldout"}


@pytest.fixture(scope="module")
def quick():
    return check(seed=1, sizes=QUICK, save=False)


@pytest.mark.slow
def test_every_gate_is_measured(quick):
    names = set(quick["gates"])
    assert len(names) == 10 + 12 + 17
    assert {"oracle.texture", "clip.velmora.heldout", "sd.following.heldout", "sd.zorbo.indirect"} <= names
    assert all(0.0 <= g["value"] <= 1.0 for g in quick["gates"].values())


@pytest.mark.slow
def test_oracle_and_clip_gates_hold(quick):
    failed = {n: g for n, g in quick["gates"].items()
              if n.startswith(("oracle.", "clip.")) and n not in NOT_MET_YET and not g["passed"]}
    assert not failed, failed


@pytest.mark.slow
@pytest.mark.xfail(reason="not met yet: CLIP zero-shot shape and shattered accuracy", strict=True)
def test_clip_gates_not_met_yet(quick):
    failed = {n: quick["gates"][n] for n in NOT_MET_YET if not quick["gates"][n]["passed"]}
    assert not failed, failed


@pytest.mark.slow
@pytest.mark.xfail(reason="not met yet: the mini SD does not draw every concept and attribute reliably", strict=True)
def test_generation_gates(quick):
    failed = {n: g for n, g in quick["gates"].items() if n.startswith("sd.") and not g["passed"]}
    assert not failed, failed
