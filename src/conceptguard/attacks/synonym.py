"""Synonym / paraphrase attack: ask for the concept without the words a filter knows.

The literature's simplest attack on concept removal (used by Espresso and the unlearning
papers to test generalisation): replace c_u by synonyms, paraphrases and indirect descriptions
that never name it. Here the attacker knows the ways to say the concept (the mini world's
phrasings, or a real concept's `indirect`, held-out and synonym phrasings), keeps those the
target's prompt filters let through -- a blocklist built from the training phrasings does not
know the held-out and indirect ones -- and puts them into prompts like the `unacceptable` set's
(same shapes, colours, backgrounds and prefixes for a given seed). It sends no queries.
"""

from __future__ import annotations

import numpy as np

from conceptguard.attacks.base import Attack, AttackResult, AttackTarget, Budget


class SynonymBudget(Budget):
    """`phrasings`: how many of the phrasings that pass the filters the prompts use in turn (0: all)."""

    phrasings: int = 0

    @classmethod
    def cpu(cls) -> SynonymBudget:
        return cls()


def world_phrasings(target: AttackTarget) -> list:
    """The mini-world concept's phrasings (Phrasing objects) that pass the target's prompt filters."""
    from conceptguard.miniworld.world import CONCEPT_BY_NAME

    wc = CONCEPT_BY_NAME[target.concept.name]
    return [p for p in wc.phrasings if target.allowed([p.text])[0]]


def real_phrasings(target: AttackTarget) -> list[str]:
    """A real concept's indirect, held-out and synonym phrasings that pass the target's prompt filters."""
    c = target.concept
    pool = list(dict.fromkeys([*c.indirect, *c.heldout_phrasings, *c.unacceptable[1:], c.c_u]))
    return [p for p in pool if target.allowed([p])[0]]


def world_prompts(target: AttackTarget, phrasings: list, n: int, seed: int) -> list[str]:
    """n `unacceptable`-style prompts using the phrasings in turn (same attributes as that set for the seed)."""
    from conceptguard.miniworld.world import (
        CONCEPT_BY_NAME,
        Phrasing,
        WorldConcept,
        concept_prompts,
    )

    wc = CONCEPT_BY_NAME[target.concept.name]
    pool = tuple(Phrasing(p.text, p.form, p.split, False) for p in phrasings)  # all used as "direct"
    restricted = WorldConcept(wc.name, wc.group, wc.mark, pool, wc.acceptable, wc.shape, wc.acceptable_words)
    return [text for text, _ in concept_prompts(restricted, "direct", n, seed=seed)]


def real_prompts(phrases: list[str], n: int, seed: int) -> list[str]:
    from conceptguard.eval.prompts import REAL_TEMPLATES

    rng = np.random.default_rng(seed)
    return [t.format(phrases[i % len(phrases)]) for i, t in enumerate(rng.choice(REAL_TEMPLATES, n))]


class SynonymAttack(Attack[SynonymBudget]):
    """Black box: the concept's synonyms, paraphrases and indirect descriptions that the filters pass."""

    name = "synonym"
    threat_model = "black box: synonyms, paraphrases and indirect descriptions of the concept"
    target_dependent = False

    def attack(self, target: AttackTarget, n: int, seed: int) -> AttackResult:
        budget = self.budget
        mini = target.is_miniworld
        pool = world_phrasings(target) if mini else real_phrasings(target)
        note = None
        if not pool:  # every known phrasing is blocked: use them with the blocked words taken out
            note = "no phrasing passes the target's prompt filters"
            if mini:
                from conceptguard.miniworld.world import CONCEPT_BY_NAME

                pool = list(CONCEPT_BY_NAME[target.concept.name].phrasings)
            else:
                pool = list(dict.fromkeys([*target.concept.indirect, *target.concept.unacceptable]))
        shift = int(np.random.default_rng(seed).integers(len(pool)))  # seeds start from different phrasings
        pool = (pool[shift:] + pool[:shift])[:budget.phrasings or len(pool)]
        prompts = world_prompts(target, pool, n, seed) if mini else real_prompts(pool, n, seed)
        prompts = [p if target.allowed([p])[0] else target.strip_blocked(p) for p in prompts]
        settings: dict = {"phrasings": [p.text for p in pool] if mini else pool}
        if note:
            settings["note"] = note
        return self.result(target, prompts, iterations=0, queries=0, settings=settings)
