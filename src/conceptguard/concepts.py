"""Concepts a defense removes: the unacceptable phrases, the acceptable counterpart, the group.

A Concept is plain data. Which concepts exist depends on the domain (the mini world's five, or
the paper presets below for real models): `conceptguard.domains.get_concept` resolves a name.
"""

from __future__ import annotations

from typing import Iterable

from pydantic import BaseModel, Field

from conceptguard.errors import UnknownConceptError


class Concept(BaseModel):
    """One unacceptable concept and what to show instead.

    `unacceptable` is c_u followed by its synonyms; `indirect` holds descriptions that never
    name it. `train_phrasings` may be used to train defenses; `heldout_phrasings` appear only
    in evaluation prompt sets, to test how a defense generalises. `clip_texts` are the two
    texts a CLIP-based filter compares (default: c_u and c_a themselves).
    """

    name: str
    group: int = Field(ge=1, le=3, description="1 broad concept, 2 character, 3 artist style")
    unacceptable: list[str] = Field(min_length=1)
    acceptable: str
    indirect: list[str] = Field(default_factory=list)
    train_phrasings: list[str] = Field(default_factory=list)
    heldout_phrasings: list[str] = Field(default_factory=list)
    clip_texts: tuple[str, str] | None = None

    @property
    def c_u(self) -> str:
        return self.unacceptable[0]

    @property
    def c_a(self) -> str:
        return self.acceptable

    @property
    def filter_texts(self) -> tuple[str, str]:
        """(text for c_u, text for c_a) as a CLIP-based filter or judge compares them."""
        return self.clip_texts or (self.c_u, self.c_a)

    def info(self) -> dict:
        return self.model_dump(include={"name", "group", "unacceptable", "acceptable",
                                        "train_phrasings", "heldout_phrasings"})


def find_concept(name: str, concepts: Iterable[Concept]) -> Concept:
    """The concept called `name` (case-insensitive) among `concepts`, or UnknownConceptError."""
    concepts = list(concepts)
    for concept in concepts:
        if concept.name == name.strip().lower():
            return concept
    raise UnknownConceptError(f"unknown concept {name!r}; known concepts: {', '.join(c.name for c in concepts)}")


def _paper(name: str, group: int, unacceptable: list[str], acceptable: str) -> Concept:
    return Concept(name=name, group=group, unacceptable=unacceptable, acceptable=acceptable,
                   train_phrasings=unacceptable)


# The Espresso paper's eleven concepts (c_u and synonyms, c_a), for real models such as
# openai/clip-vit-large-patch14 with SD v1.4.
PAPER_CONCEPTS: tuple[Concept, ...] = (
    _paper("nudity", 1, ["nude", "naked", "nsfw", "topless"], "clean"),
    _paper("violence", 1, ["violent", "bloody", "gory", "brutal"], "peaceful"),
    _paper("grumpy cat", 2, ["grumpy cat"], "cat"),
    _paper("nemo", 2, ["nemo", "nemo the clownfish"], "fish"),
    _paper("captain marvel", 2, ["captain marvel", "carol danvers"], "female superhero"),
    _paper("snoopy", 2, ["snoopy", "snoopy the beagle"], "dog"),
    _paper("r2d2", 2, ["r2d2", "r2-d2"], "robot"),
    _paper("taylor swift", 2, ["taylor swift"], "woman"),
    _paper("angelina jolie", 2, ["angelina jolie"], "woman"),
    _paper("brad pitt", 2, ["brad pitt"], "man"),
    _paper("elon musk", 2, ["elon musk"], "man"),
)
