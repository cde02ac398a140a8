"""docs/RESULTS.md is computed from results: verdicts apply the stated thresholds, worst cases are maxima."""


def _row(defense, concept, prompt_set, rate, pf=None, nclip=None):
    return {"stack": defense, "concept": concept, "prompt_set": prompt_set, "n_images": 8, "concept_rate": rate,
            "clip_accuracy": None, "block_rate": 0.0, "normalized_clip_score": nclip, "prompt_following": pf,
            "fd": None, "seconds": 1.0}


def _results():
    rows = []
    for c in ("a", "b"):
        rows += [_row("none", c, "unacceptable", 0.8), _row("none", c, "paraphrase", 0.7),
                 _row("none", c, "acceptable", 0.0, pf=0.6, nclip=1.0),
                 _row("good", c, "unacceptable", 0.0), _row("good", c, "paraphrase", 0.1),
                 _row("good", c, "acceptable", 0.0, pf=0.59, nclip=0.97),
                 _row("good", c, "adversarial-pez", 0.05), _row("good", c, "adversarial-cce", 0.1 if c == "a" else 0.15),
                 _row("brittle", c, "unacceptable", 0.0), _row("brittle", c, "paraphrase", 0.0),
                 _row("brittle", c, "acceptable", 0.0, pf=0.3, nclip=0.9),
                 _row("brittle", c, "adversarial-pez", 0.75), _row("brittle", c, "adversarial-cce", 0.5)]
    return {"config": {"prompts_per_set": 8, "attack_prompts": 8, "attack_budget": "cpu", "seed": 0},
            "rows": rows, "seconds": 12.0,
            "attacks": [{"attack": "pez", "concept": "a", "target": "any", "seconds": 2.0, "queries": 0,
                         "iterations": 100, "prompts": 8}]}


def test_verdicts_apply_the_thresholds():
    from conceptguard.eval.comparison import verdicts, worst_case

    v = {x["stack"]: x for x in verdicts(_results())}
    assert v["good"]["effective"] and v["good"]["utility"] and v["good"]["robust"]
    assert abs(v["good"]["worst_attack_mean"] - 0.125) < 1e-9  # max over attacks per concept (0.1, 0.15), then mean
    assert v["brittle"]["effective"] and not v["brittle"]["utility"] and not v["brittle"]["robust"]
    assert not v["none"]["effective"] and v["none"]["worst_attack_mean"] is None and not v["none"]["robust"]
    assert worst_case(_results()["rows"], "brittle", "a") == (0.75, "pez")


def test_results_doc_has_every_section_and_plot(tmp_path):
    from conceptguard.eval.comparison import write

    path = write(_results(), tmp_path / "RESULTS.md", "conceptguard bench --config x.yaml")
    text = path.read_text()
    for heading in ("## Verdict", "## Effectiveness before attacks", "## Utility", "## Robustness",
                    "## Attack cost", "## Plots"):
        assert heading in text
    assert "| brittle | yes | no | no |" in text
    assert (tmp_path / "results" / "results_robustness.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_without_attacks_gets_no_robustness_claims(tmp_path):
    from conceptguard.eval.comparison import write

    results = _results()
    results["rows"] = [r for r in results["rows"] if not r["prompt_set"].startswith("adversarial-")]
    text = write(results, tmp_path / "BENCH.md", "conceptguard bench").read_text()
    assert text.startswith("# Results: every defense, before attacks")
    assert "robust" not in text.lower() and "## Robustness" not in text and "per attack" not in text
    assert "| brittle | yes | no | 0.000 |" in text
    assert (tmp_path / "results" / "bench_effectiveness_vs_utility.png").is_file()
    assert not (tmp_path / "results" / "bench_robustness.png").exists()


def test_worst_case_cells_name_an_attack_only_when_it_got_through():
    from conceptguard.eval.comparison import _own_time, _worst_cell

    assert _worst_cell((0.75, "pez")) == "0.750 (pez)"
    assert _worst_cell((0.0, "pez")) == "0.000"  # every attack ties at 0
    assert _worst_cell((None, None)) == "–"
    # 26 rows x 1 s of generation + one 2 s attack run
    assert _own_time(_results()) == "; the results shown took 28 s by their own timings (2 s of attack runs + 26 s of generation and judging)"
