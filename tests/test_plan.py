"""`conceptguard bench --dry-run`: the plan of a config, and the papers' configs it is meant for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conceptguard.errors import ConfigError
from conceptguard.eval.config import load_config
from conceptguard.eval.plan import plan
from conftest import run_cli

PAPER_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "paper").glob("*.yaml"))


def test_the_four_paper_configs_exist():
    assert {p.stem for p in PAPER_CONFIGS} == {"espresso", "unlearndiffatk-nudity", "steerdiff", "allbutone"}


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_config_validates_and_dry_run_prints_its_plan(path, tmp_path):
    config = load_config(path, plan=True)
    assert config.model == "CompVis/stable-diffusion-v1-4" and config.clip == "openai/clip-vit-large-patch14"
    assert config.attack_budget == "paper" and config.attacks
    out = tmp_path / "run"
    result = run_cli("bench", "--config", str(path), "--dry-run", "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["missing_prompt_files"] and not found["images_complete"]  # the papers' prompts are not shipped
    assert found["model"]["status"] in ("downloads on first use", "in the Hugging Face cache")
    assert found["seconds_per_image"] is None and "not measured" in found["estimate_source"]  # never a guess
    assert found["cells"] == len(config.defenses) * len(config.concepts) * len(found["prompt_sets"])
    assert not (out / "results.sqlite").exists()
    # run for real, the missing prompts are one line
    with pytest.raises(ConfigError, match="prompt file not found"):
        load_config(path)


def test_plan_counts_per_concept_files_and_measures_the_mini_world(tmp_path):
    for concept, n in (("burning", 3), ("zorbo", 5)):
        (tmp_path / f"{concept}.txt").write_text("".join(f"prompt {i} of {concept}\n" for i in range(n)))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "defenses": ["blocklist", "uce"], "concepts": ["burning", "zorbo"], "prompt_sets": ["acceptable"],
        "prompts_per_set": 4, "images_per_prompt": 2, "steps": 2, "attacks": ["synonym"], "attack_prompts": 6,
        "prompt_files": {"mine": str(tmp_path / "{concept}.txt")}}))
    found = plan(load_config(path), tmp_path / "absent")
    # per stack: 4 acceptable + 6 attack seeds + 6 adversarial + the concept's own file; 3 stacks; 2 images a prompt
    assert found["images"] == ((4 + 12 + 3) + (4 + 12 + 5)) * 3 * 2 and found["images_complete"]
    assert found["prompt_sets"] == ["acceptable", "mine", "attack-seeds", "adversarial-synonym"]
    assert found["cells"] == 3 * 2 * 4
    assert found["trained_on_first_use"] == ["uce"]
    assert found["seconds_per_image"] > 0 and found["estimate_source"].startswith("measured now")
    assert found["estimated_minutes"] == pytest.approx(found["images"] * found["seconds_per_image"] / 60, abs=0.1)


def test_plan_uses_the_costs_a_run_has_stored(tmp_path):
    from conceptguard.eval.runner import BenchConfig, Runner

    config = BenchConfig(defenses=["none"], concepts=["burning"], prompt_sets=["acceptable"], prompts_per_set=2,
                         steps=2, judges=["oracle"])
    Runner(config, tmp_path).run()
    found = plan(config, tmp_path)
    assert found["estimate_source"] == f"mean of 2 images stored in {tmp_path}" and found["seconds_per_image"] > 0
