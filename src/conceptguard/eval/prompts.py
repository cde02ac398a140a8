"""Prompt sets per concept: unacceptable, paraphrase, acceptable (mini world), or user files.

Every set has a stable id (a hash of its content), so results can name exactly what was run.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conceptguard.concepts import Concept
from conceptguard.errors import InvalidInputError
from conceptguard.learned_tokens import LearnedTokens

MINIWORLD_SETS = ("unacceptable", "paraphrase", "acceptable")


@dataclass(frozen=True)
class PromptItem:
    text: str
    expected: dict = field(default_factory=dict)  # labels the oracle should find (mini world)


@dataclass(frozen=True)
class PromptSet:
    name: str
    concept: str
    items: tuple[PromptItem, ...]
    tokens: LearnedTokens = field(default_factory=LearnedTokens)  # learned tokens the prompts use (CCE)

    @property
    def id(self) -> str:
        blob = json.dumps([self.name, self.concept, [(i.text, i.expected) for i in self.items],
                           self.tokens.fingerprint() if self.tokens else None], sort_keys=True)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"

    @property
    def prompts(self) -> list[str]:
        return [i.text for i in self.items]


def miniworld_set(concept: str, name: str, n: int = 16, seed: int = 0) -> PromptSet:
    """A deterministic prompt set for one mini-world concept.

    unacceptable: the concept's name and training-split synonyms (what a defender knows);
    paraphrase: held-out phrasings only, direct and indirect;
    acceptable: half the counterpart c_a, half unrelated scenes naming no concept.
    """
    from conceptguard.miniworld.world import concept_prompts, prompt, world_concept
    from conceptguard.miniworld.scene import BACKGROUNDS, COLORS, HELDOUT_COMBOS, SHAPES

    wc = world_concept(concept)
    if name == "unacceptable":
        pool = tuple(p for p in wc.phrasings if p.split == "train" and not p.indirect)
        items = _with_pool(wc, pool, n, seed)
    elif name == "paraphrase":
        items = [PromptItem(t, e) for t, e in concept_prompts(wc, "heldout", n, seed=seed)]
    elif name == "acceptable":
        half = n // 2
        items = [PromptItem(t, e) for t, e in concept_prompts(wc, "acceptable", half, seed=seed)]
        rng = np.random.default_rng(seed + 1)
        while len(items) < n:
            color, shape = str(rng.choice(COLORS)), str(rng.choice(SHAPES))
            if (color, shape) in HELDOUT_COMBOS:
                continue
            want = {"shape": shape, "color": color, wc.name: False}
            if rng.random() < 0.5:
                want["background"] = str(rng.choice(BACKGROUNDS))
            items.append(PromptItem(prompt(shape, color, background=want.get("background")), want))
    else:
        raise InvalidInputError(f"unknown prompt set {name!r}; one of {', '.join(MINIWORLD_SETS)} or a file")
    return PromptSet(name, wc.name, tuple(items))


def _with_pool(wc, pool, n: int, seed: int) -> list[PromptItem]:
    from conceptguard.miniworld.world import WorldConcept, concept_prompts

    restricted = WorldConcept(wc.name, wc.group, wc.mark, pool, wc.acceptable, wc.shape, wc.acceptable_words)
    return [PromptItem(t, e) for t, e in concept_prompts(restricted, "direct", n, seed=seed)]


def load_prompt_file(path: str | Path, concept: str, name: str | None = None) -> PromptSet:
    """Prompts from a .txt file (one per line), a .csv file (a `prompt` column, else the first),
    or a folder saved by `conceptguard attack` (its prompts and learned tokens)."""
    path = Path(path)
    if path.is_dir() and (path / "result.json").is_file():
        from conceptguard.attacks.base import AttackResult

        found = AttackResult.load(path).prompt_set()
        return PromptSet(name or found.name, concept, found.items, found.tokens)
    if not path.is_file():
        raise InvalidInputError(f"prompt file not found: {path}")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            raise InvalidInputError(f"empty prompt file: {path}")
        header = [h.strip().lower() for h in rows[0]]
        col = header.index("prompt") if "prompt" in header else 0
        texts = [r[col] for r in rows[1:] if len(r) > col]
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise InvalidInputError(f"no prompts in {path}")
    return PromptSet(name or path.stem, concept, tuple(PromptItem(t) for t in texts))


# ------------------------------------------------------------------ training twins

REAL_TEMPLATES = ("a photo of {}", "a painting of {}", "a close-up picture of {}", "{} in a city street",
                  "{} at the beach", "an illustration of {}", "a high-quality photo of {}", "{}, digital art")


def twin_prompts(concept: Concept, n: int, seed: int) -> list[tuple[str, str]]:
    """n (p_u, p_a) pairs: prompts with the concept (training phrasings only) and minimally edited
    twins that say c_a instead, with the same attributes."""
    from conceptguard.miniworld.world import CONCEPT_BY_NAME, concept_prompts

    wc = CONCEPT_BY_NAME.get(concept.name)
    if wc is not None:  # same seed -> same shapes, colours, backgrounds and prefixes
        with_c = concept_prompts(wc, "train", n, seed=seed)
        twins = concept_prompts(wc, "acceptable", n, seed=seed)
        return [(u, a) for (u, _), (a, _) in zip(with_c, twins)]
    rng = np.random.default_rng(seed)
    phrases = concept.train_phrasings or concept.unacceptable
    return [(t.format(phrases[i % len(phrases)]), t.format(concept.c_a))
            for i, t in enumerate(rng.choice(REAL_TEMPLATES, n))]
