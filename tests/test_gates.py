"""The quality gates measured on a small sample (the full measurement is `world check`)."""

import pytest

from conceptguard.miniworld.gates import QUICK, check


@pytest.mark.slow
def test_quick_gates():
    result = check(seed=1, sizes=QUICK, save=False)
    gates = result["gates"]
    assert len(gates) == 5 + 5 + 2 + 10 + 2 + 15
    failed = {name: g for name, g in gates.items() if not g["passed"]}
    assert not failed, failed
