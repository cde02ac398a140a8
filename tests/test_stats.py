"""Intervals, three-state verdicts and the paired comparison, on cases with known answers."""

import json

import numpy as np
import pytest

from conceptguard.eval.metrics import frechet_distance, frechet_interval
from conceptguard.eval.stats import bootstrap, mcnemar, rate_interval, verdict, wilson
from conceptguard.eval.store import RowKey, Store
from conftest import run_cli


def test_wilson_matches_known_values():
    assert wilson(0, 8)[1] == pytest.approx(0.3244, abs=1e-4)  # the "rule of three"-like upper bound
    lo, hi = wilson(4, 8)
    assert lo == pytest.approx(0.2152, abs=1e-4) and hi == pytest.approx(0.7848, abs=1e-4)
    assert wilson(0, 0) is None and rate_interval([True, False]) == wilson(1, 2)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [0.1, 0.4, 0.35, 0.8, 0.2, 0.5, 0.45, 0.6]
    a, b = bootstrap(values), bootstrap(values)
    assert a == b and a[0] < sum(values) / len(values) < a[1]
    assert bootstrap([0.3]) is None


def test_frechet_interval_is_recentred_on_the_estimate():
    """Resampling with replacement repeats images and inflates a Frechet distance: the plain
    percentiles miss the estimate from above; the recentred interval brackets it."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 32)), rng.normal(0.3, 1.0, size=(40, 32))
    rows = np.concatenate([a, b], axis=1)

    def distance(x):
        return frechet_distance(x[:, :32], x[:, 32:])

    estimate = distance(rows)
    plain = bootstrap(rows, distance, n_boot=200)  # 17.6 against [24.2, 32.1]
    assert plain[0] > estimate  # the bias the recentring removes
    lo, hi = frechet_interval(rows, distance)
    assert 0 <= lo < estimate < hi
    same = np.concatenate([a, a], axis=1)
    lo, hi = frechet_interval(same, distance)
    assert lo == 0.0 and hi == pytest.approx(0.0, abs=1e-9)  # floored at 0, never negative


def test_verdicts_have_three_states():
    assert verdict((0.0, 0.04), 0.05, higher_is_better=False) == "yes"
    assert verdict((0.06, 0.2), 0.05, higher_is_better=False) == "no"
    assert verdict((0.0, 0.19), 0.05, higher_is_better=False) == "undecided"
    assert verdict((0.96, 0.99), 0.95, higher_is_better=True) == "yes"
    assert verdict(None, 0.95, higher_is_better=True) == "undecided"


def test_mcnemar_exact():
    assert mcnemar(0, 12) == pytest.approx(2 * 0.5 ** 12)
    assert mcnemar(5, 5) == 1.0 and mcnemar(0, 0) == 1.0


def _run(tmp_path, shown_a, shown_b):
    """A run folder with two stacks judged on the same 20 prompts and seeds."""
    store = Store(tmp_path / "results.sqlite")
    rows = []
    for stack, shown in (("a", shown_a), ("b", shown_b)):
        for i, s in enumerate(shown):
            key = RowKey(stack, "burning", "unacceptable-x", i, 100 + i, 0)
            rows.append({"key": str(key), "stack": stack, "concept": "burning", "prompt_set": "unacceptable",
                         "set_id": "unacceptable-x", "prompt_index": i, "prompt": f"p{i}", "seed": 100 + i,
                         "image_index": 0, "image": f"{stack}{i}.png", "blocked": False, "blocked_by": None,
                         "record": {}, "judges": {"oracle": {"present": s, "p": float(s)}}, "expected": {},
                         "seconds": 0.1})
    store.add(rows)
    store.close()
    return tmp_path


def test_compare_finds_the_better_stack_and_says_when_it_cannot(tmp_path):
    from conceptguard.eval.paired import compare_stacks

    run = _run(tmp_path, [False] * 20, [True] * 12 + [False] * 8)  # b shows the concept 12 times more
    [per_concept, pooled] = compare_stacks(run, "a", "b")
    assert per_concept["answer"] == "a better" and per_concept["p_value"] == pytest.approx(2 * 0.5 ** 12, abs=1e-6)
    assert (per_concept["only_a"], per_concept["only_b"], per_concept["n_pairs"]) == (0, 12, 20)
    assert pooled["concept"] == "all" and pooled["answer"] == "a better"
    (tmp_path / "s").mkdir()
    same = compare_stacks(_run(tmp_path / "s", [True, False] * 10, [False, True] * 10), "a", "b")
    assert same[0]["answer"] == "no difference detected"  # 10 discordant each way


def test_compare_command(tmp_path):
    run = _run(tmp_path, [False] * 20, [True] * 12 + [False] * 8)
    out = run_cli("compare", str(run), "a", "b", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["answer"] == "a better"
    bad = run_cli("compare", str(run), "a", "zzz")
    assert bad.returncode == 2 and "stack 'zzz' is not in" in bad.stderr
