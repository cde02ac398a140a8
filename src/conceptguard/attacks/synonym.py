"""Synonym / paraphrase attack: ask for the concept without the words a filter knows.

The literature's simplest attack on concept removal (used by Espresso and the unlearning
papers to test generalisation): replace c_u by synonyms, paraphrases and indirect descriptions
that never name it. Here the attacker knows the ways to say the concept (the mini world's
phrasings, or a real concept's `indirect`, held-out and synonym phrasings: `Domain.phrasings`), keeps those the
target's prompt filters let through -- a blocklist built from the training phrasings does not
know the held-out and indirect ones -- and puts them into prompts like the `unacceptable` set's
(same shapes, colours, backgrounds and prefixes for a given seed). It sends no queries.
"""

from __future__ import annotations

import numpy as np

from conceptguard.attacks.base import ATTACKS, Attack, AttackResult, AttackTarget, Budget


class SynonymBudget(Budget):
    """`phrasings`: how many of the phrasings that pass the filters the prompts use in turn (0: all)."""

    phrasings: int = 0

    @classmethod
    def cpu(cls) -> SynonymBudget:
        return cls()


@ATTACKS.register("synonym")
class SynonymAttack(Attack[SynonymBudget]):
    """Black box: the concept's synonyms, paraphrases and indirect descriptions that the filters pass."""

    name = "synonym"
    threat_model = "black box: synonyms, paraphrases and indirect descriptions of the concept"
    target_dependent = False

    def attack(self, target: AttackTarget, n: int, seed: int) -> AttackResult:
        domain, concept = target.domain, target.concept
        pool = [p for p in domain.phrasings(concept) if target.allowed([p])[0]]
        note = None
        if not pool:  # every known phrasing is blocked: use them with the blocked words taken out
            note = "no phrasing passes the target's prompt filters"
            pool = domain.phrasings(concept)
        shift = int(np.random.default_rng(seed).integers(len(pool)))  # seeds start from different phrasings
        pool = (pool[shift:] + pool[:shift])[:self.budget.phrasings or len(pool)]
        prompts = domain.phrasing_prompts(concept, pool, n, seed)
        prompts = [p if target.allowed([p])[0] else target.strip_blocked(p) for p in prompts]
        settings: dict = {"phrasings": pool}
        if note:
            settings["note"] = note
        return self.result(target, prompts, iterations=0, queries=0, settings=settings)
