"""Prompt sets: what a bench generates from. Every set has a stable id (a hash of its content),
so results can name exactly what was run. Which sets exist is the domain's business
(`Domain.prompt_set`); user files are read here."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from conceptguard.errors import InvalidInputError
from conceptguard.learned_tokens import LearnedTokens

# Which side of the split a generated prompt belongs to: text defenses and attacks train on, or
# text the bench evaluates on. A domain keeps the two disjoint (docs/evaluation.md).
Part = Literal["train", "eval"]


@dataclass(frozen=True)
class PromptItem:
    text: str
    expected: dict = field(default_factory=dict)  # labels the judge should find (mini world)


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


def read_prompt_file(path: str | Path, concept: str, name: str | None = None) -> PromptSet:
    """Prompts from a .txt file (one per line) or a .csv file (its `prompt` column; without one,
    the first column of every row). UTF-8, a byte-order mark allowed; blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
        texts = _csv_prompts(text) if path.suffix.lower() == ".csv" else text.splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"prompt file {path} is not UTF-8 text (byte {exc.start})") from exc
    except csv.Error as exc:
        raise InvalidInputError(f"prompt file {path} is not a readable CSV: {exc}") from exc
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise InvalidInputError(f"no prompts in {path}")
    return PromptSet(name or path.stem, concept, tuple(PromptItem(t) for t in texts))


def _csv_prompts(text: str) -> list[str]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "prompt" in header:
        col = header.index("prompt")
        return [r[col] for r in rows[1:] if len(r) > col]
    return [r[0] for r in rows if r]
