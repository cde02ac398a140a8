"""Concepts a defense removes: the unacceptable phrases, the acceptable counterpart, the group.

A Concept is plain data. The mini world's concepts (miniworld/world.py) are the default
registry; real-model presets live beside them under their own preset name.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from conceptguard.errors import UnknownConceptError


class Concept(BaseModel):
    """One unacceptable concept and what to show instead.

    `unacceptable` is c_u followed by its synonyms; `indirect` holds descriptions that never
    name it. `train_phrasings` may be used to train defenses; `heldout_phrasings` appear only
    in evaluation prompt sets, to test how a defense generalises.
    """

    name: str
    group: int = Field(ge=1, le=3, description="1 broad concept, 2 character, 3 artist style")
    unacceptable: list[str] = Field(min_length=1)
    acceptable: str
    indirect: list[str] = Field(default_factory=list)
    train_phrasings: list[str] = Field(default_factory=list)
    heldout_phrasings: list[str] = Field(default_factory=list)

    @property
    def c_u(self) -> str:
        return self.unacceptable[0]

    @property
    def c_a(self) -> str:
        return self.acceptable

    def info(self) -> dict:
        return self.model_dump(include={"name", "group", "unacceptable", "acceptable",
                                        "train_phrasings", "heldout_phrasings"})


def miniworld_concepts() -> list[Concept]:
    from conceptguard.miniworld.world import CONCEPTS

    return [c.concept() for c in CONCEPTS]


def get_concept(name: str) -> Concept:
    """Look a concept up by name (case-insensitive) in the mini world's registry."""
    for concept in miniworld_concepts():
        if concept.name == name.strip().lower():
            return concept
    known = ", ".join(c.name for c in miniworld_concepts())
    raise UnknownConceptError(f"unknown concept {name!r}; known concepts: {known}")
