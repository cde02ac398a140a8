"""Attacks on concept removal: each finds adversarial prompts for a concept against a target
stack and stores them as an `adversarial-<attack>` prompt set (attacks.md).

| name | module | threat model |
|---|---|---|
| synonym | synonym.py | black box: synonyms and indirect descriptions |
| typo+ | typo.py | filter-aware: c_a written onto concept images, prompt recovered with PEZ |
| pez | pez.py | white box on CLIP: hard prompt matching concept images |
| ringabell | ringabell.py | text encoder only: concept vector + genetic token search |
| unlearndiff, unlearndiff+ | unlearndiff.py | white box on the defended model: prefix tokens |
| cce, cce+ | cce.py | white box: a learned token (textual inversion) |
| sneaky | sneaky.py | black box, query-limited token substitution search |

A "+" variant is adaptive: it also optimises through the target's embedding defenses and
pushes the image's CLIP embedding toward c_a, against image filters such as Espresso.
"""

from __future__ import annotations

import importlib

from conceptguard.attacks.base import Attack, AttackResult, AttackTarget, Budget
from conceptguard.errors import ConfigError

# name -> (module, class name, keyword arguments)
_ATTACKS: dict[str, tuple[str, str, dict]] = {
    "synonym": ("synonym", "SynonymAttack", {}),
    "typo+": ("typo", "TypoAttack", {}),
    "pez": ("pez", "PezAttack", {}),
    "ringabell": ("ringabell", "RingABell", {}),
    "unlearndiff": ("unlearndiff", "UnlearnDiffAtk", {"adaptive": False}),
    "unlearndiff+": ("unlearndiff", "UnlearnDiffAtk", {"adaptive": True}),
    "cce": ("cce", "CCEAttack", {"adaptive": False}),
    "cce+": ("cce", "CCEAttack", {"adaptive": True}),
    "sneaky": ("sneaky", "SneakyPrompt", {}),
}
ATTACK_NAMES = tuple(_ATTACKS)


def get_attack(name: str, budget: str = "cpu") -> Attack:
    """The attack called `name` with its `cpu` (mini world) or `paper` budget."""
    if name not in _ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; one of {', '.join(_ATTACKS)}")
    if budget not in ("cpu", "paper"):
        raise ConfigError(f"unknown budget {budget!r}; cpu or paper")
    module, cls_name, kwargs = _ATTACKS[name]
    cls = getattr(importlib.import_module(f"conceptguard.attacks.{module}"), cls_name)
    preset = cls.budget_type.cpu() if budget == "cpu" else cls.budget_type()
    return cls(preset, **kwargs)


__all__ = ["ATTACK_NAMES", "Attack", "AttackResult", "AttackTarget", "Budget", "get_attack"]
