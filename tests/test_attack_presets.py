"""The `paper` budgets are the papers' (docs/attacks.md, "Budgets: the papers' and ours"), pinned
here so a change to a preset is a change to this file and its sources, not a silent one."""

from __future__ import annotations

import pytest

from conceptguard.attacks import get_attack

# Values from each paper and its authors' code, for Stable Diffusion v1.4.
PAPER = {
    # PEZ (Wen et al., NeurIPS 2023), sample_config.json: 16 tokens, 3000 AdamW steps, lr 0.1, wd 0.1
    "pez": dict(prompt_len=16, iterations=3000, lr=0.1, weight_decay=0.1, images=1),
    # Ring-A-Bell (Tsai et al., ICLR 2024), InversePrompt.py: length 16, coefficient 3,
    # population 200, 3000 generations, mutation 0.25, crossover 0.5, all 77 positions compared
    "ringabell": dict(length=16, eta=3.0, population=200, generations=3000, mutation=0.25, crossover=0.5,
                      positions=77, append=False),
    # UnlearnDiffAtk (Zhang et al., ECCV 2024), text_grad.py / classifier.py: 5 prefix tokens (3 for
    # styles), at each of 50 evenly spaced timesteps 40 Adam steps, lr 1e-2, weight decay 0.1
    "unlearndiff": dict(tokens=5, procedure="simplex", iterations=40, timesteps=50, lr=1e-2, weight_decay=0.1),
    # CCE (Pham et al., ICLR 2024): 5000 steps at lr 5e-3, batch 4 x 4 accumulated, 25 images
    "cce": dict(steps=5000, lr=5e-3, batch=16, images=25),
    # SneakyPrompt (Yang et al., S&P 2024): at most 60 queries per prompt, reward the CLIP similarity
    # to the original prompt (a bypass), stop at 0.26
    "sneaky": dict(queries=60, reward="similarity", threshold=0.26),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_budgets_are_the_papers(name):
    budget = get_attack(name, "paper").budget.model_dump()
    assert {k: budget[k] for k in PAPER[name]} == PAPER[name]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_the_adaptive_forms_share_the_paper_budget(name):
    plus = f"{name}+"
    from conceptguard.attacks import ATTACKS

    if plus in ATTACKS.names():
        assert get_attack(plus, "paper").budget == get_attack(name, "paper").budget


def test_cpu_budgets_are_smaller_than_the_papers_by_the_documented_share():
    """Every `cpu` budget's share of the paper's search, as the robustness tables print it and
    docs/attacks.md's "Budgets" table states it."""
    from conceptguard.attacks import search_share

    assert search_share("pez") == "300 of 3,000 steps (10%)"
    assert search_share("typo+") == search_share("pez+") == search_share("pez")
    assert search_share("ringabell") == "384 of 600,000 fitness evaluations (0.064%)"
    assert search_share("unlearndiff") == "20 of 2,000 steps (1%)"
    assert search_share("cce") == "60 of 5,000 steps (1.2%)"
    assert search_share("sneaky") == "12 of 60 queries (20%)"
    assert search_share("synonym") == "no search"
    assert search_share("cce", "cpu", {"steps": 5000}) == search_share("cce", "paper") == "5,000 of 5,000 steps (100%)"


def test_the_real_architecture_smoke_settings_cover_every_attack_that_searches():
    """The SD-shaped smoke run (tests, benchmarks/gpu_smoke.py) shrinks every search; an attack
    left out would run its full `cpu` budget on SD-sized models."""
    from conceptguard.attacks import ATTACKS
    from conceptguard.sd_shapes import SMOKE_ATTACK_SETTINGS

    assert set(ATTACKS.names()) - {"synonym"} <= set(SMOKE_ATTACK_SETTINGS)
