"""Attacks on concept removal: each finds adversarial prompts for a concept against a target
stack and stores them as an `adversarial-<attack>` prompt set (docs/attacks.md).

| name | module | threat model |
|---|---|---|
| synonym | synonym.py | black box: synonyms and indirect descriptions |
| typo+ | typo.py | filter-aware: c_a written onto concept images, prompt recovered with PEZ |
| pez, pez+ | pez.py | white box on CLIP: hard prompt matching concept images |
| ringabell, ringabell+ | ringabell.py | text encoder only: concept vector + genetic token search |
| unlearndiff, unlearndiff+ | unlearndiff.py | white box on the defended model: prefix tokens |
| cce, cce+ | cce.py | white box: a learned token (textual inversion) |
| sneaky | sneaky.py | black box, query-limited token substitution search |

A "+" variant is adaptive: it also optimises through the target's embedding defenses and
pushes the image's CLIP embedding (for PEZ+ and Ring-A-Bell+, the prompt's CLIP text embedding)
toward c_a, against image filters such as Espresso. Each
class registers its names with `@ATTACKS.register(name, **kwargs)`; importing this package
imports every attack module.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import ValidationError

from conceptguard.attacks import cce, pez, ringabell, sneaky, synonym, typo, unlearndiff  # noqa: F401  (registration)
from conceptguard.attacks.base import ADVERSARIAL, ATTACKS, Attack, AttackResult, AttackTarget, Budget
from conceptguard.errors import ConfigError

BUDGETS = ("cpu", "paper")


def get_attack(name: str, budget: str = "cpu", settings: Mapping[str, Any] | None = None) -> Attack:
    """The attack called `name` with its `cpu` (mini world) or `paper` budget, any of whose
    values `settings` replaces (ConfigError for an unknown key or a value of the wrong type)."""
    cls, kwargs = ATTACKS.get(name)
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; one of {', '.join(BUDGETS)}")
    preset = cls.budget_type.cpu() if budget == "cpu" else cls.budget_type()
    if settings:
        try:
            preset = cls.budget_type.model_validate({**preset.model_dump(), **settings})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"{name} budget: {'.'.join(str(p) for p in err['loc'])}: {err['msg']} "
                              f"(its settings: {', '.join(cls.budget_type.model_fields)})") from None
    return cls(preset, **kwargs)


def search_share(name: str, budget: str = "cpu", settings: Mapping[str, Any] | None = None) -> str:
    """How much of the paper's search the attack's budget (with `settings` applied) runs, e.g.
    "300 of 3,000 steps (10%)"; "no search" for an attack that does not search."""
    ours = get_attack(name, budget, settings).budget.search_size()
    paper = get_attack(name, "paper").budget.search_size()
    if ours is None or paper is None:
        return "no search"
    return f"{ours[0]:,} of {paper[0]:,} {paper[1]} ({100 * ours[0] / paper[0]:.3g}%)"


__all__ = ["ADVERSARIAL", "ATTACKS", "BUDGETS", "Attack", "AttackResult", "AttackTarget", "Budget", "get_attack",
           "search_share"]
