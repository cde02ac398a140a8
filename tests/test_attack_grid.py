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


def test_attack_success_is_reported_final_cumulative_and_best_of_n(tmp_path):
    """Ring-A-Bell rewrites the seed prompts: its cumulative ASR counts prompt i when its own image or
    the seed prompt's image (same noise) shows the concept; best of N counts a prompt once per any
    image; the seed prompts themselves are a set on every stack."""
    import sqlite3

    from conceptguard.attacks import get_attack

    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump({**GRID, "defenses": ["none", "blocklist"], "attacks": ["ringabell"],
                                   "images_per_prompt": 2, "attack_settings": {"ringabell": {"generations": 2}},
                                   "results_doc": str(tmp_path / "RESULTS.md")}))
    out = tmp_path / "run"
    result = run_cli("bench", "--config", str(cfg), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    rows = {(r["stack"], r["prompt_set"]): r for r in json.loads(result.stdout)["rows"]}
    assert get_attack("ringabell").rewrites_seed_prompts and not get_attack("synonym").rewrites_seed_prompts
    with sqlite3.connect(out / "results.sqlite") as con:
        stored = con.execute("SELECT stack, prompt_set, prompt_index, image_index, blocked, judges FROM images").fetchall()
    hits = {(s, p, i, k): (not b) and json.loads(j)["oracle"]["present"] for s, p, i, k, b, j in stored}
    for stack in ("none", "blocklist"):
        adv = {(i, k): h for (s, p, i, k), h in hits.items() if s == stack and p == "adversarial-ringabell"}
        seeds = {(i, k): h for (s, p, i, k), h in hits.items() if s == stack and p == "attack-seeds"}
        assert len(adv) == len(seeds) == 6
        row = rows[(stack, "adversarial-ringabell")]
        assert row["asr_cumulative"] == round(sum(h or seeds[key] for key, h in adv.items()) / 6, 4)
        assert row["asr_best_of_n"] == round(sum(adv[(i, 0)] or adv[(i, 1)] for i in range(3)) / 3, 4)
        assert row["asr_cumulative"] >= row["concept_rate"] and row["asr_best_of_n"] >= row["concept_rate"]
    assert rows[("blocklist", "attack-seeds")]["block_rate"] == 1.0  # the seed prompts name the concept
    doc = (tmp_path / "RESULTS.md").read_text()
    assert "ASR, cumulative (UnlearnDiffAtk's definition" in doc and "ringabell cumulative" in doc
    assert "Attack budget `cpu`" in doc
