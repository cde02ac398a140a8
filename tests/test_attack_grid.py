"""Attacks inside the bench: each stack gets its own adversarial sets, results are cached and
shared where they cannot differ, a resumed run adds nothing, and RESULTS.md is written by it."""

import json

import yaml

from conftest import run_cli

GRID = dict(defenses=["none", "blocklist", "espresso"], concepts=["burning"], prompt_sets=["unacceptable"],
            prompts_per_set=3, steps=4, batch_size=8, judges=["oracle", "clip"], attacks=["synonym"],
            attack_prompts=3)


def test_bench_runs_attacks_per_stack_resumes_and_writes_the_results_doc(tmp_path):
    doc = tmp_path / "docs" / "RESULTS.md"
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump({**GRID, "results_doc": str(doc)}))
    out = tmp_path / "run"
    first = run_cli("bench", "--config", str(cfg), "--out", str(out), "--json")
    assert first.returncode == 0, first.stderr
    results = json.loads(first.stdout)
    rows = {(r["stack"], r["prompt_set"]): r for r in results["rows"]}
    for stack in GRID["defenses"]:
        assert rows[(stack, "adversarial-synonym")]["n_images"] == 3
    # the blocklist knows only the training phrasings: the synonym prompts get through
    assert rows[("blocklist", "unacceptable")]["block_rate"] == 1.0
    assert rows[("blocklist", "adversarial-synonym")]["block_rate"] == 0.0
    index = json.loads((out / "attacks" / "index.json").read_text())
    # one result for the stacks without a prompt filter, its own for the blocklist
    assert index["synonym|none|burning"] == index["synonym|espresso|burning"] != index["synonym|blocklist|burning"]
    assert {c["attack"] for c in results["attacks"]} == {"synonym"} and len(results["attacks"]) == 2
    assert [c["attack"] for c in results["certificates"]] == ["synonym"]
    assert 0 <= results["certificates"][0]["beyond_radius"] <= 1
    assert "## Robustness" in doc.read_text() and (doc.parent / "results" / "results_robustness.png").is_file()

    other = tmp_path / "docs" / "OTHER.md"  # --results-doc overrides the config's document
    again = run_cli("bench", "--config", str(cfg), "--out", str(out), "--results-doc", str(other), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["rows"] == results["rows"]  # nothing regenerated, nothing lost
    assert "--results-doc" in other.read_text() and (doc.parent / "results" / "other_robustness.png").is_file()
