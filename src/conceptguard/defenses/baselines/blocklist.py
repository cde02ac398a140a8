"""Keyword blocklist: the simplest prompt filter, and the easiest to get around."""

from __future__ import annotations

import re

from conceptguard.concepts import Concept
from conceptguard.defenses.base import Decision, PromptFilter
from conceptguard.defenses.registry import DEFENSES, BuildContext


@DEFENSES.register("blocklist")
class KeywordBlocklist(PromptFilter):
    """Blocks a prompt that contains any listed word or phrase (whole words, case-insensitive)."""

    name = "blocklist"

    def __init__(self, phrases: list[str]) -> None:
        if not phrases:
            raise ValueError("a blocklist needs at least one phrase")
        self.phrases = sorted({p.lower().strip() for p in phrases if p.strip()})
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(p) for p in self.phrases) + r")\b", re.IGNORECASE)

    @classmethod
    def for_concepts(cls, concepts: list[Concept], train_only: bool = True) -> "KeywordBlocklist":
        """The concepts' names and direct phrasings (train split by default, as a defender knows)."""
        phrases: list[str] = []
        for c in concepts:
            phrases += [c.name, c.c_u] + [p for p in c.unacceptable
                                          if not train_only or p in c.train_phrasings]
        return cls(phrases)

    @classmethod
    def build(cls, concept: Concept, ctx: BuildContext) -> KeywordBlocklist:
        return cls.for_concepts([concept])

    def check(self, prompts: list[str]) -> list[Decision]:
        out = []
        for prompt in prompts:
            hit = self._pattern.search(prompt)
            out.append(self.decision(blocked=bool(hit), reason=f"blocked word {hit.group(0)!r}" if hit else None,
                                     matched=float(bool(hit))))
        return out
